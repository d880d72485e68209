"""The summary `mailflow run` prints: counts by flow and by catalogue ID, then one line for each trace
that did not pass, with its reason (`--verbose`: every trace), then the totals.

Plain lines, no table: a CI log is read piped (no colour, no box drawing) and often at 80 columns, where
a table squeezes every column but one to "…". On a terminal, or with COLUMNS set, a long line is folded
under its trace with an indent; piped without COLUMNS it stays one line, for grep.
"""

from __future__ import annotations

import os
import textwrap
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from harness.corpus.catalogue import catalogue, flow_of
from harness.judge.records import KNOCK_ON
from harness.run.outcomes import OUTCOMES, one_line

STYLES = {
    "passed": "green",
    "failed": "red",
    "error": "magenta",
    "broken": "magenta",
    "invalid": "magenta",
    "skipped": "yellow",
}
# The order the problem lines come in: what the target did wrong first, what was not run last.
_SHOWN = ("failed", "error", "invalid", "broken", "skipped")
_UNKNOWN = "(not loaded)"  # an invalid trace's flow and IDs
_LABEL = 9  # "invalid  " and the other outcome words, padded to line the trace names up


def terminal_width(console: Console) -> int | None:
    """The width to fold lines to: the terminal's, or COLUMNS; None when piped without COLUMNS."""
    return console.width if console.is_terminal or "COLUMNS" in os.environ else None


def print_summary(
    console: Console,
    outcomes: Sequence[Mapping[str, Any]],
    verbose: bool = False,
    details: Sequence[Path] = (),
) -> None:
    width = terminal_width(console)
    if outcomes:
        _counts(
            console, "flow", _by(outcomes, lambda o: [flow_of(list(o["spec"])) if o["spec"] else _UNKNOWN])
        )
        _counts(console, "catalogue ID", _by(outcomes, lambda o: list(o["spec"]) or [_UNKNOWN]))
    shown = [o for o in outcomes if verbose or o["outcome"] != "passed"]
    if shown:
        console.print()
    for outcome in sorted(shown, key=_order):
        console.print(trace_line(outcome, width), soft_wrap=True, highlight=False)
    console.print()
    console.print(totals(outcomes), highlight=False, markup=False)
    if details:
        console.print("details: " + ", ".join(str(p) for p in details), highlight=False, markup=False)


def totals(outcomes: Iterable[Mapping[str, Any]]) -> str:
    """The last line of the summary, e.g. `3 traces: 1 passed, 1 failed, 1 invalid`."""
    listed = list(outcomes)
    counts = Counter(str(o["outcome"]) for o in listed)
    deviated = sum(1 for o in listed if o["outcome"] == "passed" and o.get("deviations"))
    parts = [f"{counts['passed']} passed" + (f" ({deviated} with known deviations)" if deviated else "")]
    parts += [f"{counts[name]} {name}" for name in OUTCOMES[1:] if counts[name] or name == "failed"]
    return f"{len(listed)} traces: " + ", ".join(parts)


def reason_line(outcome: Mapping[str, Any]) -> str:
    """Why a trace ended as it did, in one line: for a failure the first differing step with the reply
    received, and how many failures follow from it."""
    reason = outcome.get("reason") or {"message": outcome.get("message") or ""}
    if outcome["outcome"] == "passed":
        deviations = outcome.get("deviations") or []
        unobserved = outcome.get("unobserved") or []
        said = [f"{len(deviations)} known deviation(s)"] if deviations else []
        said += [f"not observable here: {', '.join(unobserved)}"] if unobserved else []
        return "; ".join(said)
    text = one_line({**reason, "file": _relative(reason.get("file"))})
    if outcome["outcome"] == "failed":
        records = outcome.get("failures")
        if records is not None:
            # The failure records say which outcome checks follow from the failed session.
            knock_on = sum(1 for record in records if record.get("knock_on"))
            count = len(records)
        else:
            lines = [line for line in str(outcome.get("message") or "").splitlines() if line.strip()]
            knock_on = sum(1 for line in lines if line.startswith(KNOCK_ON))
            count = len(lines)
        others = max(0, count - 1 - knock_on)
        if others:
            text += f" (and {others} more difference(s))"
        if knock_on:
            text += f" ({knock_on} outcome check(s) fail after it)"
    return text


def trace_line(outcome: Mapping[str, Any], width: int | None) -> Text:
    """A trace's line: its outcome, id (and target, unless the reference MTA), and why."""
    name = str(outcome["outcome"])
    shown = "deviation" if name == "passed" and outcome.get("deviations") else name
    head = f"{shown:<{_LABEL - 1}} {outcome['trace']}"
    if outcome.get("target") and outcome["target"] != "reference":
        head += f" [{outcome['target']}]"
    reason = reason_line(outcome)
    if name == "passed":
        reason = " ".join(filter(None, (" ".join(outcome["spec"]), f"{outcome['duration']:.2f}s", reason)))
    text = Text(fold(f"{head}: {reason}" if reason else head, width))
    text.stylize(STYLES.get(name, "magenta"), 0, len(shown))
    return text


def fold(line: str, width: int | None) -> str:
    """A summary line folded to `width` under its first word (None: left whole, for grep)."""
    if width is None:
        return line
    return textwrap.fill(
        line, width, subsequent_indent=" " * _LABEL, break_long_words=False, break_on_hyphens=False
    )


def _counts(console: Console, title: str, rows: Mapping[str, Counter[str]]) -> None:
    first = max([len(title), *(len(key) for key in rows)])
    console.print(
        f"{title:<{first}}" + "".join(f" {name:>7}" for name in OUTCOMES), highlight=False, markup=False
    )
    for key, counts in rows.items():
        cells = "".join(f" {counts[name] or '.':>7}" for name in OUTCOMES)
        console.print(f"{key:<{first}}{cells}", highlight=False, markup=False)


def _by(outcomes: Iterable[Mapping[str, Any]], keys: Any) -> dict[str, Counter[str]]:
    rows: dict[str, Counter[str]] = defaultdict(Counter)
    for outcome in outcomes:
        for key in keys(outcome):
            rows[key][str(outcome["outcome"])] += 1
    # Catalogue IDs in the catalogue's order (IN-1 before IN-3, PROTO-5 before PROTO-16), flows by name.
    order = {spec_id: number for number, spec_id in enumerate(catalogue())}
    return dict(sorted(rows.items(), key=lambda row: (order.get(row[0], len(order)), row[0])))


def _order(outcome: Mapping[str, Any]) -> tuple[int, str]:
    name = str(outcome["outcome"])
    return (_SHOWN.index(name) if name in _SHOWN else len(_SHOWN), str(outcome["trace"]))


def _relative(path: object) -> str | None:
    """A file as the user named it: relative to the working folder when it is under it."""
    if not path:
        return None
    try:
        return str(Path(str(path)).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
