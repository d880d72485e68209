"""The conformance matrix as one HTML page that works offline: counts by flow, catalogue IDs by targets
(each count opens the list of its traces, linked to their files and Allure results, with the reasons),
one row per trace with its differences, skip reasons and failures written out, and a filter by flow and
by result. Plain HTML and a few lines of inline script: nothing is fetched.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from harness.corpus.catalogue import catalogue
from harness.judge.deviations import Deviation
from harness.reports.matrix import (
    ORDER,
    Cell,
    Result,
    TraceRow,
    claimed,
    flow_counts,
    stale_lines,
    unclaimed,
)

COLOURS = {
    "pass": "#c8e6c9",
    "fail": "#ffcdd2",
    "deviation": "#fff3c4",
    "skipped": "#eeeeee",
    "none": "#ffffff",
}
_STYLE = (
    "body{font:14px sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1.5em}"
    "td,th{border:1px solid #999;padding:4px;vertical-align:top;text-align:left}"
    ".why{font-size:12px;color:#333;margin:2px 0 0 0;padding-left:1.2em}summary{cursor:pointer}"
    "form{margin:1em 0}label{margin-right:1.5em}"
)
# Shows the rows whose flow and results match the two selects; rows carry data-flow and data-results.
_SCRIPT = """
function filterRows() {
  var flow = document.getElementById('flow').value;
  var result = document.getElementById('result').value;
  document.querySelectorAll('tr[data-flow]').forEach(function (row) {
    var flowOk = !flow || row.dataset.flow === flow;
    var resultOk = !result || row.dataset.results.split(' ').indexOf(result) >= 0;
    row.hidden = !(flowOk && resultOk);
  });
}
document.getElementById('flow').addEventListener('change', filterRows);
document.getElementById('result').addEventListener('change', filterRows);
"""


def page(
    matrix: Mapping[str, Mapping[str, Cell]],
    targets: Sequence[str],
    unused: Mapping[str, Sequence[Deviation]] | None = None,
    rows: Sequence[TraceRow] = (),
    base: Path | None = None,
) -> str:
    """The page; links to trace files and Allure results are relative to `base`, the page's folder."""
    links = _Links(rows, base)
    rows_by_id = claimed(matrix)
    flows = sorted({row.flow for row in rows} | {_flow(spec_id) for spec_id in rows_by_id} - {""})
    parts = [
        "<!doctype html><html lang=en><meta charset=utf-8><title>Conformance matrix</title>",
        f"<style>{_STYLE}</style><h1>Conformance matrix</h1>",
        f"<p>{len(rows)} trace(s) on {html.escape(', '.join(targets))}. A deviation is a known, conforming "
        "difference from Exchange (its reason is shown); it is not a failure.</p>",
        _filters(flows),
        _flows_table(rows, targets),
        _ids_table(rows_by_id, targets, links),
        _empty_ids(matrix),
        _traces_table(rows, targets, links),
        _stale(unused or {}),
        f"<script>{_SCRIPT}</script></html>\n",
    ]
    return "".join(parts)


class _Links:
    """Each trace's file, relative to the page, and its Allure result on each target."""

    def __init__(self, rows: Sequence[TraceRow], base: Path | None) -> None:
        self.rows = {row.trace: row for row in rows}
        self.base = base

    def file(self, trace: str) -> str:
        row = self.rows.get(trace)
        if row is None or not row.file:
            return ""
        path = Path(row.file)
        if self.base is None:
            return quote(path.as_posix())
        return quote(Path(os.path.relpath(path.resolve(), self.base.resolve())).as_posix())

    def result(self, trace: str, target: str) -> Result | None:
        row = self.rows.get(trace)
        return row.results.get(target) if row is not None else None

    def allure(self, trace: str, target: str) -> str:
        """Links to the trace's test in the Allure report and to the result it is made from."""
        found = self.result(trace, target)
        if found is None or not found.allure:
            return ""
        report = f"allure-report/index.html#{found.allure_id}"
        return f' (<a href="{report}">Allure</a>, <a href="allure-results/{quote(found.allure)}">result</a>)'

    def trace(self, trace: str, target: str) -> str:
        """The trace's name linked to its file, and links to its Allure test on the target."""
        file = self.file(trace)
        name = html.escape(trace)
        text = f'<a href="{file}">{name}</a>' if file else name
        return text + self.allure(trace, target)


def _flow(spec_id: str) -> str:
    known = catalogue()
    return known[spec_id].flow if spec_id in known else ""


def _filters(flows: Sequence[str]) -> str:
    flow_options = "".join(f'<option value="{html.escape(f)}">{html.escape(f)}</option>' for f in flows)
    result_options = "".join(f'<option value="{s}">{s}</option>' for s in ORDER)
    return (
        '<form id="filters">'
        f'<label>Flow <select id="flow"><option value="">all</option>{flow_options}</select></label>'
        f'<label>Result <select id="result"><option value="">any</option>{result_options}</select></label>'
        "</form>"
    )


