"""The conformance catalogue (harness/corpus/catalogue.yaml): the IDs traces, reports and coverage
speak of, and for each the trace assertions that show it (`shown_by`, read by harness/corpus/claims.py;
its vocabulary is harness/schemas/catalogue.schema.json)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeAlias

from harness import yamlsource

CATALOGUE = Path(__file__).with_name("catalogue.yaml")

Requirement: TypeAlias = Mapping[str, Any]
"""One assertion a trace must make, e.g. `{ldap: query}` or `{event: {id: 1027, first: true}}`."""
Form: TypeAlias = tuple[Requirement, ...]
"""Requirements that must all hold; empty: none declared."""


@dataclass(frozen=True)
class ShownBy:
    white_box: Form
    black_box: Form = ()
    boundary: Form = ()
    """What shows the step does NOT happen (the catalogue's default_boundary unless the ID has its own)."""


@dataclass(frozen=True)
class Entry:
    id: str
    flow: str
    title: str
    evidence: str
    shown_by: ShownBy = ShownBy(())


@cache
def catalogue() -> dict[str, Entry]:
    return load(CATALOGUE)


def load(path: Path) -> dict[str, Entry]:
    """The catalogue in `path`; a malformed one raises SourceError naming its file, line and field."""
    document = yamlsource.load(path)
    yamlsource.validate(document, "catalogue.schema.json")
    raw: dict[str, Any] = document.data
    default = tuple(raw.get("default_boundary") or ())
    entries: dict[str, Entry] = {}
    for key, value in raw["ids"].items():
        shown = value["shown_by"]
        forms = ShownBy(
            tuple(shown["white_box"]),
            tuple(shown.get("black_box") or ()),
            tuple(shown.get("boundary") or default),
        )
        entries[key] = Entry(key, value["flow"], value["title"], value["evidence"], forms)
    return entries


def flow_of(ids: list[str]) -> str:
    """The Allure epic of a trace: the flow of its first non-core ID."""
    entries = catalogue()
    flows = [entries[i].flow for i in ids if i in entries]
    return next((f for f in flows if f != "Core"), flows[0] if flows else "Core")


def markdown() -> str:
    """The catalogue as docs/catalogue.md shows it: one table per flow, in catalogue order."""
    lines = [
        "# Conformance catalogue",
        "",
        "Generated from `harness/corpus/catalogue.yaml` by `mailflow catalogue`; edit the YAML, not this "
        "file.",
        "Traces name these IDs in `spec:` (and `boundary:`), reports group by them, and `mailflow coverage`",
        "counts the traces that show each one.",
    ]
    flows: dict[str, list[Entry]] = {}
    for entry in catalogue().values():
        flows.setdefault(entry.flow, []).append(entry)
    for flow, entries in flows.items():
        lines += ["", f"## {flow}", "", "| ID | step | evidence |", "|---|---|---|"]
        lines += [f"| {e.id} | {_cell(e.title)} | {_cell(e.evidence)} |" for e in entries]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
