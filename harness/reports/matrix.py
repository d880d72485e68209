"""The conformance matrix: catalogue IDs by targets, from the outcomes of runs of the same corpus on
several targets.

A trace's result on a target is pass, fail, skipped, or *deviation*: it failed, but every failure is a
known deviation of that target, listed with its reason in `harness/targets/deviations/<target>.yaml`
(a different but conforming reply code, say). A cell of the matrix sums the traces that show the ID:
fail if any failed, else deviation if any deviated, else pass if any passed, else skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.corpus.catalogue import catalogue, flow_of
from harness.judge.deviations import Deviation, deviations, explain
from harness.judge.records import Failure, Kind, Near, Waived, sentence

ORDER = ("fail", "deviation", "pass", "skipped")


@dataclass(frozen=True)
class Verdict:
    trace: str
    status: str
    reasons: tuple[str, ...] = ()
    # For a deviation: each failure line with the reason that explains it.
    explained: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    # The deviation entries (file:line) that explained something, waived in the replay or here.
    entries: frozenset[str] = field(default=frozenset(), compare=False)


@dataclass
class Cell:
    status: str = "none"
    counts: Counter[str] = field(default_factory=Counter)
    reasons: set[str] = field(default_factory=set)
    # Status → the traces with that result, in run order: what the counts link to.
    traces: dict[str, list[str]] = field(default_factory=dict)

    def text(self) -> str:
        if self.status == "none":
            return "—"
        shown = ", ".join(f"{self.counts[s]} {s}" for s in ORDER if self.counts[s])
        return f"{self.status} ({shown})"


def verdict(outcome: Mapping[str, Any], known: Sequence[Deviation]) -> Verdict:
    """A trace's result on a target, from its failure records (never from their sentences)."""
    trace = str(outcome["trace"])
    waived = [Waived.from_json(w) for w in outcome.get("waived") or ()]
    failures = [Failure.from_json(f) for f in outcome.get("failures") or ()]
    if outcome["outcome"] == "passed" and not failures:
        tolerated = tuple(dict.fromkeys(w.reason for w in waived)) or tuple(
            dict.fromkeys(_reason(str(d)) for d in outcome.get("deviations") or ())
        )
        used = frozenset(w.entry for w in waived)
        return Verdict(trace, "deviation", tolerated, entries=used) if tolerated else Verdict(trace, "pass")
    if outcome["outcome"] == "skipped":
        return Verdict(trace, "skipped", (str(outcome.get("message") or ""),))
    if outcome["outcome"] not in ("failed", "passed") or not failures:
        # Broken or invalid is no verdict on the target: no known deviation can explain it.
        return Verdict(trace, "fail", (str(outcome.get("message") or outcome["outcome"]),))
    # A failed trace, or one the run passed as a deviation: judged again from its records, which also
    # says which entries explained it.
    return _judge(trace, list(outcome.get("spec") or ()), failures, known, waived)


def _judge(
    trace: str, spec: list[str], failures: list[Failure], known: Sequence[Deviation], waived: list[Waived]
) -> Verdict:
    """A failed trace is a deviation when known deviations explain every one of its failures."""
    # A delivery that stands in for a missing one, differing by known deviations only, is not also an
    # unexpected one.
    standing_in = {
        found[0]: found[1]
        for failure in failures
        if failure.near and (found := _explain_nearest(failure.near, trace, spec, known)) is not None
    }
    reasons = [w.reason for w in waived]
    entries = {w.entry for w in waived}
    lines: list[tuple[str, str]] = []
    for failure in failures:
        explained = _explain_one(failure, standing_in, trace, spec, known)
        head = sentence(failure)
        if explained is None:
            return Verdict(trace, "fail", (head,))
        reasons += [d.reason for d in explained]
        entries.update(d.entry for d in explained)
        lines.append((head, "; ".join(dict.fromkeys(d.reason for d in explained))))
    return Verdict(trace, "deviation", tuple(dict.fromkeys(reasons)), tuple(lines), frozenset(entries))


def _explain_one(
    failure: Failure,
    standing_in: Mapping[str, list[Deviation]],
    trace: str,
    spec: list[str],
    known: Sequence[Deviation],
) -> list[Deviation] | None:
    if failure.kind == Kind.DELIVERY and failure.near:
        # Something was delivered near it: only a delivery that differs by known deviations alone stands
        # in for it; an entry for the missing delivery itself must not hide what came instead.
        return next((standing_in[n.delivery] for n in failure.near if n.delivery in standing_in), None)
    if failure.kind in (Kind.UNEXPECTED_DELIVERY, Kind.NOTHING_DELIVERED) and failure.actual in standing_in:
        return standing_in[failure.actual]
    found = explain(failure, trace, spec, known)
    return None if found is None else [found]


def _explain_nearest(
    near: Sequence[Near], trace: str, spec: list[str], known: Sequence[Deviation]
) -> tuple[str, list[Deviation]] | None:
    """A missing delivery is a deviation only when one delivery that did happen differs from it by
    nothing but known deviations, every difference of it: one known difference must not hide another.
    Returns that delivery and the entries."""
    for candidate in near:
        found = [explain(d, trace, spec, known) for d in candidate.differences]
        if found and all(found):
            return candidate.delivery, [d for d in found if d is not None]
    return None


