"""Conformance coverage: for each catalogue ID, the traces that claim it and show it, those that show
its boundary, and how many of them passed on each target of a run; and the gates on those counts.

A claim counts as shown only when the trace asserts the step's evidence, as the corpus's evidence rule
(`harness/corpus/claims.py`) decides. On a black-box target (`black_box`) the rule reads only what such a
target shows; this module only counts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import targets
from harness.corpus.catalogue import catalogue
from harness.corpus.claims import claims
from harness.corpus.trace import Trace
from harness.targets.daemon import StandInError
from harness.yamlsource import SourceError

# Whether a trace asserts the evidence of one of its claims (spec or boundary), as a white box (False)
# or a black box (True) shows it.
Shown = Callable[[Trace, str, bool], bool]


def black_box(target: str) -> bool:
    """Whether a claim counts on `target` only by what a black box shows. Every target but the reference
    MTA is a real MTA standing in for one server: it keeps no tracking log, LDAP log or queue of ours, so
    there a claim is shown only by its black-box form (`harness/corpus/claims.py`). A target name the
    harness does not know is counted the stricter way."""
    try:
        return targets.get(target).stands_in_for is not None
    except (ValueError, SourceError, StandInError):
        # An unknown name, a profile file gone or changed, an outside MTA that no longer answers.
        return True


def by_evidence() -> Shown:
    """The corpus's evidence rule (`harness/corpus/claims.py`), each trace judged once each way."""
    judged: dict[tuple[Path, bool], dict[str, bool]] = {}

    def shown(trace: Trace, spec_id: str, as_black_box: bool) -> bool:
        key = (trace.path, as_black_box)
        if key not in judged:
            judged[key] = {claim.id: claim.shown for claim in claims(trace, black_box=as_black_box)}
        return judged[key].get(spec_id, False)

    return shown


@dataclass(frozen=True)
class Claim:
    trace: str
    boundary: bool
    shown: bool
    shown_black_box: bool  # shown by what a black box shows


@dataclass
class IdCoverage:
    id: str
    flow: str
    seed: bool  # a step the seed documents describe (not one of the catalogue's extensions)
    observable: bool  # its catalogue entry declares a black-box form
    claims: list[Claim] = field(default_factory=list)
    # target -> trace id -> outcome ("passed", "failed", ...), from a run's results
    outcomes: dict[str, dict[str, str]] = field(default_factory=dict)

    def showing(self, as_black_box: bool = False) -> list[str]:
        return [c.trace for c in self.claims if self._shown(c, as_black_box) and not c.boundary]

    def bounding(self, as_black_box: bool = False) -> list[str]:
        return [c.trace for c in self.claims if self._shown(c, as_black_box) and c.boundary]

    @staticmethod
    def _shown(claim: Claim, as_black_box: bool) -> bool:
        return claim.shown_black_box if as_black_box else claim.shown

    def passed(self, target: str, traces: Sequence[str]) -> int:
        seen = self.outcomes.get(target, {})
        return sum(1 for trace in traces if seen.get(trace) == "passed")

    def showing_passed(self, target: str) -> int:
        """How many traces that show the ID, as `target` is judged, passed there."""
        return self.passed(target, self.showing(black_box(target)))

    def bounding_passed(self, target: str) -> int:
        return self.passed(target, self.bounding(black_box(target)))

    def as_json(self, targets_run: Sequence[str]) -> dict[str, Any]:
        return {
            "id": self.id,
            "flow": self.flow,
            "seed": self.seed,
            "black_box": self.observable,
            "claimed_by": [c.trace for c in self.claims],
            "showing": self.showing(),
            "bounding": self.bounding(),
            "showing_black_box": self.showing(True),
            "bounding_black_box": self.bounding(True),
            "unshown": [c.trace for c in self.claims if not c.shown],
            "targets": {
                target: {
                    "black_box": black_box(target),
                    "showing_passed": self.showing_passed(target),
                    "bounding_passed": self.bounding_passed(target),
                    "outcomes": dict(sorted(self.outcomes.get(target, {}).items())),
                }
                for target in targets_run
            },
        }


def coverage(
    traces: Iterable[Trace], results: Sequence[Mapping[str, Any]], shown: Shown | None = None
) -> tuple[list[IdCoverage], list[str]]:
    """Every catalogue ID's coverage, in catalogue order, and the targets of the results, in order.
    A claim counts as shown when `shown` says so: by default, when the trace asserts its evidence."""
    shown = shown or by_evidence()
    by_id = {
        entry.id: IdCoverage(entry.id, entry.flow, entry.seed, bool(entry.shown_by.black_box))
        for entry in catalogue().values()
    }
    for trace in traces:
        for spec_id in trace.spec:
            by_id[spec_id].claims.append(
                Claim(
                    trace.id,
                    spec_id in trace.boundary,
                    shown(trace, spec_id, False),
                    shown(trace, spec_id, True),
                )
            )
    targets_run: list[str] = []
    outcomes: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        target = str(result["target"])
        if target not in targets_run:
            targets_run.append(target)
        for spec_id in result["spec"]:
            outcomes[spec_id][target].append((str(result["trace"]), str(result["outcome"])))
    for spec_id, per_target in outcomes.items():
        if spec_id in by_id:
            by_id[spec_id].outcomes = {target: dict(pairs) for target, pairs in per_target.items()}
    return list(by_id.values()), targets_run


def select(
    ids: Iterable[IdCoverage], flows: Sequence[str] = (), observable: bool = False, seed: bool = False
) -> list[IdCoverage]:
    """The IDs of `flows` (all if none); with `observable`, only those a black box can show; with
    `seed`, only the steps the seed documents describe."""
    wanted = {flow.lower() for flow in flows}
    return [
        entry
        for entry in ids
        if (not wanted or entry.flow.lower() in wanted)
        and (entry.observable or not observable)
        and (entry.seed or not seed)
    ]


def short_of(
    ids: Iterable[IdCoverage], target: str, minimum: int, boundary: bool = False
) -> list[tuple[IdCoverage, int]]:
    """The IDs shown (with `boundary`: bounded) by fewer than `minimum` traces that passed on `target`,
    each with how many did."""
    short = []
    for entry in ids:
        count = entry.bounding_passed(target) if boundary else entry.showing_passed(target)
        if count < minimum:
            short.append((entry, count))
    return short
