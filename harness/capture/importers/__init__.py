"""Importers: captured SMTP sessions (a pcap or pcapng capture, an Exchange/IIS W3C protocol log, a swaks
transcript) turned into `harness.capture.recorded.RecordedSession`s, and those into trace documents
(`harness.capture.importers.to_trace`).

Every importer raises `BadInput` for input it cannot read, naming the file and the packet or line, so the
command line can refuse it before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.capture.recorded import RecordedSession


class BadInput(ValueError):
    """Input an importer cannot read: `where` is "packet 12" or "line 7" (empty for the whole file)."""

    def __init__(self, path: Path | str, where: str, message: str) -> None:
        self.path = Path(path)
        self.where = where
        self.message = message
        super().__init__(f"{self.path}: {where}: {message}" if where else f"{self.path}: {message}")


@dataclass
class Imported:
    """What an input gave: the sessions to replay, the server's own sessions to its next hops (which
    show where a message went), and what the user must be told: `warnings` (the input is damaged, and
    what of it was lost) and `notes` (what was left out by choice)."""

    sessions: list[RecordedSession]
    onward: list[RecordedSession] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
