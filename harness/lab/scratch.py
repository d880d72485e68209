"""Where a lab that makes its own folder puts it: in memory (/dev/shm) where the machine has room there.

A lab's own folder lives only as long as the lab: it is removed when the lab stops, so it never has to
survive the machine. The reference MTA still syncs every file before it answers 250, as a real server
must; on a disk that costs milliseconds per message, and under a parallel corpus run the disk queue,
not the MTA, set the pace (half of a trace's time on a busy machine). A process that is killed loses
nothing on tmpfs either, so the crash and restart behaviour a lab shows is the same.

TMPDIR, or MAILFLOW_LAB_TMPDIR, still choose: a user who set either gets the folder there.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

from harness.lab.lock import LOCK_NAME

IN_MEMORY = "/dev/shm"
# Less than this free (a container's /dev/shm is 64 MB by default) and a lab of large messages could
# fill it: the folder then goes where tempfile puts it.
MIN_FREE = 1 << 30
# A lab's folder in memory that no running lab holds and nobody has touched for this long is left from a
# process that was killed (SIGKILL, out of memory): it would hold the RAM until the machine restarts.
STALE_AFTER = 600.0
PREFIX = "mailflow-"

_swept: set[str] = set()


def scratch_folder() -> str | None:
    """The folder to make a lab's own folder in, or None for tempfile's choice."""
    chosen = os.environ.get("MAILFLOW_LAB_TMPDIR")
    if chosen:
        return chosen
    if os.environ.get("TMPDIR"):
        return None
    try:
        stat = os.statvfs(IN_MEMORY)
    except OSError:
        return None
    if stat.f_bavail * stat.f_frsize < MIN_FREE or not os.access(IN_MEMORY, os.W_OK | os.X_OK):
        return None
    return IN_MEMORY


def sweep_once(folder: str) -> None:
    """Remove the folders of killed labs in `folder`, once per process (the first lab made there)."""
    if folder in _swept:
        return
    _swept.add(folder)
    now = time.time()
    for path in Path(folder).glob(f"{PREFIX}*"):
        try:
            if not path.is_dir() or now - path.stat().st_mtime < STALE_AFTER or _held(path / LOCK_NAME):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)


def _held(lock: Path) -> bool:
    """Whether a running lab holds this lock file (harness/lab/lock.py: an flock the kernel drops when
    the process ends, however it ends)."""
    try:
        handle = lock.open(encoding="utf-8")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
