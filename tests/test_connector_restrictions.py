"""Connector restrictions: the priority Exchange reads from the headers, the lab file's settings (and
its errors, with file and line), and, over a real lab, that a forged mark of an anonymous origin is
removed from a client's message and believed only from a server of the organization."""

from __future__ import annotations

import os
import subprocess
import sys
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

from harness.lab import config as lab_config
from harness.lab.gc import MockGlobalCatalog
from harness.lab.recipients import RecipientTable
from harness.targets.plan import plan
from harness.yamlsource import SourceError
from reference_mta.connector_restrictions import priority_of, take_anonymous_origin
from tests.sourcetext import line_with, replace_once, write

ROOT = Path(__file__).resolve().parents[1]
CONTOSO = ROOT / "fixtures" / "labs" / "contoso.yaml"
LDIF = ROOT / "fixtures" / "directory" / "contoso.ldif"
MAILFLOW = Path(sys.executable).parent / "mailflow"


@pytest.mark.parametrize(
    ("headers", "priority"),
    [
        ("Importance: High", "high"),
        ("Importance: low", "low"),
        ("X-Priority: 1 (Highest)", "high"),
        ("X-Priority: 2", "high"),
        ("X-Priority: 3", "normal"),
        ("X-Priority: 5 (Lowest)", "low"),
        ("Priority: urgent", "high"),
        ("Priority: non-urgent", "low"),
        # Importance wins over X-Priority, which wins over Priority.
        ("Importance: low\r\nX-Priority: 1", "low"),
        ("X-Priority: 4\r\nPriority: urgent", "low"),
        ("Importance: whenever", "normal"),
        ("Subject: no priority at all", "normal"),
    ],
)
def test_the_priority_is_read_as_exchange_maps_the_headers(headers: str, priority: str) -> None:
    parsed = BytesHeaderParser().parsebytes(f"{headers}\r\n\r\nbody\r\n".encode())
    assert priority_of(parsed) == priority


def test_the_origin_mark_is_taken_from_the_header_block_only() -> None:
    raw = b"Subject: s\r\nX-Mailflow-Origin: anonymous\r\n\r\nX-Mailflow-Origin: anonymous\r\n"
    content, marked = take_anonymous_origin(raw)
    assert marked
    assert content == b"Subject: s\r\n\r\nX-Mailflow-Origin: anonymous\r\n"
    assert take_anonymous_origin(content) == (content, False)


def _lab_text() -> str:
    return CONTOSO.read_text(encoding="utf-8").replace("../directory/contoso.ldif", str(LDIF))


def test_the_lab_file_sets_resolve_anonymous_and_content_restrictions() -> None:
    organization = lab_config.load(CONTOSO).organization
    resolving = next(
        vs for vs in organization.server("EX1").virtual_servers if vs.name == "Resolving SMTP Virtual Server"
    )
    assert resolving.resolve_anonymous
    assert not organization.server("EX1").default_virtual_server.resolve_anonymous
    urgent = next(c for c in organization.connectors if c.name == "Woodgrove Urgent SMTP Connector")
    assert urgent.restrictions.priorities == ("high",)
    assert urgent.restrictions.message_types == ("non_system",)
    liaison = next(c for c in organization.connectors if c.name == "Woodgrove Liaison SMTP Connector")
    assert liaison.restrictions.priorities == ("high", "normal", "low")


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("priorities: [high]", "priorities: [urgent]", "priorities[0]"),
        ("message_types: [non_system]", "message_types: [reports]", "message_types[0]"),
        ("resolve_anonymous: true", "resolve_anonymous: sometimes", "resolve_anonymous"),
    ],
)
def test_a_wrong_restriction_value_names_the_file_and_line(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    text = replace_once(_lab_text(), old, new)
    path = write(tmp_path / "labs" / "contoso.yaml", text)
    with pytest.raises(SourceError) as info:
        lab_config.load(path)
    assert info.value.path == str(path)
    assert info.value.line == line_with(text, new.split(": ", 1)[1])
    assert info.value.field.endswith(field), info.value


FORGED = """\
id: tests/forged-origin-mark
title: a client's forged mark of an anonymous origin is removed and ignored
spec: [OUT-6]
lab: contoso
requires: [tracking]
sessions:
  - client: lan
    connect: {server: EX1}
    script:
      - expect: 220
      - send: EHLO wks01.contoso.com
      - expect: 250
      - auth: {mechanism: PLAIN, user: alice, password: Alice-P@ss1}
      - expect: 235
      - send: MAIL FROM:<alice@contoso.com>
      - expect: 250
      - send: RCPT TO:<forged@adatum.com>
      - expect: 250
      - data: {inline: "X-Mailflow-Origin: anonymous\\nSubject: forged mark\\n\\nfrom Alice\\n"}
      - expect: 250
      - send: QUIT
      - expect: 221
outcome:
  delivered:
    - {sink: isp-smarthost, peer: EX4, sender: alice@contoso.com, rcpt: forged@adatum.com}
  nothing_else_delivered: true
"""


def test_a_forged_origin_mark_from_a_client_is_removed_and_does_not_reach_the_next_server(
    tmp_path: Path,
) -> None:
    """Alice, authenticated, sends a message that carries the mark itself: EX1 removes it (a client's
    word is not the organization's) and routes her message over the connector restricted to her, through
    EX2 and EX4; had the mark survived to EX2 as the organization's word, EX2 would not have resolved
    her and would have sent the message back to the Internet connector on EX1."""
    trace = write(tmp_path / "traces" / "forged.yaml", FORGED)
    reports = tmp_path / "reports"
    run = subprocess.run(
        [str(MAILFLOW), "run", "--reports", str(reports), str(trace)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_a_real_mta_s_plan_routes_the_members_of_a_listed_group_by_their_addresses() -> None:
    """Postfix and the others route by the MAIL FROM text: the plan lists, for the connector restricted
    to the Woodgrove Liaisons group, its members (Bob directly, Dave through Sales Managers), not the
    group's own address, and not Alice."""
    config = lab_config.load(CONTOSO)
    catalog = MockGlobalCatalog(config.global_catalog)
    catalog.load()
    table = RecipientTable.from_directory(catalog.connect("test"), config.global_catalog.base_dn)
    routes = {route.domain: names for route, names in plan(config, "EX1", table).sender_routes}
    assert routes["woodgrove.com"] == ("bob@contoso.com", "dave@contoso.com")
    assert routes["adatum.com"] == ("alice@contoso.com",)
