"""Counting what has landed in a lab's mailboxes and Internet sinks, by their files: the benchmark reads
the lab's folder while the lab runs in another process."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.runner import BenchmarkError
from harness.lab import control
from reference_mta.store import mailbox_name


def _files(folder: Path) -> int:
    try:
        return len(os.listdir(folder))
    except FileNotFoundError:
        return 0


def maildir_counter(workdir: Path, server: str, address: str, postfix: bool = False) -> Callable[[], int]:
    """Counts the messages in `address`'s Maildir on `server`: the reference MTA's store
    (SERVER/mdbdata/STORE/ADDRESS) or Postfix's virtual_mailbox_base (SERVER-postfix/mail/ADDRESS)."""
    pattern = (
        f"{server}-postfix/mail/{address.lower()}"
        if postfix
        else f"{server}/mdbdata/*/{mailbox_name(address)}"
    )
    found: list[Path] = []

    def count() -> int:
        if not found:
            found.extend(workdir.glob(pattern))
        return sum(_files(mailbox / "new") + _files(mailbox / "cur") for mailbox in found)

    return count


def sink_counter(workdir: Path, host: str) -> Callable[[], int]:
    """Counts the messages an Internet sink host of the lab has received (one .eml per transaction)."""
    folder = workdir / "sinks" / host

    def count() -> int:
        try:
            return sum(1 for name in os.listdir(folder) if name.endswith(".eml"))
        except FileNotFoundError:
            return 0

    return count


def queued(workdir: Path) -> int:
    """How many messages the lab's queues hold (reference servers and a stand-in's), asked of the lab's
    control socket as `mailflow queues` asks it."""
    try:
        rows = control.request(workdir, {"op": "queues"})
    except control.ControlError as exc:
        raise BenchmarkError(f"the lab's queues could not be read: {exc}") from None
    return sum(int(row["count"]) for row in rows)


def wait_until_drained(workdir: Path, sink: Callable[[], int], expected: int, timeout: float = 600.0) -> None:
    """Until the sink holds `expected` messages and every queue is empty: the next measurement starts on
    an idle lab."""
    deadline = time.monotonic() + timeout
    while sink() < expected or queued(workdir) > 0:
        if time.monotonic() > deadline:
            raise BenchmarkError(f"the lab did not deliver everything to its sink within {timeout:g} s")
        time.sleep(0.2)
