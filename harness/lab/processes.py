"""Processes as the kernel shows them in /proc: who a pid is (its start tick, so that a recycled pid is
never taken for the process it replaced), which processes run in a network namespace or in a process
group, and stopping a set of them: TERM, then KILL after a deadline; and what a daemon the lab starts
needs of the file system (the pid it writes, search permission on the folders above its own).

Read from /proc by hand rather than through psutil: psutil's create_time is wall-clock seconds (the boot
time it adds moves when the clock is stepped), so a start time written by one process and read again by
another could only be compared with a tolerance, while the kernel's start tick since boot is exact; and
psutil knows nothing of network namespaces.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    """One process, for as long as it lives: a pid and the tick after boot at which it started."""

    pid: int
    started: int


@dataclass(frozen=True)
class _Stat:
    process: Process
    parent: int
    group: int
    zombie: bool


def _stat(pid: int) -> _Stat | None:
    try:
        text = (PROC / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
        # The command name (field 2) may hold spaces and parentheses: the fields after it start after
        # the last ")". Field 3 is the state, 4 the parent, 5 the process group, 22 the start time in
        # clock ticks after boot.
        fields = text[text.rindex(")") + 2 :].split()
        return _Stat(
            Process(pid, int(fields[19])),
            parent=int(fields[1]),
            group=int(fields[2]),
            zombie=fields[0] in ("Z", "X"),
        )
    except (OSError, ValueError, IndexError):  # gone, or gone while being read
        return None


def identify(pid: int) -> Process | None:
    """The process with this pid now, or None if there is none (a zombie is none: it has ended)."""
    found = _stat(pid)
    return found.process if found is not None and not found.zombie else None


def running(process: Process) -> bool:
    return identify(process.pid) == process


def _pids() -> list[int]:
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def _namespace_key(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return info.st_dev, info.st_ino


def in_namespaces(namespaces: Iterable[Path]) -> set[Process]:
    """The processes whose network namespace is one of these (files bind-mounted by `ip netns add`):
    what `ip netns pids` finds, with each process's start tick."""
    keys = {key for path in namespaces if (key := _namespace_key(path)) is not None}
    if not keys:
        return set()
    found = set()
    for pid in _pids():
        if _namespace_key(PROC / str(pid) / "ns" / "net") in keys and (process := identify(pid)):
            found.add(process)
    return found


def with_groups(leaders: Iterable[Process]) -> set[Process]:
    """The leaders that still run, and every process in the process group each of them leads (a
    daemon's children: Postfix's smtpd and qmgr, Exim's deliveries). A group is only looked for while
    its leader runs: while it does, its number cannot belong to any other group."""
    alive = {leader for leader in leaders if running(leader)}
    groups = {leader.pid for leader in alive}
    if not groups:
        return alive
    for pid in _pids():
        found = _stat(pid)
        if found is not None and not found.zombie and found.group in groups:
            alive.add(found.process)
    return alive


def children_in_group(parent: int, group: int) -> set[Process]:
    """The running children of `parent` that are in process group `group`."""
    found = set()
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None and not stat.zombie and stat.parent == parent and stat.group == group:
            found.add(stat.process)
    return found


def send(process: Process, number: int) -> bool:
    """Signal `process` if it is still the one that started at its tick; whether it was signalled.

    Through a pidfd: once the pidfd is open and the start tick checked, the signal cannot reach another
    process even if this one ends and its pid is reused in between."""
    try:
        handle = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfds here (a kernel before 5.3, a sandbox): check, then signal by pid
        if not running(process):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, number)
            return True
        return False
    try:
        if not running(process):
            return False
        signal.pidfd_send_signal(handle, number)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(handle)


def stop(processes: Iterable[Process], grace: float = 5.0) -> set[Process]:
    """TERM each process, wait up to `grace` seconds for them all to end, then KILL what is left (and
    wait as long again); returns the processes that had to be killed."""
    pending = {process for process in processes if process.pid != os.getpid()}
    for process in pending:
        send(process, signal.SIGTERM)
    pending = _wait(pending, grace)
    for process in pending:
        send(process, signal.SIGKILL)
    _wait(pending, grace)
    return pending


def _wait(processes: set[Process], timeout: float) -> set[Process]:
    """The processes still running after `timeout` seconds (fewer if they all end sooner)."""
    deadline = time.monotonic() + timeout
    pending = {process for process in processes if running(process)}
    while pending and time.monotonic() < deadline:
        # Polled: a process that is not our child cannot be waited for. A zombie counts as ended.
        time.sleep(0.02)
        pending = {process for process in pending if running(process)}
    return pending


def pid_file(path: Path, timeout: float = 5.0) -> int | None:
    """The pid a daemon wrote to `path`; None if it wrote none within `timeout` seconds. A daemon that
    forks may write it only after the command that started it has returned."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(path.read_text(encoding="ascii").strip())
        except (FileNotFoundError, ValueError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)


def open_to_daemons(root: Path) -> None:
    """Let an MTA's unprivileged daemons reach their folders under `root` (search permission on the
    folders above it that this process owns, such as a pytest tmp_path)."""
    for directory in (root, *root.parents):
        if directory == Path("/") or directory.stat().st_uid != os.getuid():
            break
        directory.chmod(directory.stat().st_mode | 0o111)
