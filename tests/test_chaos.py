"""`mailflow chaos`: the books it keeps (checked on folders written by the store driver itself, without a
lab), its mistakes in the user's terms, a short crash test of the lab under load, and a Ctrl-C that leaves
no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from labprocess import environment

from harness.cli.app import main
from harness.exit_codes import ExitCode, stopped_by
from harness.lab import config as lab_config
from harness.run.chaos_accounting import Sent, deliveries, leftovers, queued_messages, store_repeats, tally
from harness.run.chaos_recipients import recipients
from reference_mta.mailmsg import MailMsg
from reference_mta.store import MailboxStore

WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
# This module's own address block, apart from the other modules' labs (MAILFLOW_LAB_BASE moves it).
_FIRST = int(os.environ.get("MAILFLOW_LAB_BASE", "127.170.0.0").split(".")[1])
BASE = f"127.{(_FIRST + WORKER) % 250}.34.0"
OFFSET = 32100 + 100 * (WORKER % 10)
EX1_STORE = "Mailbox Store (EX1)"
HOME = f"CN={EX1_STORE},CN=First Storage Group,CN=InformationStore,CN=EX1,CN=Servers"


def deliver(root: Path, msgid: str, *recipients: str, keeps_every_copy: bool = False) -> None:
    """Delivered as the reference MTA's store driver delivers, into EX1's mailbox store (one that keeps
    every copy, as a store with duplicate detection off, or another MTA's, would)."""
    msg = MailMsg.new("sender@contoso.com", list(recipients), RFC822_MSG_ID=f"<{msgid}>")
    for recipient in msg.recipients:
        recipient.home_mdb = HOME
    detection = "none" if keeps_every_copy else "message_id"
    MailboxStore(root, "EX1", detection).deliver(msg, b"Subject: x\r\n\r\nx\r\n", (EX1_STORE,))


def test_a_delivery_seen_twice_is_duplicated_and_one_never_seen_is_lost(tmp_path: Path) -> None:
    deliver(tmp_path, "one@x", "alice@contoso.com", "erin@contoso.com")
    deliver(tmp_path, "one@x", "alice@contoso.com", keeps_every_copy=True)  # a repeat after a crash
    deliver(tmp_path, "two@x", "alice@contoso.com")
    sent = [
        Sent("one@x", ("Alice@contoso.com", "erin@contoso.com"), acknowledged=True),
        Sent("two@x", ("alice@contoso.com", "judy@contoso.com"), acknowledged=True),
        # No 250: its client still has the duty to send it, the lab owes nothing.
        Sent("three@x", ("alice@contoso.com",), acknowledged=False),
    ]
    books = tally(sent, deliveries(tmp_path), queued=set())
    assert (books.sent, books.acknowledged, books.unacknowledged) == (3, 2, 1)
    assert books.expected == 4
    assert books.delivered_once == 2
    assert books.duplicated == {("one@x", "alice@contoso.com"): 2}
    assert books.worst == (("one@x", "alice@contoso.com"), 2)
    assert books.lost == [("two@x", "judy@contoso.com")]
    assert books.queued == []


def test_a_repeat_the_store_drops_is_counted_as_a_repeat_not_as_a_copy(tmp_path: Path) -> None:
    deliver(tmp_path, "one@x", "alice@contoso.com")
    deliver(tmp_path, "one@x", "alice@contoso.com")  # a step done again after a crash
    assert deliveries(tmp_path)[("one@x", "alice@contoso.com")] == 1
    assert store_repeats(tmp_path) == 1


def test_an_undelivered_recipient_of_a_message_left_in_a_queue_is_still_queued_not_lost(
    tmp_path: Path,
) -> None:
    queue = tmp_path / "EX3" / "Mailroot" / "vsi 1" / "Queue"
    queue.mkdir(parents=True)
    msg = MailMsg.new("sender@contoso.com", ["carol@contoso.com"], RFC822_MSG_ID="<late@x>", CONTENT_ID="c1")
    (queue / f"{msg.id}.json").write_text(f'{{"queue": "q", "msg": {msg.to_json()}}}')
    (queue / "c1.eml").write_bytes(b"named by the envelope")
    (queue / "c2.eml").write_bytes(b"named by no envelope")
    (queue / "half.json.tmp").write_bytes(b"{")

    books = tally(
        [Sent("late@x", ("carol@contoso.com",), True)], deliveries(tmp_path), queued_messages(tmp_path)
    )
    assert books.queued == [("late@x", "carol@contoso.com")]
    assert books.lost == []
    assert [p.name for p in leftovers(tmp_path)] == ["c2.eml", "half.json.tmp"]


def test_the_recipients_come_from_the_directory_a_group_across_three_servers_and_plain_mailboxes() -> None:
    config = lab_config.load(lab_config.lab_path("contoso"))
    chosen = recipients(config, "someone@fabrikam.com")
    # Sales: Bob (EX2), Carol (EX3) and, through Sales Managers, Dave (EX4).
    assert (chosen.group, chosen.members) == (
        "sales@contoso.com",
        ("bob@contoso.com", "carol@contoso.com", "dave@contoso.com"),
    )
    # Ivan and Judy forward elsewhere, st*r is a filter test: none of them owes a plain copy.
    assert chosen.local == ("alice@contoso.com", "erin@contoso.com", "mailadmin@contoso.com")
    assert chosen.sender == "relay.user@contoso.com"
    assert chosen.remote == ("grace@contoso.com", "lisa@litware.com")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kills", "-1"], "Invalid value for '--kills': -1 is not in the range x>=0"),
        (["--kills", "1", "--lab", "no-such-lab.yaml"], "no lab 'no-such-lab.yaml'"),
        (["--kills", "1", "--client", "nobody"], "has no client 'nobody'; clients: internet, lan"),
    ],
)
def test_a_wrong_option_is_one_line_in_the_users_terms(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["chaos", *args, "--workdir", str(tmp_path / "w")])
    assert result.exit_code == ExitCode.INPUT, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def figures(output: str) -> dict[str, int]:
    """The printed counts, by their label."""
    return {m[1].strip(): int(m[2]) for m in re.finditer(r"^\s*([a-z ()0-9]+):\s+(\d+)", output, re.M)}


def mailflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *args]


def lab_processes_in(folder: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-af", str(folder)], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def test_a_lab_killed_three_times_under_load_delivers_each_acknowledged_message_exactly_once(
    tmp_path: Path,
) -> None:
    env = environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET))
    # The restart bound is loose here: a start's time is mostly Python importing the harness, which a
    # busy CI machine stretches; the long form keeps the 2 s default.
    command = mailflow(
        "chaos", "--kills", "3", "--senders", "3", "--interval", "1",
        "--max-restart", "15", "--workdir", str(tmp_path / "chaos"),
    )  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    counts = figures(output)
    assert "Traceback" not in output
    assert counts["acknowledged (250)"] > 0, output
    assert counts["lost"] == 0, output
    assert counts["duplicated"] == 0, output
    assert counts["still queued"] == 0, output
    assert counts["delivered once"] == counts["deliveries expected"], output
    assert "over 3 restarts" in output
    assert result.returncode == ExitCode.OK, output
    assert lab_processes_in(tmp_path) == []


def test_ctrl_c_stops_the_lab_and_leaves_no_process(tmp_path: Path) -> None:
    env = environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET))
    folder = tmp_path / "chaos"
    process = subprocess.Popen(
        mailflow("chaos", "--kills", "50", "--workdir", str(folder)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        log = folder / "lab-up.log"
        while not (log.exists() and "Ctrl-C stops the lab." in log.read_text()):
            assert process.poll() is None and time.monotonic() < deadline, "the lab did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == stopped_by(signal.SIGINT), output
    assert "Traceback" not in output
    assert lab_processes_in(tmp_path) == []
