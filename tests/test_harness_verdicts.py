"""The harness judges traces: a wrong expectation fails with a readable message, a broken trace is
"broken" with file and line, and the Allure results carry labels, steps and attachments."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from harness.cli import app
from harness.corpus import trace
from harness.exit_codes import ExitCode
from harness.judge.records import Failure, Kind
from harness.run.replay import Exchange, SessionResult
from harness.run.runner import SessionRun, TraceResult

ROOT = Path(__file__).resolve().parents[1]
GOOD = ROOT / "traces" / "inbound" / "local-mailbox-on-gateway.yaml"
REFUSED = ROOT / "traces" / "inbound" / "no-smtp-on-directory-host.yaml"


def _copy_trace(pytester: pytest.Pytester, text: str, name: str = "t.yaml") -> Path:
    folder = pytester.path / "traces"
    folder.mkdir(exist_ok=True)
    shutil.copy(ROOT / "fixtures" / "messages" / "plain.eml", folder / "plain.eml")
    path = folder / name
    path.write_text(text)
    return path


def _results(directory: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in directory.glob("*-result.json")]


def test_a_correct_trace_passes_and_writes_allure_labels_steps_and_attachments(
    pytester: pytest.Pytester,
) -> None:
    _copy_trace(pytester, GOOD.read_text())
    alluredir = pytester.path / "allure"
    result = pytester.runpytest_subprocess("traces", f"--alluredir={alluredir}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    (report,) = _results(alluredir)
    assert report["status"] == "passed"
    labels = {(label["name"], label["value"]) for label in report["labels"]}  # type: ignore[union-attr,index]
    assert ("epic", "Inbound") in labels
    assert ("tag", "IN-6a") in labels and ("tag", "C-CAT") in labels
    steps = [step["name"] for step in report["steps"]]  # type: ignore[union-attr,index]
    assert re.fullmatch(r"Session 1: internet → 127\.\d+\.0\.11:\d+", steps[0])
    assert any(s.startswith("Check tracking on EX1") for s in steps)
    inner = [s["name"] for s in report["steps"][0]["steps"]]  # type: ignore[index]
    assert "C: MAIL FROM:<ann@fabrikam.com>" in inner
    attachments = {a["name"] for a in report["attachments"]}  # type: ignore[union-attr,index]
    assert {
        "tracking log excerpt",
        "DNS query log",
        "LDAP query log",
        "message path",
        "message path diagram",
    } <= attachments
    parameters = {p["name"]: p["value"] for p in report["parameters"]}  # type: ignore[union-attr,index]
    assert "reference" in str(parameters["target"])


def test_a_wrong_reply_expectation_fails_with_expected_and_actual(pytester: pytest.Pytester) -> None:
    text = GOOD.read_text().replace(
        "- send: RCPT TO:<alice@contoso.com>\n      - expect: {code: 250, enhanced: 2.1.5}",
        "- send: RCPT TO:<nancy@northwind.example>\n      - expect: {code: 250}",
    )
    assert "northwind" in text
    _copy_trace(pytester, text)
    alluredir = pytester.path / "allure"
    result = pytester.runpytest_subprocess("traces", f"--alluredir={alluredir}", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    # Steps count from 1 like sessions, and the line is the step's in the trace file.
    line = text.splitlines().index("      - expect: {code: 250}") + 1
    result.stdout.fnmatch_lines(
        [f"*session 1 (internet), step 7 (line {line}): S: expect 250: expected code 250, got 550*"]
    )
    (report,) = _results(alluredir)
    assert report["status"] == "failed"
    (failing,) = [s for s in report["steps"][0]["steps"] if s["status"] == "failed"]  # type: ignore[index]
    assert failing["name"] == "S: expect 250"
    assert failing["statusDetails"]["message"].startswith("AssertionError: expected code 250, got 550")
    (reply,) = [a for a in failing["attachments"] if a["name"] == "reply"]
    assert (
        alluredir / reply["source"]
    ).read_text() == "550 5.7.1 Unable to relay for nancy@northwind.example"


def test_a_wrong_outcome_expectation_fails_naming_both_sides(pytester: pytest.Pytester) -> None:
    text = GOOD.read_text().replace(
        "EX1: [1019, 1025, 1024, 1033, 1036, 1028, 1023]", "EX1: [1019, 1025, 1024, 1033, 1034, 1020, 1031]"
    )
    text = text.replace("server: EX1\n      sender", "server: EX2\n      sender")
    _copy_trace(pytester, text)
    result = pytester.runpytest_subprocess("traces", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*mailbox alice@contoso.com on EX1 (from ann@fabrikam.com): stored on EX1, expected EX2*",
            "*tracking on EX1: expected [[]1019, 1025, 1024, 1033, 1034, 1020, 1031[]], "
            "got [[]1019, 1025, 1024, 1033, 1036, 1028, 1023[]]*",
        ]
    )


def test_a_malformed_trace_is_broken_with_file_and_line(pytester: pytest.Pytester) -> None:
    text = GOOD.read_text().replace("spec: [IN-3,", "spec: [IN-99,")
    line = text.splitlines().index(next(x for x in text.splitlines() if x.startswith("spec:"))) + 1
    path = _copy_trace(pytester, text)
    alluredir = pytester.path / "allure"
    result = pytester.runpytest_subprocess("traces", f"--alluredir={alluredir}", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{path}:{line}: spec[[]0[]]: unknown catalogue ID 'IN-99'*"])
    (report,) = _results(alluredir)
    assert report["status"] == "broken"


def test_no_trace_files_means_no_tests_not_success(pytester: pytest.Pytester) -> None:
    (pytester.path / "traces").mkdir()
    result = pytester.runpytest_subprocess("traces", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def _failed_run(client: str, index: int, title: str, failure: str) -> SessionRun:
    exchange = Exchange(index, title, b"", None, [], None)
    exchange.fail(Kind.STEP, failure)
    return SessionRun(
        client, "127.0.0.1:10025", SessionResult([exchange], "", False, "none", ("127.0.0.1", 0))
    )


def test_failures_count_steps_from_one_and_name_the_trace_line() -> None:
    loaded = trace.load(GOOD)
    run = _failed_run("internet", 6, "S: expect {code: 250, enhanced: 2.1.5}", "")
    run.result.exchanges[0].records[0] = Failure(
        Kind.CODE, "250", "550", step=7, title=run.result.exchanges[0].title
    )
    line = GOOD.read_text().splitlines().index("      - expect: {code: 250, enhanced: 2.1.5}") + 1
    assert TraceResult(loaded, "reference", [run]).failures() == [
        f"session 1 (internet), step 7 (line {line}): S: expect {{code: 250, enhanced: 2.1.5}}: "
        "expected code 250, got 550"
    ]


def test_a_refused_session_failure_names_its_refused_line() -> None:
    loaded = trace.load(REFUSED)
    run = _failed_run("internet", 0, "connect is refused", "it was accepted")
    line = REFUSED.read_text().splitlines().index("    refused: true") + 1
    assert TraceResult(loaded, "reference", [run]).failures() == [
        f"session 1 (internet), step 1 (line {line}): connect is refused: it was accepted"
    ]


def test_mailflow_run_never_shows_the_previous_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    stale = [
        {"trace": "old/run", "spec": ["IN-1"], "target": "reference", "outcome": "passed", "duration": 1.0}
    ]
    (reports / "last-run.json").write_text(json.dumps(stale))

    def interrupted(args: list[str], plugins: list[Any]) -> pytest.ExitCode:
        # Stops before pytest_sessionfinish, which is what writes the summary.
        return pytest.ExitCode.INTERRUPTED

    monkeypatch.setattr(app, "pytest", SimpleNamespace(main=interrupted, ExitCode=pytest.ExitCode))
    monkeypatch.setattr(app, "console", Console(width=200))
    result = CliRunner().invoke(app.main, ["run", str(GOOD), "--reports", str(reports)])
    # An unfinished run cannot be trusted: the harness's exit code, not pytest's.
    assert result.exit_code == ExitCode.BROKEN
    assert not (reports / "last-run.json").exists()
    assert "old/run" not in result.output
    assert "0 traces: 0 passed, 0 failed" in result.output
    assert "the run did not finish" in result.output
