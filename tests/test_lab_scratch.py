"""Where a lab makes its own folder, and that it is gone once the lab has stopped."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.lab import config as lab_config
from harness.lab import runtime, scratch
from harness.lab.lock import LabLock
from harness.lab.placement import relocation
from harness.lab.runtime import Lab
from harness.lab.scratch import scratch_folder

CONTOSO = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"


def removed_so_far() -> None:
    """Wait for the folder removals queued until now: the remover is one thread, first in first out."""
    runtime._REMOVER.submit(lambda: None).result(timeout=30)


def test_a_lab_makes_its_folder_where_the_user_asked_and_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILFLOW_LAB_TMPDIR", str(tmp_path))
    base, offset = relocation()
    with Lab(lab_config.load(CONTOSO, base=base, port_offset=offset)) as lab:
        assert lab.workdir.parent == tmp_path
        assert (lab.workdir / "EX1").is_dir()
    removed_so_far()
    assert list(tmp_path.iterdir()) == []


def test_tmpdir_keeps_its_meaning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILFLOW_LAB_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert scratch_folder() is None


def test_the_folders_of_killed_labs_are_swept_and_running_ones_kept(tmp_path: Path) -> None:
    old = time.time() - scratch.STALE_AFTER - 60

    def folder(name: str, age: float | None) -> Path:
        path = tmp_path / f"{scratch.PREFIX}{name}"
        (path / "EX1").mkdir(parents=True)
        if age is not None:
            os.utime(path, (age, age))
        return path

    killed = folder("contoso-killed", old)
    never_started = folder("contoso-unstarted", old)
    young = folder("contoso-young", None)
    running = folder("contoso-running", None)
    lock = LabLock(running)
    lock.acquire("contoso")
    os.utime(running, (old, old))
    other = tmp_path / "someone-elses"
    other.mkdir()
    os.utime(other, (old, old))
    try:
        scratch.sweep_once(str(tmp_path))
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([young.name, running.name, other.name])
        assert not killed.exists() and not never_started.exists()
    finally:
        lock.release()
