"""The route action of a remote domain and the queues that hold mail for later, from outside, as an
administrator and a partner's host see them: `mailflow queues` on a running lab, a real ETRN session
on a socket, the lab file's errors. The traces outbound/route-action-*, outbound/etrn-* and
outbound/deferred-delivery-* show the same behaviour replayed."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli.app import main
from harness.judge.evidence import Evidence
from harness.lab import config as lab_config
from harness.lab.runtime import Lab

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "fixtures" / "labs" / "contoso.yaml"
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
BASE = f"127.{160 + WORKER % 10}.4.0"
PROSEWARE = "Proseware SMTP Connector"
DEFERRED = "Messages queued for deferred delivery"
MESSAGE = b"Subject: for later\r\n\r\nhello\r\n"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(lab_config.load(LAB, base=BASE, port_offset=27600), tmp_path, control=True) as running:
        yield running


def queue_rows(lab: Lab, server: str) -> dict[str, dict[str, object]]:
    result = CliRunner().invoke(
        main, ["queues", "--lab-dir", str(lab.workdir), "--server", server, "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return {str(row["queue"]): row for row in json.loads(result.output)}


def sinks_reached(lab: Lab) -> list[str]:
    return [d.where for d in Evidence.collect(lab).deliveries]


def converse(lab: Lab, client: str, server: str, *commands: bytes) -> list[bytes]:
    """One reply per command (each reply is one write: one read holds it), the greeting first."""
    vs = lab.config.organization.server(server).default_virtual_server
    source = lab.config.host(client).address
    with socket.create_connection((vs.address, vs.port), timeout=5, source_address=(source, 0)) as sock:
        answers = [sock.recv(65536)]
        for command in commands:
            sock.sendall(command + b"\r\n")
            answers.append(sock.recv(65536))
    return answers


def test_etrn_releases_the_remote_queue_that_mailflow_queues_shows(lab: Lab) -> None:
    lab.submit("EX4", "dave@contoso.com", ["orders@proseware.net"], MESSAGE)
    assert lab.settle(timeout=10)
    row = queue_rows(lab, "EX4")[PROSEWARE]
    assert (row["state"], row["count"]) == ("Remote", 1)
    assert sinks_reached(lab) == []  # no session to Proseware before ETRN

    greeting, ehlo, etrn, again, _ = converse(
        lab,
        "proseware-gw",
        "EX4",
        b"EHLO gw.proseware.net",
        b"ETRN proseware.net",
        b"ETRN proseware.net",
        b"QUIT",
    )
    assert greeting.startswith(b"220 ")
    assert b"250-ETRN\r\n" in ehlo, ehlo
    assert etrn == b"250 2.0.0 Queuing for node proseware.net started\r\n"
    assert again.startswith(b"251 2.0.0 "), again
    assert lab.settle(timeout=10)
    assert sinks_reached(lab) == ["proseware-mx"]
    assert PROSEWARE not in queue_rows(lab, "EX4")


def test_etrn_where_no_remote_queue_is_kept(lab: Lab) -> None:
    _, ehlo, wrong, queue_name, bare, help_text, _ = converse(
        lab,
        "proseware-gw",
        "EX1",
        b"EHLO gw.proseware.net",
        b"ETRN proseware.net",
        b"ETRN #x",
        b"ETRN",
        b"HELP",
        b"QUIT",
    )
    # EX1 keeps no remote-triggered queue: ETRN is neither offered nor known there.
    assert b"ETRN" not in ehlo and b"ETRN" not in help_text
    assert [wrong[:3], queue_name[:3], bare[:3]] == [b"500"] * 3
    _, _, unknown, help_text, _ = converse(
        lab, "proseware-gw", "EX4", b"EHLO gw.proseware.net", b"ETRN fabrikam.com", b"HELP", b"QUIT"
    )
    assert unknown.startswith(b"459 4.7.1 "), unknown
    assert b"ETRN" in help_text


def test_a_deferred_submission_waits_in_its_queue_until_its_time(lab: Lab) -> None:
    began = time.monotonic()
    lab.submit("EX1", "alice@contoso.com", ["ann@fabrikam.com"], MESSAGE, defer=2.0)
    assert lab.settle(timeout=10, wait_for_retries=False)
    row = queue_rows(lab, "EX1")[DEFERRED]
    assert row["count"] == 1
    assert sinks_reached(lab) == []
    assert lab.settle(timeout=10)  # waits for the deferral, which falls due within the time-out
    assert sinks_reached(lab) == ["fabrikam-mx"]
    assert time.monotonic() - began >= 2.0
    assert DEFERRED not in queue_rows(lab, "EX1")


NAMED = "address_spaces: [{type: SMTP, pattern: proseware.net, cost: 1}]"


@pytest.mark.parametrize(
    ("spaces", "field", "says"),
    [
        # A wildcard names no domain an ETRN could ask for; neither does a connector joining groups only.
        (
            'address_spaces: [{type: SMTP, pattern: "*.net", cost: 1}]',
            "delivery.remote_triggered",
            "needs an SMTP",
        ),
        (
            'address_spaces: [{type: SMTP, pattern: "proseware.ne%", cost: 1}]',
            "delivery.remote_triggered",
            "no * or %",
        ),
        ("connects_to: London", "delivery.remote_triggered", "needs an SMTP address space"),
        # Delivery Options offers a schedule or remote triggered delivery, not both.
        (NAMED + "\n      schedule: never", "schedule", "not on a schedule"),
    ],
)
def test_remote_triggered_delivery_needs_a_domain_to_ask_for(
    tmp_path: Path, spaces: str, field: str, says: str
) -> None:
    text = LAB.read_text(encoding="utf-8").replace("../directory/", f"{LAB.parent.parent}/directory/")
    assert NAMED in text
    bad = tmp_path / "contoso.yaml"
    bad.write_text(text.replace(NAMED, spaces))
    result = CliRunner().invoke(main, ["check", str(bad)])
    assert result.exit_code == 2, result.output
    assert f"{bad}:" in result.output, result.output
    assert f"{field}: " in result.output and says in result.output, result.output
    assert "Traceback" not in result.output
