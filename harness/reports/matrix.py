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

from harness.corpus.catalogue import catalogue
from harness.judge.deviations import Deviation, deviations
from harness.run.runner import KNOCK_ON

ORDER = ("fail", "deviation", "pass", "skipped")


@dataclass(frozen=True)
class Verdict:
    trace: str
    status: str
    reasons: tuple[str, ...] = ()
    # For a deviation: each failure line with the reason that explains it.
    explained: tuple[tuple[str, str], ...] = field(default=(), compare=False)


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
    if outcome["outcome"] in ("broken", "invalid"):
        # Not a verdict on the target: no known deviation can explain it.
        return Verdict(trace, "fail", (str(outcome.get("message") or outcome["outcome"]),))
    # A failure that follows from a failed session is judged as itself; the run's results before
    # the summary came from pytest and may start with pytest-xdist's "[gw0] linux -- Python ..." line.
    failures = [
        line.removeprefix(KNOCK_ON)
        for line in str(outcome.get("message") or "").splitlines()
        if line.strip() and not re.match(r"\[gw\d+\] ", line)
    ]
    reasons: list[str] = []
    lines: list[tuple[str, str]] = []
    groups = _grouped(failures)
    # A delivery that stands in for a missing one, differing by known deviations only, is not also an
    # unexpected one.
    standing_in: dict[str, list[str]] = {}
    for _head, near in groups:
        if near and (found := _explain_nearest(near, trace, known)) is not None:
            standing_in[found[0]] = found[1]
    for head, near in groups:
        unexpected = head.removeprefix("unexpected delivery: ")
        substitute = next((r for line, r in standing_in.items() if line.startswith(f"{unexpected}: ")), None)
        if near:
            explained = next((r for line, r in standing_in.items() if line in near), None)
        elif head != unexpected and substitute is not None:
            explained = substitute
        else:
            explained = _explain(head, trace, known)
        if explained is None:
            return Verdict(trace, "fail", (head,))
        reasons += explained
        lines.append((head, "; ".join(dict.fromkeys(explained))))
    return Verdict(trace, "deviation" if failures else "fail", tuple(dict.fromkeys(reasons)), tuple(lines))


# The lines under "no delivery matches ..." describe the deliveries that came nearest, each as
# "<delivery>: <difference>; <difference>" (harness/judge/expectations.py).
_NEAR = re.compile(r"^(mailbox|sink|foreign mailbox) ")


def _grouped(failures: Sequence[str]) -> list[tuple[str, list[str]]]:
    groups: list[tuple[str, list[str]]] = []
    for line in failures:
        if groups and groups[-1][0].startswith("no delivery matches") and _NEAR.match(line):
            groups[-1][1].append(line)
        else:
            groups.append((line, []))
    return groups


def _explain(line: str, trace: str, known: Sequence[Deviation]) -> list[str] | None:
    match = next(
        (
            d
            for d in known
            if d.failure.search(line) and (not d.traces or any(trace.startswith(t) for t in d.traces))
        ),
        None,
    )
    return None if match is None else [match.reason]


def _explain_nearest(
    near: Sequence[str], trace: str, known: Sequence[Deviation]
) -> tuple[str, list[str]] | None:
    """A missing delivery is a deviation only when one delivery that did happen differs from it by
    nothing but known deviations, every difference of it: one known difference must not hide another.
    Returns that delivery's line and the reasons."""
    for line in near:
        reasons: list[str] = []
        for part in _differences(line):
            explained = _explain(part, trace, known)
            if explained is None:
                break
            reasons += explained
        else:
            return line, reasons
    return None


def _differences(line: str) -> list[str]:
    """A near-delivery line split into its differences, at the "; " that separate them (not those
    inside the parentheses or quotes of one difference); the delivery's description stays on the first."""
    parts, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif char == ";" and depth == 0 and line[index + 1 : index + 2] == " ":
            parts.append(line[start:index])
            start = index + 2
    parts.append(line[start:])
    return parts


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
