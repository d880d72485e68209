"""A real MTA standing in for EX1 of a lab started by hand: `mailflow queues` lists its own queues
(postqueue -j, exim -bp, smtpctl show queue), `mailflow lab freeze` holds, freezes or suspends its
messages and lets them go again, and what it cannot do (be taken down, take a store submission, freeze a
queue it does not have) is said with exit 2. Needs root and the MTAs (`make mtas`)."""

from __future__ import annotations

import json
import smtplib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from labprocess import LabProcess, environment, lab_processes, start
from standin import WORKER, netns_config, send

from harness import targets
from harness.cli.app import main
from harness.exit_codes import ExitCode
from harness.lab.config import SinkRule
from harness.lab.placement import netns_first_octet
from harness.lab.runtime import Lab
from harness.targets import Target

# This module's bands of the namespace network (tests/standin.py): labs made here, and lab up's. Each
# module's band is its own (see tests/standin.py): 130 and 140 are the stopping and sweep tests'.
BAND, LAB_UP_BAND = 60, 70
RECIPIENT = "ann@fabrikam.com"


@dataclass(frozen=True)
class Queues:
    """What the MTA calls its queues: every one `queues --all` lists, the one `freeze` takes, and where
    frozen messages are listed (and `freeze --undo` takes)."""

    names: tuple[str, ...]
    to_freeze: str
    frozen: str


QUEUES = {
    "postfix": Queues(("maildrop", "incoming", "active", "deferred", "hold"), "deferred", "hold"),
    "exim": Queues(("queue", "frozen"), "queue", "frozen"),
    "opensmtpd": Queues(("queue", "suspended"), "queue", "suspended"),
}


@pytest.fixture(params=[targets.POSTFIX, targets.EXIM, targets.OPENSMTPD], ids=lambda t: t.name)
def target(request: pytest.FixtureRequest) -> Target:
    chosen: Target = request.param
    if (why := chosen.unavailable()) is not None:
        pytest.skip(why)
    return chosen


@pytest.fixture
def folder() -> Iterator[Path]:
    """A lab folder with a short path: Dovecot's sockets under it must fit a Unix socket's 107 bytes,
    which pytest's tmp_path leaves no room for."""
    with tempfile.TemporaryDirectory(prefix="mf-") as path:
        yield Path(path)


@pytest.fixture
def lab(target: Target, folder: Path) -> Iterator[Lab]:
    with target.lab(netns_config(BAND), folder / "lab", control=True) as running:
        yield running


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, " ".join(result.output.split())


def rows(lab: Lab) -> dict[str, dict[str, Any]]:
    code, output = run("queues", "--lab-dir", str(lab.workdir), "--server", "EX1", "--all", "--json")
    assert code == 0, output
    found = json.loads(output)
    assert {row["server"] for row in found} == {"EX1"}
    return {row["queue"]: row for row in found}


def until(condition: Callable[[], bool], what: str, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.2)


def waiting(lab: Lab, frozen: str) -> bool:
    return any(RECIPIENT in r["recipients"] for q, r in rows(lab).items() if q != frozen)


def set_refusal(lab: Lab, refuse: bool) -> None:
    async def change() -> None:
        sink = lab.sinks["fabrikam-mx"]
        if refuse:
            sink.add_rule(SinkRule("RCPT", RECIPIENT, "451 4.3.0 Try again later", "reply", 0.0, None))
        else:
            sink.clear_rules()

    lab.run(change())


