"""The queue folder on disk (`Mailroot/vsi 1/Queue`): each message's content file and the envelope file
of each of its parts, written durably so a message the 250 reply acknowledged survives a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reference_mta.mailmsg import MailMsg
from reference_mta.queue_contract import TO_BE_ROUTED, Hop, HopKind, QueueState


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

    def write_content(self, content_id: str, data: bytes) -> None:
        self._write(self.path / f"{content_id}.eml", data)

    def read_content(self, content_id: str) -> bytes:
        return (self.path / f"{content_id}.eml").read_bytes()

    def save(self, entry: Entry) -> None:
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
        self._write(self.path / f"{entry.msg.id}.json", json.dumps(record, indent=1).encode())

    def remove(self, envelope_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / f"{envelope_id}.json").unlink()

    def remove_content(self, content_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / f"{content_id}.eml").unlink()

    def load(self) -> list[Entry]:
        entries = []
        for path in sorted(self.path.glob("*.json")):
            record = json.loads(path.read_text())
            msg = MailMsg.from_json(json.dumps(record["msg"]))
            entries.append(
                Entry(
                    msg,
                    record["queue"],
                    _hop(record["hop"]) if record.get("hop") else None,
                    record.get("attempts", 0),
                    record.get("next_retry", 0.0),
                    QueueState(record.get("state", QueueState.READY)),
                    record.get("resume", TO_BE_ROUTED),
                )
            )
        return entries

    def _write(self, target: Path, data: bytes) -> None:
        # Write-then-rename keeps the old version intact until the new one is on disk.
        temporary = target.with_suffix(target.suffix + ".tmp")
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        directory = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _hop(record: dict[str, Any]) -> Hop:
    # JSON gives back a list and a plain word: the hop is rebuilt as routing made it.
    return Hop(**{**record, "kind": HopKind(record["kind"]), "targets": tuple(record.get("targets") or ())})
