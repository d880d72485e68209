"""The outbound gateway path on a lab started by `mailflow lab up`, driven as an administrator would:
the MTA's queue for the Notes connector and the gateway's MTS-OUT folder, each holding the message in
turn (`mailflow queues`), a gateway service stopped and started (`mailflow lab gateway`), and a lab
killed part way through a delivery that, started again, leaves exactly one memo per recipient."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from labprocess import LabProcess, environment, lab_processes, start, until

from harness.cli.app import main
from harness.exit_codes import ExitCode

WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
# This module's own address block, apart from the other modules' labs (MAILFLOW_LAB_BASE moves it).
_FIRST = int(os.environ.get("MAILFLOW_LAB_BASE", "127.170.0.0").split(".")[1])
BASE = f"127.{(_FIRST + WORKER) % 250}.31.0"
OFFSET = 29100 + 100 * (WORKER % 10)
MTA_QUEUE = "X.400: Notes Connector"
MTS_OUT = "Notes Connector MTS-OUT"
NORA = "Nora Lee/Contoso"
KEN = "Ken Sato/Tokyo/Fabrikam"
KEN_ADDRESS = "IMCEANOTES-Ken+20Sato+2FTokyo+2FFabrikam@contoso.com"


@pytest.fixture
def started() -> Iterator[list[LabProcess]]:
    with lab_processes() as labs:
        yield labs


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def ex4_queues(workdir: Path) -> dict[str, tuple[str, int]]:
    rows = json.loads(cli("queues", "--lab-dir", str(workdir), "--server", "EX4", "--all", "--json"))
    return {row["queue"]: (row["state"], row["count"]) for row in rows}


def memos(workdir: Path) -> dict[str, int]:
    """How many memos each Notes mail file holds."""
    found: dict[str, int] = {}
    for memo in (workdir / "foreign" / "Lotus Notes").glob("*/*.memo"):
        name = memo.parent.name.replace("%2F", "/")
        found[name] = found.get(name, 0) + 1
    return found


def submit(workdir: Path, tmp_path: Path, *recipients: str) -> None:
    message = tmp_path / "to-notes.eml"
    message.write_bytes(b"Subject: for Notes\n\nhello Notes\n")
    to = [arg for recipient in recipients for arg in ("--to", recipient)]
    lab_dir = str(workdir)
    cli("submit", "--lab-dir", lab_dir, "--server", "EX4", "--from", "dave@contoso.com", *to, str(message))


def test_queues_show_the_message_in_the_mta_queue_then_in_mts_out_while_the_gateway_is_stopped(
    tmp_path: Path, started: list[LabProcess]
) -> None:
    workdir = tmp_path / "lab"
    start(started, workdir, environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET)))
    assert "Notes Connector on EX4: stopped" in cli(
        "lab", "gateway", "--lab-dir", str(workdir), "notes connector", "stop"
    )
    cli("lab", "freeze", "--lab-dir", str(workdir), "--server", "EX4", MTA_QUEUE)
    submit(workdir, tmp_path, "nora.lee@contoso.com")
    until(lambda: ex4_queues(workdir)[MTA_QUEUE] == ("Frozen", 1), "the frozen MTA queue holds it")
    assert ex4_queues(workdir)[MTS_OUT] == ("Ready", 0)

    cli("lab", "freeze", "--lab-dir", str(workdir), "--server", "EX4", "--undo", MTA_QUEUE)
    # The MTA keeps delivering to MTS-OUT while the gateway is stopped: there it waits.
    until(lambda: ex4_queues(workdir)[MTS_OUT] == ("Ready", 1), "MTS-OUT holds it")
    assert ex4_queues(workdir)[MTA_QUEUE] == ("Ready", 0)
    assert memos(workdir) == {}

    cli("lab", "gateway", "--lab-dir", str(workdir), "Notes Connector", "start")
    until(lambda: memos(workdir) == {NORA: 1}, "one memo in Nora's mail file")
    until(lambda: ex4_queues(workdir)[MTS_OUT] == ("Ready", 0), "MTS-OUT is empty")
    events = [
        e["event-id"]
        for e in map(json.loads, next((workdir / "tracking" / "EX4.log").glob("*.jsonl")).open())
    ]
    assert events[-5:] == [1038, 1029, 4, 7, 1003]


def test_a_lab_killed_after_the_first_recipients_memo_leaves_one_memo_per_recipient_when_restarted(
    tmp_path: Path, started: list[LabProcess]
) -> None:
    workdir = tmp_path / "lab"
    env = environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET))
    first = start(started, workdir, env)
    # Ken's mail file cannot be written: a file stands where its folder goes. Nora's memo is written,
    # Ken's fails, and the message stays in MTS-OUT.
    blocked = workdir / "foreign" / "Lotus Notes" / KEN.replace("/", "%2F")
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("not a mail file")
    submit(workdir, tmp_path, "nora.lee@contoso.com", KEN_ADDRESS)
    until(lambda: memos(workdir) == {NORA: 1}, "Nora's memo, written before Ken's failed")
    until(lambda: ex4_queues(workdir)[MTS_OUT] == ("Ready", 1), "the message kept in MTS-OUT")

    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=30)
    blocked.unlink()
    start(started, workdir, env)
    until(lambda: memos(workdir) == {NORA: 1, KEN: 1}, "one memo for each recipient")
    until(lambda: ex4_queues(workdir)[MTS_OUT] == ("Ready", 0), "MTS-OUT is empty")
    assert memos(workdir) == {NORA: 1, KEN: 1}


def test_a_gateway_the_lab_does_not_have_is_named_with_the_ones_it_has(
    tmp_path: Path, started: list[LabProcess]
) -> None:
    workdir = tmp_path / "lab"
    start(started, workdir, environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET)))
    result = CliRunner().invoke(main, ["lab", "gateway", "--lab-dir", str(workdir), "Domino", "stop"])
    assert result.exit_code == ExitCode.INPUT, result.output
    assert "no gateway connector 'Domino'; gateway connectors: Notes Connector" in result.output
    assert "Traceback" not in result.output
