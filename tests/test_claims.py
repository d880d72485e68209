"""The evidence rule: a trace claims only the catalogue steps its assertions show, and
`mailflow check --claims` lists every claim that is not backed, with file, line and what is missing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from harness.cli import app
from harness.corpus import catalogue, claims, trace
from harness.yamlsource import SourceError
from reference_mta import tracking
from tests.sourcetext import line_with, replace_once, write

ROOT = Path(__file__).resolve().parents[1]

# An Internet host delivers to Alice's mailbox on EX1; the trace claims the categorizer's GC look-up.
IN5_DELIVERY_ONLY = """\
id: x/claims
title: A message for a local mailbox
spec: [IN-3, IN-5]
lab: contoso
sessions:
  - client: internet
    connect: {server: EX1}
    script:
      - expect: 220
      - send: EHLO mail-out.fabrikam.com
      - expect: 250
      - send: MAIL FROM:<ann@fabrikam.com>
      - expect: 250
      - send: RCPT TO:<alice@contoso.com>
      - expect: 250
      - data: {inline: "Subject: hi\\n\\nhello\\n"}
      - expect: 250
      - send: QUIT
      - expect: 221
outcome:
  delivered:
    - {mailbox: alice@contoso.com}
"""

LDAP = """\
  ldap:
    - {filter_regex: "alice@contoso\\\\.com"}
"""


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    # One unbacked claim per line, however long, as a file:line report is read and grepped.
    monkeypatch.setattr(app, "console", Console(width=10_000))


def check_claims(*paths: Path | str) -> tuple[int, str]:
    result = CliRunner().invoke(app.main, ["check", "--claims", *map(str, paths)])
    return result.exit_code, result.output


def test_a_delivery_alone_does_not_show_the_gc_lookup(tmp_path: Path) -> None:
    path = write(tmp_path / "t.yaml", IN5_DELIVERY_ONLY)
    found = {claim.id: claim for claim in claims.claims(trace.load(path))}
    assert found["IN-3"].shown
    in5 = found["IN-5"]
    assert not in5.shown and not in5.boundary
    assert in5.line == line_with(IN5_DELIVERY_ONLY, "spec:")
    assert "IN-5 needs an LDAP query (outcome.ldap)" in in5.missing
    assert "this trace asserts only outcome.delivered, reply codes 220/221/250" in in5.missing

    code, output = check_claims(path)
    assert code == 1, output
    assert f"unbacked {path}:{in5.line}: IN-5 needs an LDAP query (outcome.ldap)" in output
    assert "total: 2 claims, 1 shown, 1 unbacked" in output


def test_an_ldap_assertion_backs_the_claim(tmp_path: Path) -> None:
    path = write(tmp_path / "t.yaml", IN5_DELIVERY_ONLY + LDAP)
    assert all(claim.shown for claim in claims.claims(trace.load(path)))
    code, output = check_claims(path)
    assert code == 0, output
    assert not re.search(r"^unbacked ", output, re.M)
    assert "total: 2 claims, 2 shown, 0 unbacked" in output


RELAY_REFUSED = """\
id: x/relay
title: Relaying is refused
spec: [RELAY-1]
lab: contoso
sessions:
  - client: internet
    connect: {server: EX1}
    script:
      - expect: 220
      - send: EHLO mail-out.fabrikam.com
      - expect: 250
      - send: MAIL FROM:<ann@fabrikam.com>
      - expect: 250
      - send: RCPT TO:<x@tailspin.example>
      - expect: 550
      - send: QUIT
      - expect: 221
outcome:
  nothing_delivered: true
