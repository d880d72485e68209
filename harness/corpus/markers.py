"""The pytest markers and keywords of a trace, from the conformance catalogue (harness/corpus/catalogue.yaml).

A trace carries one marker for each flow its catalogue IDs belong to (`inbound`, `relay`, ...: the
flow's name in lower case) and one for each of its IDs (`RELAY_1`, `IN_6a`: a marker name is a Python
name, so `-` becomes `_`), so that `pytest traces -m relay` and `pytest traces -m "RELAY_1 or IN_3"`
select by the catalogue. Every one is registered, so `--strict-markers` accepts them. The IDs themselves,
as the trace spells them, are keywords: `pytest traces -k RELAY-7`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest

from harness.corpus.catalogue import catalogue


def id_marker(spec_id: str) -> str:
    return re.sub(r"\W", "_", spec_id)


def flow_marker(flow: str) -> str:
    return re.sub(r"\W", "_", flow.lower())


def of(spec: Iterable[str]) -> list[str]:
    """The markers of a trace with these catalogue IDs: its flows, then its IDs, in catalogue order."""
    entries = catalogue()
    known = [entries[spec_id] for spec_id in spec if spec_id in entries]
    flows = dict.fromkeys(flow_marker(entry.flow) for entry in known)
    return [*flows, *dict.fromkeys(id_marker(entry.id) for entry in known)]


def register(config: pytest.Config) -> None:
    flows: dict[str, list[str]] = {}
    for entry in catalogue().values():
        flows.setdefault(entry.flow, []).append(entry.id)
        described = f"{id_marker(entry.id)}: traces checking {entry.id}: {entry.title}"
        config.addinivalue_line("markers", described)
    for flow, ids in flows.items():
        config.addinivalue_line(
            "markers", f"{flow_marker(flow)}: traces checking an ID of the {flow} flow ({', '.join(ids)})"
        )
