"""Writing trace files: what the writer produces loads back as the same trace, reads like the
hand-written corpus, and a document the loader refuses is never left on disk."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from harness.corpus import writer
from harness.corpus.trace import load
from harness.yamlsource import SourceError

ROOT = Path(__file__).resolve().parents[1]


CORPUS = sorted(
    path.relative_to(ROOT / "traces").with_suffix("").as_posix() for path in ROOT.glob("traces/**/*.yaml")
)


def without_lines(item: object) -> object:
    """A trace item as it would be anywhere in a file: without the line numbers it was found at."""
    fields = {f.name for f in dataclasses.fields(item)}  # type: ignore[arg-type]
    changes = {name: value for name, value in (("step_lines", ()), ("line", 0)) if name in fields}
    return dataclasses.replace(item, **changes)  # type: ignore[type-var]


@pytest.mark.parametrize("name", CORPUS)
def test_every_trace_of_the_corpus_written_again_loads_back_the_same(tmp_path: Path, name: str) -> None:
    source = ROOT / "traces" / f"{name}.yaml"
    document = yaml.safe_load(source.read_text(encoding="utf-8"))
    target = tmp_path / "traces" / f"{name}.yaml"
    target.parent.mkdir(parents=True)
    for sibling in source.parent.iterdir():  # message files the trace names beside it
        if sibling.is_file() and sibling.suffix != ".yaml":
            shutil.copy(sibling, target.parent)
    written = writer.write(document, target)
    original = load(source)
    assert [without_lines(s) for s in written.sessions] == [without_lines(s) for s in original.sessions]
    assert written.outcome == original.outcome
    assert (written.spec, written.masks, written.requires) == (
        original.spec,
        original.masks,
        original.requires,
    )


def test_steps_are_one_per_line_in_the_house_style() -> None:
    document = {
        "id": "recorded/example",
        "title": "An example",
        "spec": ["IN-3"],
        "lab": "contoso",
        "sessions": [
            {
                "client": "internet",
                "connect": {"server": "EX1"},
                "script": [
                    {"expect": 220},
                    {"send": "MAIL FROM:<ann@fabrikam.com>"},
                    {"expect": {"code": 250, "text": "2.1.0 ann@fabrikam.com....Sender OK"}},
                ],
            }
        ],
        "outcome": {"nothing_delivered": True},
    }
    assert writer.dump(document).splitlines() == [
        "id: recorded/example",
        "title: An example",
        "spec: [IN-3]",
        "lab: contoso",
        "sessions:",
        "  - client: internet",
        "    connect: {server: EX1}",
        "    script:",
        "      - expect: 220",
        "      - send: MAIL FROM:<ann@fabrikam.com>",
        "      - expect: {code: 250, text: 2.1.0 ann@fabrikam.com....Sender OK}",
        "outcome:",
        "  nothing_delivered: true",
    ]


def test_a_document_the_loader_refuses_is_not_kept(tmp_path: Path) -> None:
    broken = {"id": "recorded/broken", "title": "x", "spec": ["NO-SUCH-ID"], "lab": "contoso", "sessions": []}
    with pytest.raises(SourceError):
        writer.write(broken, tmp_path / "broken.yaml")
    assert list(tmp_path.iterdir()) == []
