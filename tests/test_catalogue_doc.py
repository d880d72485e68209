"""docs/catalogue.md is the catalogue as `mailflow catalogue` renders it: it must never drift."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from harness.cli.app import main
from harness.corpus.catalogue import catalogue

DOC = Path(__file__).resolve().parents[1] / "docs" / "catalogue.md"


def test_docs_catalogue_is_up_to_date() -> None:
    result = CliRunner().invoke(main, ["catalogue"])
    assert result.exit_code == 0, result.output
    assert DOC.read_text(encoding="utf-8") == result.output, (
        "run: mailflow catalogue --write docs/catalogue.md"
    )


def test_every_id_has_a_row() -> None:
    text = DOC.read_text(encoding="utf-8")
    for entry in catalogue().values():
        assert f"| {entry.id} | " in text


def test_write_option_writes_the_same_text(tmp_path: Path) -> None:
    destination = tmp_path / "catalogue.md"
    result = CliRunner().invoke(main, ["catalogue", "--write", str(destination)])
    assert result.exit_code == 0, result.output
    assert destination.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8")
