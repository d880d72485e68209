"""AQ keeps every accepted message durable: on disk (fsync'd) before submit returns, in exactly one
queue at a time, and resumed from disk after a restart."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from reference_mta.mailmsg import MailMsg
from reference_mta.queue_contract import (
    DIRECTORY_LOOKUP,
    PENDING_SUBMISSION,
    RETRY,
    Components,
    ComponentUnavailable,
    DeliveryResult,
    Hop,
    HopKind,
    QueueState,
    RetryPolicy,
)
from reference_mta.queue_store import QueueDirectory
from reference_mta.queuing import AdvancedQueuingEngine
from reference_mta.tracking import TrackingLog, read_events


def _engine(tmp_path: Path) -> AdvancedQueuingEngine:
    return AdvancedQueuingEngine(
        "EX1",
        QueueDirectory(tmp_path / "Queue"),
        TrackingLog(tmp_path, "EX1", "127.0.0.1"),
        RetryPolicy(intervals=(0.05,)),
    )


def _components(delivered: list[str], *, fail_local: bool = False) -> Components:
    async def categorize(msg: MailMsg) -> None:
        for recipient in msg.recipients:
            recipient.status = "local"

    async def deliver_local(msg: MailMsg, content: bytes) -> DeliveryResult:
        if fail_local:
            raise OSError("store is offline")
        delivered.extend(f"{r.address}:{content.decode()}" for r in msg.recipients)
        return DeliveryResult(delivered=list(msg.recipients), failed=[], deferred=[])

    async def deliver_remote(hop: Hop, msg: MailMsg, content: bytes) -> DeliveryResult:
        raise AssertionError("no remote delivery in these tests")

    return Components(
        categorize=categorize,
        route=lambda msg, r: Hop("x", HopKind.DNS),
        deliver_local=deliver_local,
        deliver_remote=deliver_remote,
        make_ndr=lambda msg, failed, content: None,
    )


async def _until(condition: object, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_submit_returns_only_after_content_and_envelope_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    engine = _engine(tmp_path)
    msg = MailMsg.new("ann@fabrikam.com", ["alice@contoso.com"], RFC822_MSG_ID="m1@x")

    asyncio.run(engine.submit(msg, b"Subject: hi\r\n\r\nbody\r\n"))

    queue = tmp_path / "Queue"
    content_id = msg.properties["CONTENT_ID"]
    assert (queue / f"{content_id}.eml").read_bytes() == b"Subject: hi\r\n\r\nbody\r\n"
    envelope = json.loads((queue / f"{msg.id}.json").read_text())
    assert envelope["queue"] == PENDING_SUBMISSION
    assert envelope["msg"]["recipients"][0]["address"] == "alice@contoso.com"
    # Both files and the directory entry that names them reached the disk before submit returned.
    assert str(queue / f"{content_id}.eml.tmp") in synced or str(queue / f"{content_id}.eml") in synced
    assert any(p.startswith(str(queue / msg.id)) for p in synced)
    assert str(queue) in synced
    events = [e["event-id"] for e in read_events(tmp_path, "EX1")]
    assert events == [1019, 1025]


def _restarted(tmp_path: Path) -> list[str]:
    """What an engine started again on the queue folder delivers once it is idle."""
    delivered: list[str] = []

    async def restart() -> None:
        engine = _engine(tmp_path)
        engine.start(_components(delivered))
        await _until(lambda: bool(delivered) and engine.idle())
        await engine.stop()

    asyncio.run(restart())
    return delivered


def test_queued_messages_survive_a_restart_and_are_delivered(tmp_path: Path) -> None:
    msg = MailMsg.new("ann@fabrikam.com", ["alice@contoso.com"], RFC822_MSG_ID="m2@x")
    asyncio.run(_engine(tmp_path).submit(msg, b"kept"))  # the engine never started: as if it crashed

    assert _restarted(tmp_path) == ["alice@contoso.com:kept"]
    assert list((tmp_path / "Queue").iterdir()) == []  # delivered messages leave no files behind


def test_an_envelope_whose_content_a_crash_lost_is_removed_at_start(tmp_path: Path) -> None:
    # A submission cut short before its folder sync: the file system kept the envelope's rename and
    # lost the content's. No 250 was given for it.
    lost = MailMsg.new("ann@fabrikam.com", ["alice@contoso.com"], RFC822_MSG_ID="lost@x")
    kept = MailMsg.new("ann@fabrikam.com", ["alice@contoso.com"], RFC822_MSG_ID="kept@x")
    asyncio.run(_engine(tmp_path).submit(lost, b"lost"))
    asyncio.run(_engine(tmp_path).submit(kept, b"kept"))
    (tmp_path / "Queue" / f"{lost.properties['CONTENT_ID']}.eml").unlink()

    assert _restarted(tmp_path) == ["alice@contoso.com:kept"]
    assert list((tmp_path / "Queue").iterdir()) == []


def test_a_failing_component_parks_the_message_for_retry_instead_of_losing_it(tmp_path: Path) -> None:
    async def scenario() -> tuple[dict[str, list[dict[str, object]]], list[int]]:
        engine = _engine(tmp_path)
        engine.start(_components([], fail_local=True))
        await engine.submit(
            MailMsg.new("ann@fabrikam.com", ["alice@contoso.com"], RFC822_MSG_ID="m3@x"), b"x"
        )
        await _until(lambda: any(e.queue == RETRY for e in engine.entries.values()))
        snapshot = engine.snapshot()
        await engine.stop()
        return snapshot, [e["event-id"] for e in read_events(tmp_path, "EX1")]

    snapshot, events = asyncio.run(scenario())
    assert len(snapshot[RETRY]) == 1
    assert 1022 in events  # AQ failure is logged
    files = [p.name for p in (tmp_path / "Queue").iterdir()]
    assert any(name.endswith(".eml") for name in files) and any(name.endswith(".json") for name in files)


def test_the_envelope_moves_through_named_queues(tmp_path: Path) -> None:
    seen: list[str] = []

    async def scenario() -> None:
        engine = _engine(tmp_path)
        components = _components([])
        inner = components.categorize

        async def categorize(msg: MailMsg) -> None:
            seen.extend(e.queue for e in engine.entries.values() if e.msg.id == msg.id)
            await inner(msg)

        components.categorize = categorize
        engine.start(components)
        await engine.submit(MailMsg.new("", ["a@b"]), b"y")
        await _until(engine.idle)
        await engine.stop()

    asyncio.run(scenario())
    assert seen == [DIRECTORY_LOOKUP]


def test_a_message_in_a_link_queue_keeps_its_next_hop_across_a_restart(tmp_path: Path) -> None:
    hop = Hop(
        "fabrikam.com", HopKind.SMART_HOST, targets=("[198.18.0.9]",), spec="OUT-9b", detail="smart host"
    )
    sent: list[Hop] = []

    def components(deliver: Components) -> Components:
        deliver.categorize = _mark_remote
        deliver.route = lambda msg, recipient: hop
        return deliver

    async def stalled(hop_: Hop, msg: MailMsg, content: bytes) -> DeliveryResult:
        await asyncio.Event().wait()  # the remote server never answers: the service stops meanwhile
        raise AssertionError("unreachable")

    async def delivered(hop_: Hop, msg: MailMsg, content: bytes) -> DeliveryResult:
        sent.append(hop_)
        return DeliveryResult(delivered=list(msg.recipients), failed=[], deferred=[])

    async def first_run() -> None:
        engine = _engine(tmp_path)
        engine.start(components(replace(_components([]), deliver_remote=stalled)))
        await engine.submit(MailMsg.new("ann@contoso.com", ["bob@fabrikam.com"]), b"z")
        # Active: the session to the next hop has begun, so routing is over and the envelope it
        # routed is gone; only the part in the link queue is on disk.
        await _until(lambda: [e.state for e in engine.entries.values()] == [QueueState.ACTIVE])
        await engine.stop()

    async def second_run() -> None:
        engine = _engine(tmp_path)
        engine.start(components(replace(_components([]), deliver_remote=delivered)))
        await _until(lambda: bool(sent) and engine.idle())
        await engine.stop()

    asyncio.run(first_run())
    (envelope,) = (tmp_path / "Queue").glob("*.json")
    assert json.loads(envelope.read_text())["hop"]["kind"] == "smart_host"  # the plain word on disk
    assert [entry.hop for entry in QueueDirectory(tmp_path / "Queue").load()] == [hop]
    asyncio.run(second_run())
    assert sent == [hop] and isinstance(sent[0].kind, HopKind)


async def _mark_remote(msg: MailMsg) -> None:
    for recipient in msg.recipients:
        recipient.status = "remote"


def test_a_directory_back_while_a_failed_look_up_ends_still_wakes_the_message(tmp_path: Path) -> None:
    # The categorizer's look-ups run in a worker thread: the lab brings the global catalog back on the
    # loop after the look-up failed and before AQ parks the message. The wake-up must not be lost, or
    # the message would wait for its retry timer (an hour here).
    async def scenario() -> list[str]:
        engine = AdvancedQueuingEngine(
            "EX1",
            QueueDirectory(tmp_path / "Q"),
            TrackingLog(tmp_path, "EX1", "127.0.0.1"),
            RetryPolicy(intervals=(3600.0,)),
        )
        delivered: list[str] = []
        components = _components(delivered)
        loop = asyncio.get_running_loop()
        looked_up: list[str] = []

        def look_up(msg: MailMsg) -> None:
            looked_up.append(msg.id)
            if len(looked_up) == 1:
                loop.call_soon_threadsafe(engine.retry_now, DIRECTORY_LOOKUP)
                raise ComponentUnavailable("the global catalog is not answering")
            for recipient in msg.recipients:
                recipient.status = "local"

        async def categorize(msg: MailMsg) -> None:
            await asyncio.to_thread(look_up, msg)

        components.categorize = categorize
        engine.start(components)
        try:
            await engine.submit(MailMsg.new("ann@fabrikam.com", ["alice@contoso.com"]), b"hello")
            await _until(lambda: delivered, timeout=10)
        finally:
            await engine.stop()
        return delivered

    assert asyncio.run(scenario()) == ["alice@contoso.com:hello"]
