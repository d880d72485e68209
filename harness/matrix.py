"""The conformance matrix: catalogue IDs by targets, from the outcomes of runs of the same corpus on
several targets.

A trace's result on a target is pass, fail, skipped, or *deviation*: it failed, but every failure is a
known deviation of that target, listed with its reason in `harness/targets/deviations/<target>.yaml`
(a different but conforming reply code, say). A cell of the matrix sums the traces that show the ID:
fail if any failed, else deviation if any deviated, else pass if any passed, else skipped.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.catalogue import catalogue
from harness.targets.known_deviations import Deviation, deviations

ORDER = ("fail", "deviation", "pass", "skipped")


@dataclass(frozen=True)
class Verdict:
    trace: str
    status: str
    reasons: tuple[str, ...] = ()


@dataclass
class Cell:
    status: str = "none"
    counts: Counter[str] = field(default_factory=Counter)
    reasons: set[str] = field(default_factory=set)

    def text(self) -> str:
        if self.status == "none":
            return "—"
        shown = ", ".join(f"{self.counts[s]} {s}" for s in ORDER if self.counts[s])
        return f"{self.status} ({shown})"


def verdict(outcome: Mapping[str, Any], known: Sequence[Deviation]) -> Verdict:
    trace = str(outcome["trace"])
    if outcome["outcome"] == "passed":
        tolerated = tuple(dict.fromkeys(_reason(str(d)) for d in outcome.get("deviations") or ()))
        return Verdict(trace, "deviation", tolerated) if tolerated else Verdict(trace, "pass")
    if outcome["outcome"] == "skipped":
        return Verdict(trace, "skipped", (str(outcome.get("message") or ""),))
    # pytest-xdist puts a "[gw0] linux -- Python ..." line before a worker's failure text.
    failures = [
        line
        for line in str(outcome.get("message") or "").splitlines()
        if line.strip() and not re.match(r"\[gw\d+\] ", line)
    ]
    reasons: list[str] = []
    for line in failures:
        match = next(
            (
                d
                for d in known
                if d.failure.search(line) and (not d.traces or any(trace.startswith(t) for t in d.traces))
            ),
            None,
        )
        if match is None:
            return Verdict(trace, "fail", (line,))
        reasons.append(match.reason)
    return Verdict(trace, "deviation" if failures else "fail", tuple(dict.fromkeys(reasons)))


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
                cell.reasons.update(r for r in found.reasons if found.status == "deviation")
    for row in matrix.values():
        for cell in row.values():
            cell.status = next((s for s in ORDER if cell.counts[s]), "none")
    return matrix


def to_markdown(matrix: Mapping[str, Mapping[str, Cell]], targets: Sequence[str]) -> str:
    known = catalogue()
    lines = [
        "# Conformance matrix",
        "",
        "Each cell: the result over the traces that show the catalogue ID on that target.",
        "",
        "| ID | step | " + " | ".join(targets) + " |",
        "|---|---|" + "---|" * len(targets),
    ]
    for spec_id, row in matrix.items():
        title = known[spec_id].title if spec_id in known else ""
        cells = [row[t].text() for t in targets]
        lines.append(f"| {spec_id} | {title.replace('|', '/')} | " + " | ".join(cells) + " |")
    deviated = [
        (t, spec_id, r) for spec_id, row in matrix.items() for t in targets for r in sorted(row[t].reasons)
    ]
    if deviated:
        lines += ["", "## Known deviations", ""]
        lines += sorted({f"- {t}: {r}" for t, _, r in deviated})
    return "\n".join(lines) + "\n"


_COLOURS = {
    "pass": "#c8e6c9",
    "fail": "#ffcdd2",
    "deviation": "#fff3c4",
    "skipped": "#eeeeee",
    "none": "#ffffff",
}
_STYLE = "table{border-collapse:collapse;font:14px sans-serif}td,th{border:1px solid #999;padding:4px}"


def to_html(matrix: Mapping[str, Mapping[str, Cell]], targets: Sequence[str]) -> str:
    known = catalogue()
    head = "".join(f"<th>{html.escape(t)}</th>" for t in targets)
    rows = []
    for spec_id, row in matrix.items():
        title = html.escape(known[spec_id].title if spec_id in known else "")
        cells = "".join(
            f'<td style="background:{_COLOURS[row[t].status]}" title="{_reasons(row[t])}">'
            f"{html.escape(row[t].text())}</td>"
            for t in targets
        )
        rows.append(f"<tr><th>{html.escape(spec_id)}</th><td>{title}</td>{cells}</tr>")
    return (
        "<!doctype html><meta charset=utf-8><title>Conformance matrix</title>"
        f"<style>{_STYLE}</style>"
        f"<h1>Conformance matrix</h1><table><tr><th>ID</th><th>step</th>{head}</tr>{''.join(rows)}</table>\n"
    )


def _reasons(cell: Cell) -> str:
    return html.escape("; ".join(sorted(cell.reasons)))


def _reason(deviation: str) -> str:
    """The reason part of a tolerated mismatch as the replay records it ("... (known deviation: why)")."""
    match = re.search(r"\(known deviation: (.*)\)$", deviation)
    return match[1] if match else deviation
