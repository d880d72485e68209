"""Splitting a run's traces across N machines (`mailflow run --shard K/N`, pytest `--mailflow-shard K/N`).

Every shard computes the same split on its own, with no coordinator: the traces are ordered by trace id
(then by their pytest node id, for two files that share an id), never by the order the files were given
or found, and packed greedily, longest first, each onto the shard with the least work so far (ties to the
shard with fewer traces, then the lower number). The work of a trace is its duration in an earlier run's
`last-run.json`, the median of that run's durations when it is not there, or 1 each when no durations are
known (a split by count: shard sizes differ by at most one). Greedy packing keeps the longest shard within
one trace's duration of the ideal (total / N): the trace that made it longest was placed on the shard
that had the least work, which was at most the ideal. docs/decisions.md says why.

A shard records what it ran (`Split`, written beside its results as `<results>.shard.json`), so that a
merge of the shards' results can tell a shard that is missing from one that had nothing to run.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORM = "K/N, the shard's number and the number of shards, 1 <= K <= N (e.g. 2/3)"


@dataclass(frozen=True)
class Shard:
    index: int  # from 1
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse(text: str) -> Shard:
    """`K/N` as a shard; ValueError saying what is wrong and the valid form."""
    found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if found is None:
        raise ValueError(f"{text!r} is not K/N: give {FORM}")
    index, count = int(found[1]), int(found[2])
    if count < 1:
        raise ValueError(f"{text}: the number of shards N must be at least 1: give {FORM}")
    if not 1 <= index <= count:
        raise ValueError(f"{text}: with {count} shard(s), K goes from 1 to {count}: give {FORM}")
    return Shard(index, count)


def read_durations(path: Path) -> dict[str, float]:
    """Each trace's duration in seconds from a run's JSON results (`last-run.json`, a list of trace
    outcomes); a trace run on several targets counts the sum. ValueError naming the file and the form."""
    wanted = "give the last-run.json of an earlier mailflow run"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: {wanted}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc}): {wanted}") from None
    try:
        loaded: Any = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): {wanted}") from None
    if not isinstance(loaded, list):
        raise ValueError(f"{path}: not a list of trace outcomes: {wanted}")
    durations: dict[str, float] = {}
    for number, outcome in enumerate(loaded, 1):
        trace = outcome.get("trace") if isinstance(outcome, dict) else None
        duration = outcome.get("duration") if isinstance(outcome, dict) else None
        if (
            not isinstance(trace, str)
            or isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not duration >= 0  # NaN too
        ):
            raise ValueError(f"{path}: outcome {number} has no trace and duration (seconds, >= 0): {wanted}")
        durations[trace] = durations.get(trace, 0.0) + float(duration)
    return durations


def weights(traces: Mapping[str, str], durations: Mapping[str, float] | None) -> dict[str, float]:
    """Each trace's work, by its unique name: its duration, the median duration when unknown, or 1 each
    without durations."""
    if not durations:
        return {name: 1.0 for name in traces}
    median = statistics.median(durations.values())
    return {name: durations.get(trace, median) for name, trace in traces.items()}


def split(
    traces: Mapping[str, str], count: int, durations: Mapping[str, float] | None = None
) -> list[list[str]]:
    """The traces (unique name, e.g. pytest node id → trace id) in `count` parts of about equal work, each
    part sorted by trace id. The same traces give the same parts whatever their order."""
    work = weights(traces, durations)
    parts: list[list[str]] = [[] for _ in range(count)]
    loads = [0.0] * count
    for name in sorted(traces, key=lambda n: (-work[n], traces[n], n)):
        # Least work first; traces that weigh nothing (an invalid trace ran in no time) by count.
        target = min(range(count), key=lambda k: (loads[k], len(parts[k]), k))
        parts[target].append(name)
        loads[target] += work[name]
    return [sorted(part, key=lambda n: (traces[n], n)) for part in parts]


@dataclass(frozen=True)
class Split:
    """What one shard ran: its part of the traces selected (after -k and -m), and what balanced it."""

    shard: int
    shards: int
    selected: int  # traces selected before the split, all shards together
    traces: list[str] = field(default_factory=list)  # the trace ids this shard ran
    balanced_by: str = "count"  # or "durations"
    unknown: int = 0  # traces of this shard the durations did not know (given the median)
    median: float | None = None
    # Which durations balanced it: shards balanced by different ones may each run a trace, or none.
    durations_digest: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Split:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})

    def line(self, durations_source: str | None = None) -> str:
        """The summary's line, e.g. `shard 2/3: ran 3 of the 9 traces selected (balanced by count)`."""
        name = f"shard {self.shard}/{self.shards}"
        if not self.selected:
            return f"{name}: no trace was selected, so there was nothing to split"
        if not self.traces:
            return (
                f"{name}: nothing to run: the {self.selected} trace(s) selected all went to other shards "
                f"(more shards than traces); not a failure"
            )
        basis = "count"
        if self.balanced_by == "durations":
            basis = f"the durations in {durations_source}" if durations_source else "durations"
            if self.unknown and self.median is not None:
                basis += f"; {self.unknown} trace(s) not in them counted at the median, {self.median:.2f}s"
        return (
            f"{name}: ran {len(self.traces)} of the {self.selected} trace(s) selected (balanced by {basis})"
        )


def split_of(
    traces: Mapping[str, str], shard: Shard, durations: Mapping[str, float] | None = None
) -> tuple[list[str], Split]:
    """This shard's part (unique names) and its record."""
    mine = split(traces, shard.count, durations)[shard.index - 1]
    unknown = sum(1 for name in mine if durations and traces[name] not in durations)
    record = Split(
        shard=shard.index,
        shards=shard.count,
        selected=len(traces),
        traces=[traces[name] for name in mine],
        balanced_by="durations" if durations else "count",
        unknown=unknown,
        median=statistics.median(durations.values()) if durations else None,
        durations_digest=digest(durations) if durations else None,
    )
    return mine, record


def digest(durations: Mapping[str, float]) -> str:
    """A short fingerprint of the durations: equal on every machine given the same ones."""
    text = json.dumps(sorted(durations.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path(results: Path) -> Path:
    """Where a shard's record goes: beside its results (`last-run.json` → `last-run.shard.json`)."""
    return results.with_name(f"{results.stem}.shard.json")