def stale(runs: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[str, list[Deviation]]:
    """Per target, the deviation entries that explained nothing in these runs although a trace in their
    scope ran (was not skipped): kept only for a difference the target no longer shows."""
    found: dict[str, list[Deviation]] = {}
    for target, outcomes in runs.items():
        known = deviations(target)
        ran = [o for o in outcomes if o["outcome"] != "skipped"]
        used: set[str] = set()
        for outcome in ran:
            used |= verdict(outcome, known).entries
        idle = [
            d
            for d in known
            if d.entry not in used and any(d.applies_to(str(o["trace"]), o.get("spec") or ()) for o in ran)
        ]
        if idle:
            found[target] = idle
    return found


def stale_lines(unused: Mapping[str, Sequence[Deviation]]) -> list[str]:
    """One warning line per stale entry."""
    return [
        f"{target}: stale deviation {d.entry} matched nothing in this run: {d.reason}"
        for target, entries in unused.items()
        for d in entries
    ]


def build(runs: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[str, dict[str, Cell]]:
    """ID → target → cell, for every catalogue ID, from each target's outcomes."""
    matrix: dict[str, dict[str, Cell]] = {spec_id: {t: Cell() for t in runs} for spec_id in catalogue()}
    for target, outcomes in runs.items():
        known = deviations(target)
        for outcome in outcomes:
            found = verdict(outcome, known)
            for spec_id in outcome.get("spec") or []:
                cell = matrix.setdefault(spec_id, {t: Cell() for t in runs})[target]
                cell.counts[found.status] += 1
                cell.traces.setdefault(found.status, []).append(str(outcome["trace"]))
                cell.reasons.update(r for r in found.reasons if found.status == "deviation")
    for row in matrix.values():
        for cell in row.values():
            cell.status = next((s for s in ORDER if cell.counts[s]), "none")
    return matrix


@dataclass(frozen=True)
class Result:
    """One trace on one target, as the matrix shows it."""

    status: str
    # (difference from Exchange, the known deviation's reason) for a deviation.
    deviations: tuple[tuple[str, str], ...] = ()
    skipped: str = ""
    failures: tuple[str, ...] = ()
    # The trace's Allure result file, when the run wrote one, and the id of its test in the HTML report.
    allure: str = ""
    allure_id: str = ""


@dataclass
class TraceRow:
    trace: str
    file: str
    flow: str
    spec: tuple[str, ...]
    results: dict[str, Result] = field(default_factory=dict)


def result(
    outcome: Mapping[str, Any], known: Sequence[Deviation], allure: tuple[str, str] = ("", "")
) -> Result:
    """A trace's result on a target with everything behind it: the differences and their reasons, the
    skip reason, or every failure."""
    found = verdict(outcome, known)
    file, test = allure
    if found.status == "skipped":
        return Result(
            "skipped", skipped=found.reasons[0] if found.reasons else "", allure=file, allure_id=test
        )
    if found.status == "deviation":
        # What the replay waived as it went (wording), then the failures judged deviations afterwards.
        waived = [(sentence(w.failure), w.reason) for w in map(Waived.from_json, outcome.get("waived") or ())]
        pairs = tuple(dict.fromkeys([*waived, *found.explained]))
        if not pairs:  # an older results file: only the replay's "(known deviation: why)" lines
            pairs = tuple((str(d), _reason(str(d))) for d in outcome.get("deviations") or ())
        return Result("deviation", deviations=tuple(pairs), allure=file, allure_id=test)
    if found.status == "fail":
        records = [sentence(Failure.from_json(f)) for f in outcome.get("failures") or ()]
        failures = tuple(records) or tuple(
            line for line in str(outcome.get("message") or outcome["outcome"]).splitlines() if line.strip()
        )
        return Result("fail", failures=failures, allure=file, allure_id=test)
    return Result("pass", allure=file, allure_id=test)


def trace_rows(
    runs: Mapping[str, Iterable[Mapping[str, Any]]],
    allure: Mapping[tuple[str, str], tuple[str, str]] | None = None,
) -> list[TraceRow]:
    """One row per trace, in run order, with its result on each target that ran it."""
    rows: dict[str, TraceRow] = {}
    for target, outcomes in runs.items():
        known = deviations(target)
        for outcome in outcomes:
            trace = str(outcome["trace"])
            spec = tuple(str(i) for i in outcome.get("spec") or ())
            row = rows.setdefault(
                trace, TraceRow(trace, str(outcome.get("path") or ""), flow_of(list(spec)), spec)
            )
            row.results[target] = result(outcome, known, (allure or {}).get((trace, target), ("", "")))
    return list(rows.values())


def flow_counts(rows: Sequence[TraceRow], targets: Sequence[str]) -> dict[str, dict[str, Counter[str]]]:
    """Flow → target → status → number of traces: each trace once, under its flow."""
    counts: dict[str, dict[str, Counter[str]]] = {}
    for row in rows:
        per_target = counts.setdefault(row.flow, {t: Counter() for t in targets})
        for target, found in row.results.items():
            per_target.setdefault(target, Counter())[found.status] += 1
    return counts


def allure_results(folder: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(trace, target) → the name of its Allure result file and the id of its test in the HTML report,
    read from the labels we give each test."""
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for path in sorted(folder.glob("*-result.json")) if folder.is_dir() else ():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not ours, or half written: the matrix links what it can read
        labels = {label.get("name"): label.get("value") for label in data.get("labels") or ()}
        if labels.get("trace") and labels.get("target"):
            test = allure_report_id(str(data.get("uuid") or ""))
            found[(str(labels["trace"]), str(labels["target"]))] = (path.name, test)
    return found


def allure_report_id(uuid: str) -> str:
    """The id the Allure 3 report gives the test of a result, and its page's URL fragment: the MD5 of the
    result's uuid (@allurereport/core, store/convert.js)."""
    return hashlib.md5(uuid.encode(), usedforsecurity=False).hexdigest()


def to_json(
    matrix: Mapping[str, Mapping[str, Cell]],
    rows: Sequence[TraceRow],
    targets: Sequence[str],
    unused: Mapping[str, Sequence[Deviation]] | None = None,
) -> dict[str, Any]:
    """What the HTML page shows, as data: per trace per target, per ID and per flow."""
    known = catalogue()
    return {
        "targets": list(targets),
        "traces": [
            {
                "trace": row.trace,
                "file": row.file,
                "flow": row.flow,
                "spec": list(row.spec),
                "results": {
                    target: {
                        "outcome": found.status,
                        "deviations": [{"difference": d, "reason": r} for d, r in found.deviations],
                        "skip_reason": found.skipped or None,
                        "failures": list(found.failures),
                        "allure": found.allure or None,
                        "allure_report": f"allure-report/index.html#{found.allure_id}"
                        if found.allure_id
                        else None,
                    }
                    for target, found in row.results.items()
                },
            }
            for row in rows
        ],
        "ids": [
            {
                "id": spec_id,
                "title": known[spec_id].title if spec_id in known else "",
                "flow": known[spec_id].flow if spec_id in known else "",
                "results": {
                    target: {
                        "status": row[target].status,
                        "counts": {s: row[target].counts[s] for s in ORDER if row[target].counts[s]},
                        "traces": {s: row[target].traces[s] for s in ORDER if s in row[target].traces},
                        "deviation_reasons": sorted(row[target].reasons),
                    }
                    for target in targets
                },
            }
            for spec_id, row in matrix.items()
        ],
        "flows": [
            {"flow": flow, "counts": {t: {s: c[s] for s in ORDER if c[s]} for t, c in per_target.items()}}
            for flow, per_target in flow_counts(rows, targets).items()
        ],
        "stale": [
            {"target": target, "entry": d.entry, "reason": d.reason}
            for target, entries in (unused or {}).items()
            for d in entries
        ],
    }


def claimed(matrix: Mapping[str, Mapping[str, Cell]]) -> dict[str, Mapping[str, Cell]]:
    """The rows with a result on some target: the IDs a trace of the run claims."""
    return {i: row for i, row in matrix.items() if any(c.status != "none" for c in row.values())}


def unclaimed(matrix: Mapping[str, Mapping[str, Cell]]) -> list[str]:
    """The IDs no trace of the run claims: one line, not a row of dashes each."""
    return [i for i, row in matrix.items() if all(c.status == "none" for c in row.values())]


def to_markdown(
    matrix: Mapping[str, Mapping[str, Cell]],
    targets: Sequence[str],
    unused: Mapping[str, Sequence[Deviation]] | None = None,
) -> str:
    known = catalogue()
    lines = [
        "# Conformance matrix",
        "",
        "Each cell: the result over the traces that show the catalogue ID on that target.",
        "",
        "| ID | step | " + " | ".join(targets) + " |",
        "|---|---|" + "---|" * len(targets),
    ]
    for spec_id, row in claimed(matrix).items():
        title = known[spec_id].title if spec_id in known else ""
        cells = [row[t].text() for t in targets]
        lines.append(f"| {spec_id} | {title.replace('|', '/')} | " + " | ".join(cells) + " |")
    if empty := unclaimed(matrix):
        lines += ["", f"No trace of this run claims {', '.join(empty)}."]
    deviated = [
        (t, spec_id, r) for spec_id, row in matrix.items() for t in targets for r in sorted(row[t].reasons)
    ]
    if deviated:
        lines += ["", "## Known deviations", ""]
        lines += sorted({f"- {t}: {r}" for t, _, r in deviated})
    if unused:
        lines += [
            "",
            "## Stale deviations",
            "",
            "Entries that matched no failure of the traces run in their scope:",
            "",
        ]
        lines += [f"- {line}" for line in stale_lines(unused)]
    return "\n".join(lines) + "\n"


def _reason(deviation: str) -> str:
    """The reason part of a tolerated mismatch as the replay records it ("... (known deviation: why)")."""
    match = re.search(r"\(known deviation: (.*)\)$", deviation)
    return match[1] if match else deviation
