"""A connector's delivery schedule (Always, Never, selected times): the Scheduled state of its link
queue, Queue Viewer's Force Connection, the schedule opening by itself, and the lab file's `schedule:`."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli.app import main
from harness.judge.evidence import Evidence
from harness.lab import config as lab_config
from harness.lab.runtime import Lab
from harness.yamlsource import SourceError
from reference_mta.mailmsg import MailMsg
from reference_mta.queue_contract import Components, DeliveryResult, Hop, HopKind, QueueState, RetryPolicy
from reference_mta.queue_store import QueueDirectory
from reference_mta.queuing import AdvancedQueuingEngine
from reference_mta.topology import NEVER, Schedule
from reference_mta.tracking import TrackingLog

ROOT = Path(__file__).resolve().parents[1]
CONTOSO = ROOT / "fixtures" / "labs" / "contoso.yaml"
LDIF = ROOT / "fixtures" / "directory" / "contoso.ldif"
HOP = Hop("Proseware", HopKind.SMART_HOST, targets=("[198.18.0.9]",), connector="Proseware", spec="OUT-9b")


def _at(hour: int, minute: int, second: int = 0) -> datetime.datetime:
    return datetime.datetime(2026, 1, 5, hour, minute, second, tzinfo=datetime.UTC)


def test_always_is_open_and_never_never_opens_by_itself() -> None:
    assert Schedule().wait(_at(3, 0)) == 0.0
    assert NEVER.wait(_at(3, 0)) is None


def test_a_window_is_open_from_its_start_until_just_before_its_end() -> None:
    nightly = Schedule(always=False, windows=((22 * 60, 23 * 60),))
    assert nightly.wait(_at(22, 0)) == 0.0
    assert nightly.wait(_at(22, 59, 59)) == 0.0
    assert nightly.wait(_at(23, 0)) == 23 * 3600.0  # closed: opens again tomorrow at 22:00
    assert nightly.wait(_at(21, 30)) == 1800.0


def test_a_window_over_midnight_and_the_nearest_of_several() -> None:
    overnight = Schedule(always=False, windows=((23 * 60, 60),))
    assert overnight.wait(_at(0, 30)) == 0.0
    assert overnight.wait(_at(23, 30)) == 0.0
    assert overnight.wait(_at(1, 0)) == 22 * 3600.0
    two = Schedule(always=False, windows=((6 * 60, 7 * 60), (18 * 60, 19 * 60)))
    assert two.wait(_at(12, 0)) == 6 * 3600.0


# --- the link queue --------------------------------------------------------------------------------


async def _until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def _engine(
    tmp_path: Path, sent: list[str], schedule_wait: Callable[[Hop], float | None]
) -> AdvancedQueuingEngine:
    async def categorize(msg: MailMsg) -> None:
        for recipient in msg.recipients:
            recipient.status = "remote"

    async def deliver_remote(hop: Hop, msg: MailMsg, content: bytes) -> DeliveryResult:
        sent.append(content.decode())
        return DeliveryResult(delivered=list(msg.recipients), failed=[], deferred=[])

    async def deliver_local(msg: MailMsg, content: bytes) -> DeliveryResult:
        raise AssertionError("no local delivery here")

    engine = AdvancedQueuingEngine(
        "EX1",
        QueueDirectory(tmp_path / "Queue"),
        TrackingLog(tmp_path, "EX1", "127.0.0.1"),
        RetryPolicy(intervals=(0.05,)),
    )
    components = Components(
        categorize=categorize,
        route=lambda msg, recipient: HOP,
        deliver_local=deliver_local,
        deliver_remote=deliver_remote,
        make_ndr=lambda msg, failed, content: None,
    )
    engine.start(replace(components, schedule_wait=schedule_wait))
    return engine


def _states(engine: AdvancedQueuingEngine) -> list[QueueState]:
    return [e.state for e in engine.entries.values()]


def test_never_waits_scheduled_until_forced_then_waits_again(tmp_path: Path) -> None:
    sent: list[str] = []

    async def run() -> None:
        engine = _engine(tmp_path, sent, lambda hop: None)
        await engine.submit(MailMsg.new("ann@contoso.com", ["ops@proseware.example"]), b"first")
        await _until(lambda: _states(engine) == [QueueState.SCHEDULED])
        assert engine.idle()  # it waits for an administrator or the clock, not for a retry
        assert engine.force_connection("proseware") == 1
        await _until(lambda: sent == ["first"] and not engine.entries)
        # Force Connection sends what waited; the next message waits for the schedule again.
        await engine.submit(MailMsg.new("ann@contoso.com", ["ops@proseware.example"]), b"second")
        await _until(lambda: _states(engine) == [QueueState.SCHEDULED])
        assert sent == ["first"]
        await engine.stop()

    asyncio.run(run())


def test_the_queue_sends_when_its_schedule_opens(tmp_path: Path) -> None:
    sent: list[str] = []
    opens = time.time() + 0.5

    async def run() -> None:
        engine = _engine(tmp_path, sent, lambda hop: max(0.0, opens - time.time()))
        await engine.submit(MailMsg.new("ann@contoso.com", ["ops@proseware.example"]), b"later")
        await _until(lambda: _states(engine) == [QueueState.SCHEDULED])
        assert not sent
        await _until(lambda: sent == ["later"], timeout=5.0)
        assert time.time() >= opens
        await engine.stop()

    asyncio.run(run())


def test_an_open_schedule_sends_at_once(tmp_path: Path) -> None:
    sent: list[str] = []

    async def run() -> None:
        engine = _engine(tmp_path, sent, lambda hop: 0.0)
        await engine.submit(MailMsg.new("ann@contoso.com", ["ops@proseware.example"]), b"now")
        await _until(lambda: sent == ["now"])
        await engine.stop()

    asyncio.run(run())


# --- the lab file --------------------------------------------------------------------------------


def _lab(tmp_path: Path, schedule: str) -> Path:
    text = CONTOSO.read_text(encoding="utf-8").replace("../directory/contoso.ldif", str(LDIF))
    assert text.count("      schedule: never\n") == 1
    path = tmp_path / "contoso.yaml"
    path.write_text(text.replace("      schedule: never\n", schedule), encoding="utf-8")
    return path


def test_the_lab_file_reads_windows(tmp_path: Path) -> None:
    schedule = '      schedule: [{from: "22:00", to: "06:30"}]\n'
    organization = lab_config.load(_lab(tmp_path, schedule)).organization
    connector = next(c for c in organization.connectors if c.name == "Proseware Scheduled SMTP Connector")
    assert connector.schedule == Schedule(always=False, windows=((22 * 60, 6 * 60 + 30),))


@pytest.mark.parametrize(
    ("schedule", "field", "message"),
    [
        ('      schedule: [{from: "08:00", to: "08:00"}]\n', "schedule[0].to", "an empty window"),
        ('      schedule: [{from: "8:00", to: "09:00"}]\n', "schedule", ""),
        ("      schedule: sometimes\n", "schedule", ""),
    ],
)
def test_a_wrong_schedule_names_the_line(tmp_path: Path, schedule: str, field: str, message: str) -> None:
    path = _lab(tmp_path, schedule)
    with pytest.raises(SourceError) as info:
        lab_config.load(path)
    assert field in info.value.field and message in info.value.message, info.value
    assert info.value.line is not None and info.value.path == str(path)


# --- a running lab, from the command line --------------------------------------------------------


def test_queues_show_scheduled_and_the_command_line_forces_a_connection(tmp_path: Path) -> None:
    base = os.environ.get("MAILFLOW_LAB_BASE", "127.61.0.0")
    config = lab_config.load(CONTOSO, base=base, port_offset=27500)
    with Lab(config, tmp_path, control=True) as lab:
        workdir = str(lab.workdir)
        lab.submit("EX1", "alice@contoso.com", ["ops@proseware.example"], b"Subject: x\r\n\r\nx\r\n")
        assert lab.settle()
        (row,) = json.loads(_cli("queues", "--lab-dir", workdir, "--json"))
        assert (row["queue"], row["state"], row["count"]) == (
            "Proseware Scheduled SMTP Connector",
            "Scheduled",
            1,
        )
        assert Evidence.collect(lab).deliveries == []
        output = _cli("lab", "connector", "--lab-dir", workdir, "proseware scheduled smtp connector", "force")
        assert output.strip() == "Proseware Scheduled SMTP Connector: 1 message(s) sent on their way"
        assert lab.settle()
        assert [d.describe() for d in Evidence.collect(lab).deliveries] == [
            "sink isp-smarthost from EX1: alice@contoso.com → ops@proseware.example"
        ]
        wrong = CliRunner().invoke(main, ["lab", "connector", "--lab-dir", workdir, "Prosewear", "force"])
        assert wrong.exit_code == 2 and "Proseware Scheduled SMTP Connector" in wrong.output, wrong.output


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output
