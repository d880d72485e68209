"""What the lab's Internet hosts received, kept in the lab's folder: `<workdir>/sinks/<host>/` holds,
for each accepted message, `NNNN.eml` (the message byte for byte, as it came after DATA) and `NNNN.json`
beside it (its envelope: sender, recipients, their parameters, the client's address and HELO name, when
it arrived). The JSON file is written last, so a message is listed only once both files are complete.

`mailflow sinks` reads them back, whether the lab still runs or not.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SINKS_FOLDER = "sinks"
_NUMBERED = re.compile(r"(\d+)\.json")


@dataclass(frozen=True)
class Capture:
    """One accepted message. `mail_from` is "" for the null reverse-path; options are as sent."""

    time: float
    host: str
    peer: str
    helo: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]
    greeting: str = ""  # HELO or EHLO, as the sender greeted


class CaptureFileError(ValueError):
    """A file under sinks/ that is not what the lab wrote (edited or truncated by hand)."""


@dataclass(frozen=True)
class StoredCapture:
    """One message as kept on disk: its envelope (the JSON file's fields) and where its .eml is."""

    envelope: dict[str, Any]
    message: Path

    @property
    def subject(self) -> str:
        head = self.message.read_bytes().replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
        return str(email.message_from_bytes(head, policy=email.policy.default).get("Subject", ""))


class CaptureFolder:
    """One Internet host's folder. Numbering goes on after what is there (a lab started again on the
    same folder adds to it, nothing is overwritten)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._next: int | None = None

    def prepare(self) -> None:
        """Made when the lab starts, so an Internet host that received nothing still has its folder."""
        self.path.mkdir(parents=True, exist_ok=True)
        numbers = [int(m[1]) for p in self.path.iterdir() if (m := _NUMBERED.fullmatch(p.name))]
        self._next = max(numbers, default=0) + 1

    def store(self, capture: Capture) -> Path:
        if self._next is None:
            self.prepare()
        assert self._next is not None
        number, self._next = self._next, self._next + 1
        message = self.path / f"{number:04d}.eml"
        _write(message, capture.data)
        envelope = {
            "host": capture.host,
            "received": datetime.datetime.fromtimestamp(capture.time, datetime.UTC).isoformat(),
            "peer": capture.peer,
            "helo": capture.helo,
            "greeting": capture.greeting,
            "mail_from": capture.mail_from,
            "rcpt_to": list(capture.rcpt_tos),
            "mail_options": list(capture.mail_options),
            "rcpt_options": list(capture.rcpt_options),
            "size": len(capture.data),
            "message": message.name,
        }
        _write(message.with_suffix(".json"), json.dumps(envelope, indent=1).encode() + b"\n")
        return message


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def hosts(workdir: Path) -> list[str]:
    """The Internet hosts that have a folder under `workdir` (every one of a lab that ran there)."""
    folder = workdir / SINKS_FOLDER
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def stored(workdir: Path, host: str | None = None) -> list[StoredCapture]:
    """Every message kept under `workdir`, by host then in the order received."""
    found: list[StoredCapture] = []
    for name in [host] if host else hosts(workdir):
        folder = workdir / SINKS_FOLDER / name
        numbered = sorted((int(m[1]), p) for p in folder.glob("*.json") if (m := _NUMBERED.fullmatch(p.name)))
        for _, path in numbered:
            try:
                envelope = json.loads(path.read_text(encoding="utf-8"))
                message = folder / str(envelope["message"])
            except (ValueError, KeyError, TypeError) as exc:
                raise CaptureFileError(f"{path}: not an envelope the lab wrote ({exc})") from None
            if not message.is_file():
                raise CaptureFileError(f"{path}: its message {message.name} is missing")
            found.append(StoredCapture(envelope, message))
    return found
