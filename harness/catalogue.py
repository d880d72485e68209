"""The conformance catalogue (harness/catalogue.yaml): the IDs traces, reports and coverage speak of."""

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
    text = resources.files("harness").joinpath("catalogue.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)["ids"]
    return {key: Entry(key, value["flow"], value["title"], value["evidence"]) for key, value in raw.items()}


def flow_of(ids: list[str]) -> str:
    """The Allure epic of a trace: the flow of its first non-core ID."""
    entries = catalogue()
    flows = [entries[i].flow for i in ids if i in entries]
    return next((f for f in flows if f != "Core"), flows[0] if flows else "Core")
