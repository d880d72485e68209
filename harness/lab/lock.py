"""One running lab per folder: a lab holds an exclusive lock on `<workdir>/lab.lock` while it runs, so a
second lab started on the same folder is refused instead of taking over the first one's control socket,
queues and mailboxes.

The lock is an flock(2) on an open file, which the kernel releases when the process ends however it
ends: a lock file left by a lab that was killed is simply taken over. Hand-written rather than the
`filelock` package because the refusal must name the running lab's pid, which the file holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_NAME = "lab.lock"


class LabRunning(RuntimeError):
    """Another lab runs in this folder."""

    def __init__(self, workdir: Path, pid: int | None, holder: str) -> None:
        self.workdir = workdir
        self.pid = pid
        who = f"lab {holder}" if holder else "another lab"
        stop = f"stop it (Ctrl-C in its terminal, or kill {pid})" if pid else "stop it"
        super().__init__(
            f"{who} (pid {pid if pid else 'unknown'}) is already running in {workdir}; "
            f"{stop} or choose another --workdir"
        )


class LabLock:
    """The lock of one lab's folder; `acquire` raises LabRunning if another process holds it."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self, lab_name: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid, _, holder = handle.read().strip().partition(" ")
            handle.close()
            raise LabRunning(self.path.parent, int(pid) if pid.isdigit() else None, holder) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {lab_name}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        handle, self._file = self._file, None
        if handle is None:
            return
        # Emptied, not removed: removing it would let a third lab lock a new file while a second one
        # still waits on this one's inode.
        with contextlib.suppress(OSError):
            handle.truncate(0)
        handle.close()


def holder(workdir: Path) -> int | None:
    """The pid of the lab running in `workdir`, or None if none holds its lock."""
    path = workdir / LOCK_NAME
    try:
        handle = path.open("r", encoding="utf-8")
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = handle.read().partition(" ")[0]
            return int(pid) if pid.isdigit() else None
        return None
