"""pytest plugin: every trace file under a `traces/` folder is collected as a test, through public
hooks only (pytest_collect_file, Item.runtest, repr_failure).

A trace that fails its expectations raises AssertionError (Allure "failed"); a trace that cannot be
loaded or a lab that cannot run raises something else (Allure "broken"). With `--mailflow-results FILE`
the outcome of every trace is written as JSON for `mailflow coverage` and the CLI summary.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import matrix, report, signals, targets, update
from harness.runner import TraceResult, run_trace
from harness.targets.known_deviations import deviations
from harness.trace import Trace, is_trace_file, load
from harness.yamlsource import SourceError

MAX_UPDATE_ROUNDS = 50  # a trace with more mismatches than this is better recorded again


class TraceFailed(AssertionError):
    """The target did not behave as the trace expects."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mailflow")
    group.addoption(
        "--mailflow-target", default="reference", help="target standing in for the server under test"
    )
    group.addoption("--mailflow-results", default=None, help="write per-trace outcomes as JSON to this file")
    group.addoption(
        "--mailflow-update",
        action="store_true",
        help="rewrite failing expect steps to the replies received (mailflow run --update)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        # A pytest-xdist worker runs labs of its own: it stops them on SIGTERM and SIGHUP as on Ctrl-C,
        # and when the process that started it dies.
        signals.install(worker=True)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    signals.session_ended(worker=hasattr(config, "workerinput"))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if is_trace_file(file_path):
        collected: TraceFile = TraceFile.from_parent(parent, path=file_path)
        return collected
    return None


class TraceFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        try:
            trace: Trace | None = load(self.path)
            error: SourceError | None = None
        except SourceError as exc:
            trace, error = None, exc
        name = trace.id if trace is not None else self.path.stem
        yield TraceItem.from_parent(self, name=name, trace=trace, load_error=error)


class TraceItem(pytest.Item):
    def __init__(self, *, trace: Trace | None, load_error: SourceError | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trace = trace
        self.load_error = load_error
        if trace is not None:
            self.user_properties.append(
                (
                    "mailflow",
                    {
                        "trace": trace.id,
                        "spec": list(trace.spec),
                        "path": str(trace.path),
                        "boundary": sorted(trace.boundary),
                    },
                )
            )

    def runtest(self) -> None:
        try:
            self._run()
        except (TraceFailed, pytest.skip.Exception):
            raise
        except Exception:
            self.user_properties.append(("mailflow_verdict", "broken"))
            raise

    def _run(self) -> None:
        if self.load_error is not None:
            raise self.load_error
        assert self.trace is not None
        target = targets.get(self.config.getoption("mailflow_target"))
        self.user_properties.append(("mailflow_target", target.name))
        report.label(self.trace, target.name)
        missing = target.missing(self.trace)
        if missing:
            pytest.skip(f"target {target.name} lacks {', '.join(missing)}")
        unavailable = target.unavailable()
        if unavailable:
            pytest.skip(f"target {target.name} cannot run here: {unavailable}")
        result = run_trace(self.trace, target)
        if not result.passed and self.config.getoption("mailflow_update"):
            result = self._update(target, result)
        report.publish(result)
        tolerated = list(result.deviations)
        if not result.passed:
            # What differs only by the target's known deviations is a deviation, not a failure: the
            # same judgement as the conformance matrix's, so `mailflow run` agrees with `mailflow matrix`.
            found = matrix.verdict(result.as_outcome(), deviations(target.name))
            if found.status != "deviation":
                self.user_properties.append(("mailflow_deviations", tolerated))
                raise TraceFailed("\n".join(result.failures()))
            report.deviated(result.failures(), found.reasons)
            tolerated += [f"{line} (known deviation: {reason})" for line, reason in found.explained]
        self.user_properties.append(("mailflow_deviations", tolerated))

    def _update(self, target: targets.Target, result: TraceResult) -> TraceResult:
        """Rewrite the failing expectations and replay, until the trace passes or nothing more can be
        rewritten (a replay stops at its first mismatch, so each round may find the next one)."""
        assert self.trace is not None
        diffs: list[str] = []
        for _ in range(MAX_UPDATE_ROUNDS):
            change = update.rewrite(self.trace, result)
            diffs += [change.diff, *(f"{change.path}: {problem}\n" for problem in change.problems)]
            if not change.diff:
                break
            self.trace = load(self.trace.path)
            result = run_trace(self.trace, target)
            if result.passed:
                break
        self.user_properties.append(("mailflow_update", "".join(diffs)))
        return result

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, TraceFailed | SourceError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, 0, f"trace {self.name}"


_outcomes: list[dict[str, Any]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    properties: dict[str, Any] = dict(report.user_properties)
    info = properties.get("mailflow")
    if info is None or report.when != "call":
        return
    outcome = properties.get("mailflow_verdict", report.outcome)
    _outcomes.append(
        {
            **info,
            "target": properties.get("mailflow_target", "reference"),
            "outcome": outcome,
            "duration": report.duration,
            "message": _message(report),
            "deviations": properties.get("mailflow_deviations", []),
            "update": properties.get("mailflow_update", ""),
        }
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    # One process may run several sessions (`mailflow matrix`, one per target): each starts afresh.
    _outcomes.clear()


def _message(report: pytest.TestReport) -> str:
    """The failures of a failed trace, or why a trace was skipped."""
    if report.failed:
        return report.longreprtext[:4000]
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return ""


def pytest_sessionfinish(session: pytest.Session) -> None:
    destination = session.config.getoption("mailflow_results", None)
    if destination and not hasattr(session.config, "workerinput"):
        path = Path(destination)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_outcomes, indent=1), encoding="utf-8")
