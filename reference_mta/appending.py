"""A log file kept open for appending: the tracking and protocol logs write a line per event or per
command, and opening the file each time cost more than the write (each open waits on the file
system's journal while the queue's fsyncs run)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import BinaryIO


class AppendFile:
    """Appends to one file at a time, kept open until the path changes (a new day's file) or `close`.

    Each append is flushed at once, so a reader in another process sees the line as soon as it is
    written, and written whole in one call, so a lab that stops leaves whole lines. Opened with
    O_APPEND: another writer of the same file (a server started again in the same process) cannot
    overwrite these lines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the loop's thread and the workers' both log
        self._path: Path | None = None
        self._file: BinaryIO | None = None

    def append(self, path: Path, data: bytes, *, header: bytes = b"") -> None:
        """`data` at the end of `path`; `header` first if the file is empty (made for this line)."""
        with self._lock:
            if path != self._path or self._file is None:
                self._close()
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = path.open("ab")
                self._path = path
            if header and self._file.tell() == 0:
                data = header + data
            self._file.write(data)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._path = None, None
