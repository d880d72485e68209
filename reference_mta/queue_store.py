"""The queue folder on disk (`Mailroot/vsi 1/Queue`): each message's content file and the envelope file
of each of its parts, written durably so a message the 250 reply acknowledged survives a crash.

A queue step that turns one envelope into others (categorize, route, an NDR for a DSN request, the
parts of a delivery still to do) is one commit: a step record naming every output and the input is
written first, by rename, then the outputs, then the input is removed, then the record. A crash
anywhere leaves either the input alone (no record yet) or a record, which `load` carries out again:
the same outputs under the same ids, never the input and its outputs both.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reference_mta import crash_points
from reference_mta.group_sync import FolderSync
from reference_mta.mailmsg import MailMsg
from reference_mta.queue_contract import TO_BE_ROUTED, Hop, HopKind, QueueState

_STEP = ".step"  # a queue step's record, until the step is done


@dataclass
class Entry:
    """An envelope in a queue, as AQ holds it and as its envelope file records it."""

    msg: MailMsg
    queue: str
    hop: Hop | None = None
    attempts: int = 0
    next_retry: float = 0.0
    state: QueueState = QueueState.READY
    resume: str = TO_BE_ROUTED  # where the next attempt starts
    reroute: bool = False  # link state changed since it was routed: route it again before sending


class QueueDirectory:
    """`Mailroot/vsi 1/Queue`: content files and envelope files, written durably."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        self._folder = FolderSync(path)  # concurrent sessions and queue steps share its fsyncs

    def write_content(self, content_id: str, data: bytes) -> None:
        self._write(self.path / f"{content_id}.eml", data)

    def submit(self, entry: Entry, content: bytes) -> None:
        """A new message, durable when this returns: its content and its first envelope, each written
        and fsynced, then one folder sync for both (shared with whoever syncs meanwhile). A crash
        before that sync may leave the envelope without its content: `load` removes it, as it was
        never acknowledged."""
        self._write(self.path / f"{entry.msg.properties['CONTENT_ID']}.eml", content, sync=False)
        self._write(self.path / f"{entry.msg.id}.json", _encode(_record(entry)), sync=False)
        self._sync()

    def read_content(self, content_id: str) -> bytes:
        return (self.path / f"{content_id}.eml").read_bytes()

    def save(self, entry: Entry) -> None:
        self._write(self.path / f"{entry.msg.id}.json", _encode(_record(entry)))

    def commit(self, outputs: list[Entry], removed: str | None, point: str | None = None) -> None:
        """One queue step, all or nothing: the `outputs` written (a new envelope, or a new version of
        one) and the envelope `removed` gone. `point` names the crash point between the two."""
        step = {"outputs": [_record(entry) for entry in outputs], "removed": removed}
        if len(outputs) + (removed is not None) <= 1:
            # One rename is atomic by itself: no record needed.
            if point is not None:
                crash_points.reached(point)
            self._carry_out(step)
            if removed is not None:
                self.remove(removed)
                self._sync()
            return
        record = self.path / f"{uuid.uuid4().hex}{_STEP}"
        self._write(record, _encode(step))
        # One folder sync for all the outputs, before the input goes: a file system that may reorder
        # renames across a power loss then cannot keep the removal and lose an output.
        self._carry_out(step, sync=False)
        self._sync()
        if point is not None:
            crash_points.reached(point)
        self._finish_step(step, record)

    def _carry_out(self, step: dict[str, Any], *, sync: bool = True) -> None:
        for output in step["outputs"]:
            self._write(self.path / f"{output['msg']['id']}.json", _encode(output), sync=sync)

    def _finish_step(self, step: dict[str, Any], record: Path) -> None:
        if step["removed"]:
            self.remove(step["removed"])
        record.unlink()
        self._sync()

    def remove(self, envelope_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / f"{envelope_id}.json").unlink()

    def remove_content(self, content_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / f"{content_id}.eml").unlink()

    def load(self) -> list[Entry]:
        """At start, every envelope on disk: first a step cut short by a crash is finished, and what a
        crash left behind is removed (files half written, content no envelope refers to)."""
        for record in sorted(self.path.glob(f"*{_STEP}")):
            step = json.loads(record.read_bytes())
            self._carry_out(step)
            self._finish_step(step, record)
        for temporary in self.path.glob("*.tmp"):
            temporary.unlink()
        entries = [_entry(json.loads(path.read_bytes())) for path in sorted(self.path.glob("*.json"))]
        kept = {content.stem for content in self.path.glob("*.eml")}
        for entry in [entry for entry in entries if entry.msg.properties.get("CONTENT_ID") not in kept]:
            # Its submission was cut short before the folder sync that makes both files durable.
            self.remove(entry.msg.id)
            entries.remove(entry)
        referred = {entry.msg.properties.get("CONTENT_ID") for entry in entries}
        for content in self.path.glob("*.eml"):
            if content.stem not in referred:
                content.unlink()
        self._sync()
        return entries

    def _write(self, target: Path, data: bytes, *, sync: bool = True) -> None:
        # Write-then-rename keeps the old version intact until the new one is on disk.
        temporary = target.with_suffix(target.suffix + ".tmp")
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        if sync:
            self._sync()

    def _sync(self) -> None:
        self._folder.sync()


def _record(entry: Entry) -> dict[str, Any]:
    record: dict[str, Any] = {
        "queue": entry.queue,
        "attempts": entry.attempts,
        "next_retry": entry.next_retry,
        "state": entry.state,
        "resume": entry.resume,
        "msg": json.loads(entry.msg.to_json()),
    }
    if entry.hop is not None:
        record["hop"] = asdict(entry.hop)
    return record


def _entry(record: dict[str, Any]) -> Entry:
    return Entry(
        MailMsg.from_json(json.dumps(record["msg"])),
        record["queue"],
        _hop(record["hop"]) if record.get("hop") else None,
        record.get("attempts", 0),
        record.get("next_retry", 0.0),
        QueueState(record.get("state", QueueState.READY)),
        record.get("resume", TO_BE_ROUTED),
    )


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, indent=1).encode()


def _hop(record: dict[str, Any]) -> Hop:
    # JSON gives back a list and a plain word: the hop is rebuilt as routing made it.
    return Hop(**{**record, "kind": HopKind(record["kind"]), "targets": tuple(record.get("targets") or ())})
