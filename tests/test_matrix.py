"""The conformance matrix: verdicts per trace, cells per catalogue ID and target, the Markdown and HTML
tables, and `mailflow matrix` end to end on the reference target."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from harness.cli.app import main
from harness.judge.deviations import deviations
from harness.judge.records import Failure, Kind, Waived
from harness.reports import matrix, matrix_page
from harness.targets import get

ROOT = Path(__file__).resolve().parents[1]


def outcome(
    trace: str, result: str, spec: list[str], message: str = "", tolerated: list[str] | None = None
) -> dict:
    return {
        "trace": trace,
        "outcome": result,
        "spec": spec,
        "message": message,
        "failures": [Failure(Kind.STEP, detail=message).to_json()] if message else [],
        "deviations": tolerated or [],
    }


def test_a_pass_that_tolerated_deviations_shows_them() -> None:
    waived = Waived(Failure(Kind.TEXT, "x", "y", same_code=True), "wording only", "postfix.yaml:3")
    passed = outcome("t", "passed", ["IN-3"], tolerated=[waived.text()])
    passed["waived"] = [waived.to_json()]
    found = matrix.verdict(passed, [])
    assert found == matrix.Verdict("t", "deviation", ("wording only",))
    assert found.entries == {"postfix.yaml:3"}
    assert matrix.verdict(outcome("t", "passed", ["IN-3"]), []).status == "pass"


def test_a_cell_is_as_bad_as_its_worst_trace() -> None:
    runs = {
        "reference": [outcome("a", "passed", ["RELAY-1"]), outcome("b", "passed", ["RELAY-1", "IN-3"])],
        "other": [
            outcome("a", "passed", ["RELAY-1"]),
            outcome("b", "failed", ["RELAY-1", "IN-3"], "boom"),
            outcome("c", "skipped", ["RELAY-2"], "target other lacks reference"),
        ],
    }
    table = matrix.build(runs)
    assert table["RELAY-1"]["reference"].text() == "pass (2 pass)"
    assert table["RELAY-1"]["other"].text() == "fail (1 fail, 1 pass)"
    assert table["RELAY-2"]["other"].status == "skipped"
    assert table["OUT-8"]["other"].text() == "—"
    markdown = matrix.to_markdown(table, ["reference", "other"])
    assert "| RELAY-1 | relaying is denied by default | pass (2 pass) | fail (1 fail, 1 pass) |" in markdown
    assert "| OUT-8 |" not in markdown and "No trace of this run claims C-RE, C-AQ" in markdown
    page = matrix_page.page(table, ["reference", "other"])
    # A row for each ID a trace claimed; the others are folded into one line that says why.
    assert page.count('<tr id="id-') == 3 and "#ffcdd2" in page
    assert f"{len(table) - 3} catalogue ID(s) without a result" in page


def test_postfix_deviations_load_and_tolerate_only_where_they_are_seen() -> None:
    known = deviations("postfix:EX2")
    assert known and all(d.reason for d in known)
    # Failed authentication: 535 5.7.8 where Exchange says 5.7.3, known for the AUTH catalogue IDs.
    auth = Failure(Kind.ENHANCED, "5.7.3", "5.7.8", command="AUTH LOGIN", same_code=True)
    tolerate = get("postfix").tolerate("protocol/x", ["PROTO-8"])
    assert tolerate is not None and tolerate(auth) is not None
    # Anywhere else it is not known; nor is a refused recipient where Exchange accepts.
    assert get("postfix").tolerate("inbound/x", ["IN-3"]) is None
    assert tolerate(Failure(Kind.CODE, "250", "550", command="RCPT TO:<bob@contoso.com>")) is None
    assert tolerate(Failure(Kind.CODE, "354", "554", command="DATA")) is None
    assert get("reference").tolerate("relay/x") is None


def test_mailflow_matrix_writes_markdown_and_html(tmp_path: Path) -> None:
    traces = [str(ROOT / "traces" / "relay" / "relay-denied-by-default.yaml")]
    result = CliRunner().invoke(
        main, ["matrix", "--target", "reference", "--reports", str(tmp_path), *traces]
    )
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "matrix.md").read_text(encoding="utf-8")
    assert re.search(r"\| RELAY-1 \| [^|]+ \| pass \(1 pass\) \|", markdown), markdown
    assert (tmp_path / "matrix.html").read_text(encoding="utf-8").startswith("<!doctype html>")
    recorded = json.loads((tmp_path / "matrix" / "reference.json").read_text(encoding="utf-8"))
    assert [o["trace"] for o in recorded] == ["relay/relay-denied-by-default"]