"""


def test_a_reply_counts_only_for_the_command_it_answers(tmp_path: Path) -> None:
    """RELAY-1 is a 5xx at RCPT and nothing delivered: a 550 to MAIL does not show it."""
    at_rcpt = write(tmp_path / "rcpt.yaml", RELAY_REFUSED)
    assert [claim.shown for claim in claims.claims(trace.load(at_rcpt))] == [True]
    at_mail = RELAY_REFUSED.replace(
        "      - expect: 250\n      - send: RCPT", "      - expect: 550\n      - send: RCPT"
    )
    at_mail = replace_once(
        at_mail, "      - expect: 550\n      - send: QUIT", "      - expect: 250\n      - send: QUIT"
    )
    (claim,) = claims.claims(trace.load(write(tmp_path / "mail.yaml", at_mail)))
    assert "RELAY-1 needs 5xx to RCPT (a script expect step)" in claim.missing


def test_a_boundary_claim_needs_its_negative_evidence(tmp_path: Path) -> None:
    bounded = replace_once(IN5_DELIVERY_ONLY, "spec: [IN-3, IN-5]", "spec: [IN-3, IN-5]\nboundary: [IN-5]")
    # The positive evidence (a look-up that finds Alice) does not show that the look-up does NOT happen.
    path = write(tmp_path / "t.yaml", bounded + LDAP)
    found = {claim.id: claim for claim in claims.claims(trace.load(path))}
    in5 = found["IN-5"]
    assert in5.boundary and not in5.shown
    assert in5.line == line_with(bounded, "boundary:")
    assert "boundary IN-5 needs an LDAP query that is not made or finds nothing" in in5.missing
    code, output = check_claims(path)
    assert code == 1 and f"{path}:{in5.line}: boundary IN-5 needs" in output

    absent = bounded + "  ldap:\n    - {filter_regex: 'alice@contoso', absent: true}\n"
    path = write(tmp_path / "absent.yaml", absent)
    assert all(claim.shown for claim in claims.claims(trace.load(path)))


def test_a_malformed_evidence_declaration_names_file_line_and_choices(tmp_path: Path) -> None:
    text = catalogue.CATALOGUE.read_text(encoding="utf-8")
    broken_line = "      white_box: [{ldap: query}, {any_of: [{delivered: mailbox}, {hops: 2}]}]"
    broken = replace_once(text, broken_line, broken_line.replace("{ldap: query}", "{ldap: everything}"))
    path = write(tmp_path / "catalogue.yaml", broken)
    with pytest.raises(SourceError) as raised:
        catalogue.load(path)
    message = str(raised.value)
    assert message.startswith(
        f"{path}:{line_with(broken, 'ldap: everything')}: ids.IN-5.shown_by.white_box[0].ldap"
    )
    assert "'query'" in message and "'absent'" in message

    unknown = replace_once(text, broken_line, broken_line.replace("{ldap: query}", "{tracked: 1019}"))
    path = write(tmp_path / "unknown.yaml", unknown)
    expected = r"unknown field 'tracked' \(expected one of: any_of, connection, delivered"
    with pytest.raises(SourceError, match=expected):
        catalogue.load(path)


def test_every_catalogue_id_declares_a_white_box_form() -> None:
    entries = catalogue.load(catalogue.CATALOGUE)
    assert entries.keys() == catalogue.catalogue().keys()
    assert all(entry.shown_by.white_box and entry.shown_by.boundary for entry in entries.values())


def test_plain_check_keeps_its_behaviour(tmp_path: Path) -> None:
    path = write(tmp_path / "t.yaml", IN5_DELIVERY_ONLY)
    result = CliRunner().invoke(app.main, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output == f"ok {path}\n"


def test_an_invalid_file_wins_over_unbacked_claims(tmp_path: Path) -> None:
    write(tmp_path / "t.yaml", IN5_DELIVERY_ONLY)
    write(tmp_path / "broken.yaml", IN5_DELIVERY_ONLY.replace("spec: [IN-3, IN-5]", "spec: [IN-99]"))
    code, output = check_claims(tmp_path / "t.yaml", tmp_path / "broken.yaml")
    assert code == 2, output
    assert "unknown catalogue ID 'IN-99'" in output and "IN-5 needs an LDAP query" in output


def test_every_trace_of_the_corpus_shows_what_it_claims() -> None:
    """The corpus's gate: a claim without its evidence fails CI, naming the file, line and what is missing."""
    code, output = check_claims(ROOT / "traces")
    assert code == 0, "\n".join(line for line in output.splitlines() if line.startswith("unbacked"))
    totals = re.search(r"^total: (\d+) claims, (\d+) shown, (\d+) unbacked$", output, re.M)
    assert totals, output[-2000:]
    total, shown, unbacked = map(int, totals.groups())
    assert total == shown + unbacked and total > 0
    assert len(re.findall(r"^unbacked \S+\.yaml:\d+: ", output, re.M)) == unbacked
    assert (code == 1) == (unbacked > 0)
    flows = re.findall(r"^(?!total)(\w+): (\d+) claims, (\d+) shown, (\d+) unbacked$", output, re.M)
    assert {flow for flow, *_ in flows} >= {"Core", "Inbound", "Outbound", "Relay", "Protocol"}
    assert sum(int(count) for _, count, _, _ in flows) == total


def test_every_event_the_catalogue_names_is_one_the_reference_mta_logs() -> None:
    def events(requirement: Mapping[str, Any]) -> list[int]:
        ((kind, value),) = requirement.items()
        if kind == "any_of":
            return [event for choice in value for event in events(choice)]
        return [int(event) for event in catalogue.listed(value["id"])] if kind == "event" else []

    for entry in catalogue.catalogue().values():
        shown = entry.shown_by
        for requirement in (*shown.white_box, *shown.black_box, *shown.boundary):
            unknown = set(events(requirement)) - set(tracking.CATALOGUE)
            assert not unknown, (
                f"{entry.id}: tracking events {sorted(unknown)} are not in reference_mta/tracking.py"
            )
