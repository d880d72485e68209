"""Each commit point of the reference MTA, crashed at for real: a lab started by `mailflow lab up` with
`MAILFLOW_CRASH_AT` naming the point gets one message over SMTP whose recipients reach it, exits there
(with the crash code, so the point was reached), is started again without the variable, and once its
queues are empty every recipient has the message exactly once, and no temporary or orphaned file is left.
The one window an MTA cannot close, the next hop's 250 lost in a crash, shows as exactly one duplicate.
"""

from __future__ import annotations

import json
import os
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
from labprocess import LabProcess, environment, lab_processes, queues, start, until

from reference_mta import crash_points

WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
# This module's own address block, apart from the other modules' labs (MAILFLOW_LAB_BASE moves it).
_FIRST = int(os.environ.get("MAILFLOW_LAB_BASE", "127.170.0.0").split(".")[1])
_NETWORK = f"127.{(_FIRST + WORKER) % 250}.34"
BASE = f"{_NETWORK}.0"
OFFSET = 32000 + 100 * (WORKER % 10)
EX1 = f"{_NETWORK}.11"
RELAY_HOST = f"{_NETWORK}.202"  # the client EX1 relays for: it may send to the Internet

ALICE = "alice@contoso.com"  # a mailbox on EX1
CAROL = "carol@contoso.com"  # a mailbox on EX3, in another routing group
INTERNET = "pat@fabrikam.com"  # an Internet host's
NORA = "nora.lee@contoso.com"  # a Lotus Notes user, behind the gateway on EX4
NORA_MAIL_FILE = "Nora Lee/Contoso"
UNKNOWN = "nobody@contoso.com"  # nobody's address: an NDR for Alice
# The sender, when it is not the one counted: a restart may be long enough for a delay notice to Erin.
ERIN = "erin@contoso.com"


@dataclass(frozen=True)
class Window:
    """A message that reaches the crash point, and how many times each address then has it (mailboxes,
    Internet hosts, Notes mail files; Erin's not counted)."""

    sender: str
    recipients: tuple[str, ...]
    expected: dict[str, int] = field(default_factory=dict)


EVERYWHERE = Window(ERIN, (ALICE, CAROL, INTERNET), {ALICE: 1, CAROL: 1, INTERNET: 1})
# No mailbox on EX1: its delivery, going on beside the routing, would open the store's window too.
ONWARD = Window(ERIN, (CAROL, INTERNET), {CAROL: 1, INTERNET: 1})
TO_NOTES = Window(ERIN, (NORA,), {NORA_MAIL_FILE: 1})
WINDOWS: dict[str, Window] = {
    crash_points.CATEGORIZED: EVERYWHERE,
    crash_points.ROUTED: ONWARD,
    # Alice's only mail is the NDR about the unknown address.
    crash_points.NDR_SUBMITTED: Window(ALICE, (UNKNOWN,), {ALICE: 1}),
    # The window left open: the Internet host has it twice.
    crash_points.NEXT_HOP_ACCEPTED: Window(ERIN, (INTERNET,), {INTERNET: 2}),
    crash_points.STORE_DELIVERED: Window(ERIN, (ALICE,), {ALICE: 1}),
    crash_points.STORE_FILE_WRITTEN: Window(ERIN, (ALICE,), {ALICE: 1}),
    crash_points.MTA_CONTENT_MOVED: TO_NOTES,
    crash_points.GATEWAY_MEMOS_WRITTEN: TO_NOTES,
}


def test_every_crash_point_has_a_window() -> None:
    assert set(WINDOWS) == set(crash_points.POINTS)


@pytest.fixture
def started() -> Iterator[list[LabProcess]]:
    with lab_processes() as labs:
        yield labs


def send(window: Window) -> None:
    message = EmailMessage()
    message["From"] = window.sender
    message["To"] = ", ".join(window.recipients)
    message["Subject"] = "through a crash"
    message.set_content("once, and only once\n")
    with smtplib.SMTP(EX1, 25 + OFFSET, source_address=(RELAY_HOST, 0), timeout=30) as smtp:
        refused = smtp.send_message(message, window.sender, list(window.recipients))
    assert refused == {}


def queued(workdir: Path) -> int:
    """Messages in any queue of any server (AQ's, the MTA's, the gateway's folders)."""
    result = queues(workdir)
    assert result.exit_code == 0, result.output
    return sum(int(row["count"]) for row in json.loads(result.output))


def received(workdir: Path) -> dict[str, int]:
    """How many copies each recipient has: mailboxes, Internet hosts, Notes mail files."""
    found: dict[str, int] = {}

    def count(name: str) -> None:
        found[name] = found.get(name, 0) + 1

    # The copies a mail client would see (a Maildir's new/), not the store's index of them.
    for copy in workdir.glob("*/mdbdata/*/*/new/*"):
        count(copy.parent.parent.name)
    for envelope in (workdir / "sinks").glob("*/*.json"):
        for recipient in json.loads(envelope.read_text())["rcpt_to"]:
            count(recipient)
    for memo in (workdir / "foreign").glob("*/*/*.memo"):
        count(memo.parent.name.replace("%2F", "/"))
    return found


def leftovers(workdir: Path) -> list[str]:
    """Temporary files, step records and content files no envelope refers to, in every queue folder."""
    left = [str(p) for p in workdir.glob("*/Mailroot/*/Queue/*") if p.suffix in (".tmp", ".step")]
    left += [str(p) for p in workdir.glob("**/.*.tmp")]
    for folder in workdir.glob("*/Mailroot/*/Queue"):
        referred = {
            json.loads(envelope.read_bytes())["msg"]["properties"]["CONTENT_ID"]
            for envelope in folder.glob("*.json")
        }
        left += [str(p) for p in folder.glob("*.eml") if p.stem not in referred]
    return left


@pytest.mark.parametrize("point", crash_points.POINTS)
def test_a_crash_at_the_point_then_a_restart_delivers_to_each_recipient_as_documented(
    point: str, tmp_path: Path, started: list[LabProcess]
) -> None:
    window = WINDOWS[point]
    workdir = tmp_path / "lab"
    env = environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET))
    crashing = start(started, workdir, env | {crash_points.VARIABLE: point})
    send(window)
    until(lambda: crashing.process.poll() is not None, f"the lab reaches {point}")
    returncode, output = crashing.stop()
    assert returncode == crash_points.EXIT_CODE, output

    start(started, workdir, env)
    until(lambda: queued(workdir) == 0, "every queue is empty")
    counted = {name: n for name, n in received(workdir).items() if name != ERIN}
    assert counted == window.expected
    assert leftovers(workdir) == []


def test_a_crash_point_the_reference_mta_does_not_have_is_named_with_the_ones_it_has(
    tmp_path: Path, started: list[LabProcess]
) -> None:
    env = environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET))
    lab = LabProcess(tmp_path / "lab", env | {crash_points.VARIABLE: "aq.nowhere"})
    started.append(lab)
    until(lambda: lab.process.poll() is not None, "lab up refuses the setting")
    returncode, output = lab.stop()
    assert returncode != 0
    assert "no crash point 'aq.nowhere'" in output
    assert crash_points.CATEGORIZED in output
