"""Conformance coverage: for each catalogue ID, the traces that claim it and show it, those that show
its boundary, and how many of them passed on each target of a run.

A claim counts as shown only when the trace asserts the step's evidence, as the corpus's evidence rule
(`harness/corpus/claims.py`) decides; this module only counts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.corpus.catalogue import catalogue
from harness.corpus.claims import claims
from harness.corpus.trace import Trace

# Whether a trace asserts the evidence of one of its claims (spec or boundary).
Shown = Callable[[Trace, str], bool]


def by_evidence() -> Shown:
    """The corpus's evidence rule (`harness/corpus/claims.py`), each trace judged once."""
    judged: dict[Path, dict[str, bool]] = {}

    def shown(trace: Trace, spec_id: str) -> bool:
        if trace.path not in judged:
            judged[trace.path] = {claim.id: claim.shown for claim in claims(trace)}
        return judged[trace.path].get(spec_id, False)

    return shown


@dataclass(frozen=True)
class Claim:
    trace: str
    boundary: bool
    shown: bool


@dataclass
class IdCoverage:
    id: str
    flow: str
    claims: list[Claim] = field(default_factory=list)
    # target -> trace id -> outcome ("passed", "failed", ...), from a run's results
    outcomes: dict[str, dict[str, str]] = field(default_factory=dict)

    def showing(self) -> list[str]:
        return [c.trace for c in self.claims if c.shown and not c.boundary]

    def bounding(self) -> list[str]:
        return [c.trace for c in self.claims if c.shown and c.boundary]

    def passed(self, target: str, traces: Sequence[str]) -> int:
        seen = self.outcomes.get(target, {})
        return sum(1 for trace in traces if seen.get(trace) == "passed")

    def as_json(self, targets: Sequence[str]) -> dict[str, Any]:
        return {
            "id": self.id,
            "flow": self.flow,
            "claimed_by": [c.trace for c in self.claims],
            "showing": self.showing(),
            "bounding": self.bounding(),
            "unshown": [c.trace for c in self.claims if not c.shown],
            "targets": {
                target: {
                    "showing_passed": self.passed(target, self.showing()),
                    "bounding_passed": self.passed(target, self.bounding()),
                    "outcomes": dict(sorted(self.outcomes.get(target, {}).items())),
                }
                for target in targets
            },
        }


def coverage(
    traces: Iterable[Trace], results: Sequence[Mapping[str, Any]], shown: Shown | None = None
) -> tuple[list[IdCoverage], list[str]]:
    """Every catalogue ID's coverage, in catalogue order, and the targets of the results, in order.
    A claim counts as shown when `shown` says so: by default, when the trace asserts its evidence."""
    shown = shown or by_evidence()
    by_id = {entry.id: IdCoverage(entry.id, entry.flow) for entry in catalogue().values()}
    for trace in traces:
        for spec_id in trace.spec:
            by_id[spec_id].claims.append(Claim(trace.id, spec_id in trace.boundary, shown(trace, spec_id)))
    targets: list[str] = []
    outcomes: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        target = str(result["target"])
        if target not in targets:
            targets.append(target)
        for spec_id in result["spec"]:
            outcomes[spec_id][target].append((str(result["trace"]), str(result["outcome"])))
    for spec_id, per_target in outcomes.items():
        if spec_id in by_id:
            by_id[spec_id].outcomes = {target: dict(pairs) for target, pairs in per_target.items()}
    return list(by_id.values()), targets


def short_of(
    ids: Iterable[IdCoverage], target: str, minimum: int, flows: Sequence[str] = ()
) -> list[tuple[IdCoverage, int]]:
    """The IDs (of `flows`, or all) shown by fewer than `minimum` traces that passed on `target`, each
    with how many did."""
    wanted = {flow.lower() for flow in flows}
    short = []
    for entry in ids:
        if wanted and entry.flow.lower() not in wanted:
            continue
        count = entry.passed(target, entry.showing())
        if count < minimum:
            short.append((entry, count))
    return short
