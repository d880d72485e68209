"""The conformance matrix: verdicts per trace, cells per catalogue ID and target, the Markdown and HTML
tables, and `mailflow matrix` end to end on the reference target."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from harness.cli.app import main
from harness.judge.deviations import Deviation, deviations
from harness.reports import matrix
from harness.targets import get

ROOT = Path(__file__).resolve().parents[1]
WORDING = Deviation(re.compile(r"got '2\.1\.5 Ok'"), "RCPT echoes no address (wording only)")


def outcome(
    trace: str, result: str, spec: list[str], message: str = "", tolerated: list[str] | None = None
) -> dict:
    return {
        "trace": trace,
        "outcome": result,
        "spec": spec,
        "message": message,
        "deviations": tolerated or [],
    }


def test_a_failure_that_is_only_known_deviations_is_a_deviation() -> None:
    failed = outcome("t", "failed", ["IN-3"], "step 7: expected text '2.1.5 a@b', got '2.1.5 Ok'")
    assert matrix.verdict(failed, [WORDING]) == matrix.Verdict("t", "deviation", (WORDING.reason,))
    mixed = outcome(
        "t", "failed", ["IN-3"], "expected text '2.1.5 a@b', got '2.1.5 Ok'\nno delivery matches x"
    )
    assert matrix.verdict(mixed, [WORDING]).status == "fail"


NDR_STATUS = Deviation(re.compile(r"no DSN recipient block matches .*failed 5\.0\.0"), "NDRs say 5.0.0")
MISSING_NDR = (
    'no delivery matches sink=fabrikam-mx, sender=<>, dsn={"status": "5.1.1"}\n'
    "sink fabrikam-mx from EX1: <> → ann@fabrikam.com: {differences}"
)


def test_a_missing_delivery_is_a_deviation_only_if_a_near_one_differs_by_known_deviations_alone() -> None:
    known = [NDR_STATUS, WORDING]
    only_status = MISSING_NDR.replace(
        "{differences}",
        "no DSN recipient block matches {'status': '5.1.1'} (have: rfc822;a@b failed 5.0.0; x)",
    )
    assert matrix.verdict(outcome("t", "failed", ["IN-3"], only_status), known).status == "deviation"
    # ... and then it is not an unexpected delivery either, where the trace wants nothing else.
    unexpected = f"{only_status}\nunexpected delivery: sink fabrikam-mx from EX1: <> → ann@fabrikam.com"
    assert matrix.verdict(outcome("t", "failed", ["IN-3"], unexpected), known).status == "deviation"
    stranger = f"{only_status}\nunexpected delivery: sink northwind-mx from EX1: <> → ann@fabrikam.com"
    assert matrix.verdict(outcome("t", "failed", ["IN-3"], stranger), known).status == "fail"
    # A known difference does not cover an unknown one on the same delivery.
    also_subject = MISSING_NDR.replace(
        "{differences}",
        "header Subject: 'x' does not match /y/; "
        "no DSN recipient block matches {'status': '5.1.1'} (have: rfc822;a@b failed 5.0.0)",
    )
    assert matrix.verdict(outcome("t", "failed", ["IN-3"], also_subject), known).status == "fail"
    # Nothing near it: the delivery did not happen, whatever the deviations say about differences.
    nothing = 'no delivery matches sink=fabrikam-mx, sender=<>, dsn={"status": "5.1.1"}'
    assert matrix.verdict(outcome("t", "failed", ["IN-3"], nothing), known).status == "fail"


def test_a_pass_that_tolerated_deviations_shows_them() -> None:
    passed = outcome("t", "passed", ["IN-3"], tolerated=["expected x, got y (known deviation: wording only)"])
    assert matrix.verdict(passed, []) == matrix.Verdict("t", "deviation", ("wording only",))
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
    page = matrix.to_html(table, ["reference", "other"])
    assert page.count("<tr>") == len(table) + 1 and "#ffcdd2" in page


def test_postfix_deviations_load_and_tolerate_only_wording() -> None:
    known = deviations("postfix:EX2")
    assert known and all(d.reason for d in known)
    tolerate = get("postfix").tolerate("relay/x")
    assert tolerate is not None
    assert tolerate("expected text '2.1.5 bob@contoso.com', got '2.1.5 Ok'") is not None
    # A refused recipient where Exchange accepts is behaviour, not wording: never tolerated.
    assert tolerate("expected code 250, got 550") is None
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
