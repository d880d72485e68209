"""Where a lab makes its own folder, and that it is gone once the lab has stopped."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.lab import config as lab_config
from harness.lab import runtime
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
