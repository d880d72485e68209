"""The conformance catalogue (harness/corpus/catalogue.yaml): the IDs traces, reports and coverage
speak of."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml


@dataclass(frozen=True)
class Entry:
    id: str
    flow: str
    title: str
    evidence: str


@cache
def catalogue() -> dict[str, Entry]:
    text = resources.files("harness.corpus").joinpath("catalogue.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)["ids"]
    return {key: Entry(key, value["flow"], value["title"], value["evidence"]) for key, value in raw.items()}


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