def test_freeze_and_release(target: Target, lab: Lab) -> None:
    """The MTA's queue is listed, frozen and released over the control socket."""
    names = QUEUES[target.name]
    workdir = str(lab.workdir)
    assert tuple(rows(lab)) == names.names
    set_refusal(lab, True)
    assert send(lab, "relay-host", "monitor@contoso.com", [RECIPIENT], "held") == {}
    until(lambda: waiting(lab, names.frozen), f"{RECIPIENT} waits in {target.name}'s queue")

    code, output = run(
        "lab", "freeze", "--lab-dir", workdir, "--server", "EX1", "Internet Mail SMTP Connector"
    )
    assert code == ExitCode.INPUT
    assert "has no queue 'Internet Mail SMTP Connector'" in output and "not destinations" in output
    assert names.to_freeze in output.partition("not destinations")[2]

    def frozen() -> bool:
        # Postfix holds what is in its deferred queue at that moment: again while the message is active.
        code, output = run("lab", "freeze", "--lab-dir", workdir, "--server", "EX1", names.to_freeze)
        assert code == 0, output
        row = rows(lab)[names.frozen]
        return bool(row["count"] == 1 and row["state"] == "Frozen" and row["recipients"] == [RECIPIENT])

    until(frozen, f"the message frozen in {names.frozen}")
    set_refusal(lab, False)
    assert lab.settle(timeout=10)
    assert lab.sinks["fabrikam-mx"].captures == []  # frozen: not sent, though the host now accepts it

    code, output = run("lab", "freeze", "--lab-dir", workdir, "--server", "EX1", "--undo", names.frozen)
    assert code == 0, output
    until(lambda: bool(lab.sinks["fabrikam-mx"].captures), "the released message delivered")
    assert [c.rcpt_tos for c in lab.sinks["fabrikam-mx"].captures] == [(RECIPIENT,)]
    assert (lab.workdir / "sinks" / "fabrikam-mx" / "0001.eml").is_file()
    until(lambda: not waiting(lab, ""), "the queue empty")


def test_cannot_do(target: Target, lab: Lab, tmp_path: Path) -> None:
    """What a real MTA cannot do exits 2, saying so."""
    workdir = str(lab.workdir)
    mta = lab.stand_ins["EX1"].mta
    code, output = run("lab", "server", "--lab-dir", workdir, "EX1", "down")
    assert code == ExitCode.INPUT
    assert f"EX1 is {mta} standing in for the lab server: it cannot be taken down" in output
    assert "servers that can: EX2, EX3, EX4" in output
    message = tmp_path / "note.eml"
    message.write_bytes(b"Subject: x\n\nx\n")
    code, output = run(
        "submit",
        "--lab-dir",
        workdir,
        "--server",
        "EX1",
        "--from",
        "alice@contoso.com",
        "--to",
        RECIPIENT,
        str(message),
    )
    assert code == ExitCode.INPUT and f"EX1 is {mta} standing in" in output
    # The reference servers beside it are still driven as before.
    code, output = run("lab", "server", "--lab-dir", workdir, "ex2", "down")
    assert code == 0 and "servers down: ex2" in output


@pytest.fixture
def started() -> Iterator[list[LabProcess]]:
    with lab_processes() as labs:
        yield labs


def test_lab_up_with_postfix_lists_its_queues(folder: Path, started: list[LabProcess]) -> None:
    if (why := targets.POSTFIX.unavailable()) is not None:
        pytest.skip(why)
    # lab up puts a real MTA's lab on 198.18.MAILFLOW_NETNS_SUBNET.0/24 (1 to 250): this module's band,
    # wrapped round for a high MAILFLOW_NETNS_SUBNET.
    subnet = 1 + (netns_first_octet() + LAB_UP_BAND + WORKER % 10 - 1) % 250
    lab = start(
        started, folder / "lab", environment(MAILFLOW_NETNS_SUBNET=str(subnet)), "--target", "postfix"
    )
    with smtplib.SMTP(timeout=10) as smtp:
        code, banner = smtp.connect(f"198.18.{subnet}.11", 25)
    assert code == 220 and banner.decode() == "ex1.contoso.com ESMTP"  # Postfix's, as rendered
    code, output = run("queues", "--lab-dir", str(lab.workdir), "--all", "--json")
    assert code == 0, output
    listed = {(row["server"], row["queue"]) for row in json.loads(output)}
    assert {("EX1", name) for name in QUEUES["postfix"].names} <= listed
    assert ("EX2", "Messages awaiting directory lookup") in listed
    code, _ = lab.stop()
    assert code == 0
