"""Message files: where a data or bdat step's message is found, and how it is loaded, the same for
checking a trace, replaying it and reading what a mailbox should hold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.corpus.script import Bdat, Data, ScriptError, crlf_line_ends, dot_stuff
from harness.lab.config import FIXTURES

MESSAGE_DIRS = (FIXTURES / "messages",)


@dataclass(frozen=True)
class Message:
    """A data step's message or a bdat step's chunk, loaded before connecting so a missing file cannot
    cut a session short. `payload` is what goes on the wire after the command."""

    label: str
    payload: bytes
    size: int
    body: bytes = b""


def resolve_message_path(source: str, base_dir: Path, search_dirs: Sequence[Path]) -> Path | None:
    """The file a data step names: absolute, else under base_dir, else under each search dir in turn."""
    path = Path(source)
    if path.is_absolute():
        return path if path.is_file() else None
    for directory in (base_dir, *search_dirs):
        candidate = directory / path
        if candidate.is_file():
            return candidate
    return None


def message_bytes(step: Data, base_dir: Path, search_dirs: Sequence[Path]) -> bytes:
    """The message a data step names, as stored in a mailbox: CRLF line ends, no dot-stuffing."""
    body = load_message(0, step, base_dir, search_dirs).body
    return body if step.raw else crlf_line_ends(body)


def load_message(index: int, step: Data | Bdat, base_dir: Path, search_dirs: Sequence[Path]) -> Message:
    if step.source is None:
        body = (step.inline or "").encode("utf-8")
        label = "inline"
    else:
        path = resolve_message_path(step.source, base_dir, search_dirs)
        if path is None:
            looked = ", ".join(str(d) for d in (base_dir, *search_dirs))
            key = "data" if isinstance(step, Data) else "bdat"
            raise ScriptError(index, f"message file {step.source!r} not found (looked in {looked})", key)
        body = path.read_bytes()
        label = step.source
    if isinstance(step, Bdat):
        # A chunk has no terminator and may end in the middle of a line, so it only gets DATA's
        # line-end rule: no dot-stuffing, no CRLF added at the end.
        chunk = body if step.raw else crlf_line_ends(body)
        return Message(label=label, payload=chunk, size=len(chunk), body=body)
    return Message(label=label, payload=body if step.raw else dot_stuff(body), size=len(body), body=body)
