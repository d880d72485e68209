"""Group commit of the queue folder: callers who ask while a folder fsync runs share the next one, and
none returns before an fsync that began after its call has ended. The fsync is the real one, watched
through the module's own function; under a second."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from reference_mta import group_sync
from reference_mta.group_sync import FolderSync

CALLERS = 8


def test_callers_during_a_folder_fsync_share_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = group_sync.sync_folder
    began: list[int] = []  # the ordinal of each fsync, as it begins
    ended: list[int] = []
    first_may_end = threading.Event()

    def watched(path: Path) -> None:
        began.append(len(began) + 1)
        if len(began) == 1:
            first_may_end.wait(10)
        real(path)
        ended.append(began[-1])

    monkeypatch.setattr(group_sync, "sync_folder", watched)
    folder = FolderSync(tmp_path)
    covered: dict[int, tuple[int, list[int]]] = {}

    def caller(number: int) -> None:
        before = len(began)
        folder.sync()
        covered[number] = (before, list(ended))

    first = threading.Thread(target=caller, args=(0,))
    first.start()
    others = [threading.Thread(target=caller, args=(n,)) for n in range(1, CALLERS)]
    while not began:  # the first fsync is running
        time.sleep(0.001)
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 10
    # Every other caller waits for the running fsync (the condition's own list of waiting threads).
    while len(folder._changed._waiters) < CALLERS - 1 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.001)
    first_may_end.set()
    for thread in [first, *others]:
        thread.join(10)
    assert began == [1, 2]  # eight callers, two folder fsyncs
    for number, (before, done) in covered.items():
        assert any(ordinal > before for ordinal in done), f"caller {number} returned uncovered"


def test_an_fsync_that_fails_is_raised_to_its_caller_and_the_next_caller_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = group_sync.sync_folder
    calls: list[Path] = []

    def failing_once(path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(group_sync, "sync_folder", failing_once)
    folder = FolderSync(tmp_path)
    with pytest.raises(OSError, match="Input/output error"):
        folder.sync()
    folder.sync()
    assert calls == [tmp_path, tmp_path]