def _flows_table(rows: Sequence[TraceRow], targets: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t in targets)
    body = []
    for flow, per_target in sorted(flow_counts(rows, targets).items()):
        cells = "".join(
            "<td>"
            + html.escape(", ".join(f"{per_target[t][s]} {s}" for s in ORDER if per_target[t][s]))
            + "</td>"
            for t in targets
        )
        statuses = " ".join(sorted({s for c in per_target.values() for s in c if c[s]}))
        body.append(
            f'<tr data-flow="{html.escape(flow)}" data-results="{statuses}">'
            f"<th>{html.escape(flow)}</th>{cells}</tr>"
        )
    return f"<h2>By flow</h2><table><tr><th>flow</th>{head}</tr>{''.join(body)}</table>"


def _ids_table(claimed: Mapping[str, Mapping[str, Cell]], targets: Sequence[str], links: _Links) -> str:
    known = catalogue()
    head = "".join(f"<th>{html.escape(t)}</th>" for t in targets)
    body = []
    for spec_id, row in claimed.items():
        title = html.escape(known[spec_id].title if spec_id in known else "")
        cells = "".join(_id_cell(row[t], t, links) for t in targets)
        statuses = " ".join(sorted({s for c in row.values() for s in c.traces}))
        body.append(
            f'<tr id="id-{html.escape(spec_id)}" data-flow="{html.escape(_flow(spec_id))}" '
            f'data-results="{statuses}"><th>{html.escape(spec_id)}</th><td>{title}</td>{cells}</tr>'
        )
    return (
        "<h2>By catalogue ID</h2><p>Each cell: the result over the traces that claim the ID on that target "
        "(the worst of them); open a count for its traces.</p>"
        f"<table><tr><th>ID</th><th>step</th>{head}</tr>{''.join(body)}</table>"
    )


def _id_cell(cell: Cell, target: str, links: _Links) -> str:
    if cell.status == "none":
        return f'<td style="background:{COLOURS["none"]}">not run here</td>'
    counts = []
    for status in ORDER:
        traces = cell.traces.get(status, [])
        if not traces:
            continue
        items = "".join(f"<li>{links.trace(t, target)}{_why(links.result(t, target))}</li>" for t in traces)
        counts.append(f"<details><summary>{len(traces)} {status}</summary><ul>{items}</ul></details>")
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in sorted(cell.reasons))
    deviated = f'<ul class="why">{reasons}</ul>' if reasons else ""
    return (
        f'<td style="background:{COLOURS[cell.status]}"><b>{cell.status}</b>{"".join(counts)}{deviated}</td>'
    )


def _why(found: Result | None) -> str:
    """Why a trace did not simply pass, written out."""
    if found is None or found.status == "pass":
        return ""
    if found.status == "skipped":
        lines = [f"skipped: {found.skipped}"]
    elif found.status == "deviation":
        lines = [f"{difference} — known deviation: {reason}" for difference, reason in found.deviations]
    else:
        lines = list(found.failures)
    return '<ul class="why">' + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


def _empty_ids(matrix: Mapping[str, Mapping[str, Cell]]) -> str:
    empty = unclaimed(matrix)
    if not empty:
        return ""
    known = catalogue()
    items = "".join(
        f"<li>{html.escape(i)}: {html.escape(known[i].title if i in known else '')}</li>" for i in empty
    )
    return (
        f"<details><summary>{len(empty)} catalogue ID(s) without a result: no trace of this run claims "
        "them</summary><p>Only the traces named on the command line (and chosen by -m / -k) ran; run the "
        f"traces that claim these IDs, or the whole corpus, to fill them.</p><ul>{items}</ul></details>"
    )


def _traces_table(rows: Sequence[TraceRow], targets: Sequence[str], links: _Links) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t in targets)
    body = []
    for row in rows:
        cells = []
        for target in targets:
            found = row.results.get(target)
            if found is None:
                cells.append("<td>not run</td>")
                continue
            link = links.allure(row.trace, target)
            cells.append(
                f'<td style="background:{COLOURS[found.status]}">'
                f"<b>{found.status}</b>{link}{_why(found)}</td>"
            )
        statuses = " ".join(sorted({r.status for r in row.results.values()}))
        file = links.file(row.trace)
        name = f'<a href="{file}">{html.escape(row.trace)}</a>' if file else html.escape(row.trace)
        body.append(
            f'<tr data-flow="{html.escape(row.flow)}" data-results="{statuses}"><td>{name}</td>'
            f"<td>{html.escape(row.flow)}</td><td>{html.escape(' '.join(row.spec))}</td>{''.join(cells)}</tr>"
        )
    return (
        f"<h2>Traces</h2><table><tr><th>trace</th><th>flow</th><th>IDs</th>{head}</tr>{''.join(body)}</table>"
    )


def _stale(unused: Mapping[str, Sequence[Deviation]]) -> str:
    if not unused:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in stale_lines(unused))
    return f"<h2>Stale deviations</h2><ul>{items}</ul>"
