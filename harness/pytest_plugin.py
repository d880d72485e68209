"""pytest plugin: every trace file is collected as a test (which YAML files are traces:
`harness.corpus.trace.is_trace_file`), marked with its flows and catalogue IDs (`corpus/markers.py`),
through
public hooks only (pytest_collect_file, Item.runtest, repr_failure).

A trace that fails its expectations raises AssertionError (Allure "failed"); a trace that cannot be
loaded or a lab that cannot run raises something else (Allure "broken"). With `--mailflow-results FILE`
the outcome of every trace is written as JSON for `mailflow coverage` and the CLI summary.

With `--mailflow-shard K/N` only shard K's part of the selected traces runs (`harness/run/shard.py`,
balanced by the durations in `--mailflow-durations FILE` when given); the other traces are deselected,
after -k and -m, and the shard's record is written beside the results. A shard that gets nothing because
there are more shards than traces ends with exit 0, not pytest's 5 (docs/decisions.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import targets
from harness.capture import update
from harness.corpus import markers
from harness.corpus.trace import Trace, is_trace_file, load
from harness.judge.deviations import deviations
from harness.lab import docker_lab, runtime
from harness.reports import allure as allure_report
from harness.reports import allure_writer, matrix
from harness.run import outcomes, shard, signals
from harness.run.runner import TraceResult, run_trace
from harness.yamlsource import SourceError

MAX_UPDATE_ROUNDS = 50  # a trace with more mismatches than this is better recorded again


class TraceFailed(AssertionError):
    """The target did not behave as the trace expects."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mailflow")
    group.addoption(
        "--mailflow-target",
        default="reference",
        help="target standing in for the server under test: reference, postfix, exim, opensmtpd "
        "(postfix:EX2), smtp://HOST[:PORT], submission://HOST[:PORT], smtps://HOST[:PORT] or a target "
        "profile file",
    )
    group.addoption(
        "--mailflow-backend",
        default="local",
        choices=targets.BACKENDS,
        help="where the lab's hosts run: local (this process; a real MTA in a network namespace) or "
        "docker (each host in a container of its own)",
    )
    group.addoption("--mailflow-results", default=None, help="write per-trace outcomes as JSON to this file")
    group.addoption(
        "--mailflow-update",
        action="store_true",
        help="rewrite failing expect steps to the replies received (mailflow run --update)",
    )
    group.addoption(
        "--mailflow-shard",
        default=None,
        metavar="K/N",
        help="run only shard K of N: the selected traces split in N parts of about equal work",
    )
    group.addoption(
        "--mailflow-durations",
        default=None,
        metavar="FILE",
        help="an earlier run's last-run.json, whose durations balance the shards (default: by count)",
    )


# This run's shard and the durations that balance it; then what the shard ran (set where the traces are
# collected: here, or on a pytest-xdist worker, which sends it back to the controller).
_SHARDING = pytest.StashKey[tuple[shard.Shard, dict[str, float] | None]]()
_SPLIT = pytest.StashKey[shard.Split]()


@pytest.hookimpl(trylast=True)  # after allure-pytest's: allure_writer takes its file writer over
def pytest_configure(config: pytest.Config) -> None:
    markers.register(config)
    _configure_shard(config)
    allure_writer.take_over(config)
    if hasattr(config, "workerinput"):
        # A pytest-xdist worker runs labs of its own: it stops them on SIGTERM and SIGHUP as on Ctrl-C,
        # and when the process that started it dies.
        signals.install(worker=True)


def _configure_shard(config: pytest.Config) -> None:
    given = config.getoption("mailflow_shard", None)
    durations_file = config.getoption("mailflow_durations", None)
    if given is None:
        if durations_file is not None:
            raise pytest.UsageError("--mailflow-durations: it balances shards: give --mailflow-shard K/N too")
        return
    try:
        chosen = shard.parse(given)
    except ValueError as exc:
        raise pytest.UsageError(f"--mailflow-shard: {exc}") from None
    try:
        durations = shard.read_durations(Path(durations_file)) if durations_file else None
    except ValueError as exc:
        raise pytest.UsageError(f"--mailflow-durations: {exc}") from None
    config.stash[_SHARDING] = (chosen, durations)


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected theirs: the shards split what is left
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    sharding = config.stash.get(_SHARDING, None)
    if sharding is None:
        return
    chosen, durations = sharding
    mine, record = shard.split_of({item.nodeid: item.name for item in items}, chosen, durations)
    kept = set(mine)
    deselected = [item for item in items if item.nodeid not in kept]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = [item for item in items if item.nodeid in kept]
    config.stash[_SPLIT] = record
    if hasattr(config, "workeroutput"):
        config.workeroutput["mailflow_split"] = record.to_json()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist: a worker's record of its shard reaches the controller, which writes the results."""
    found = getattr(node, "workeroutput", {}).get("mailflow_split")
    if found is not None:
        node.config.stash[_SPLIT] = shard.Split.from_json(found)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    signals.session_ended(worker=hasattr(config, "workerinput"))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    # A file named on the command line is a trace whatever it holds; one found in a folder only if it is
    # in the corpus or looks like a trace.
    named = parent.session.isinitpath(file_path)
    if is_trace_file(file_path, named=named, root=parent.config.invocation_params.dir):
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
        item = TraceItem.from_parent(self, name=name, trace=trace, load_error=error)
        if trace is not None:
            for marker in markers.of(trace.spec):
                item.add_marker(marker)
            item.extra_keyword_matches.update(trace.spec)
        yield item


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
        if self.trace is None:
            # An invalid trace is counted and named like any other, by its file.
            self.user_properties.append(
                ("mailflow", {"trace": self.name, "spec": [], "path": str(self.path), "boundary": []})
            )
        try:
            self._run()
        except TraceFailed:
            raise
        except pytest.skip.Exception as exc:
            self.user_properties.append(("mailflow_reason", {"kind": "skipped", "message": str(exc.msg)}))
            raise
        except Exception as exc:
            verdict, reason = outcomes.problem(exc)
            reason.setdefault("file", str(self.path))
            self.user_properties.append(("mailflow_verdict", verdict))
            self.user_properties.append(("mailflow_reason", reason))
            raise

    def _run(self) -> None:
        if self.load_error is not None:
            raise self.load_error
        assert self.trace is not None
        target = targets.on_backend(
            targets.get(self.config.getoption("mailflow_target")), self.config.getoption("mailflow_backend")
        )
        self.user_properties.append(("mailflow_target", target.name))
        allure_report.label(self.trace, target.name)
        missing = target.missing(self.trace)
        if missing:
            pytest.skip(f"target {target.name} lacks {', '.join(missing)}")
        unavailable = target.unavailable(self.trace)
        if unavailable:
            pytest.skip(f"target {target.name} cannot run here: {unavailable}")
        result = run_trace(self.trace, target)
        if not result.passed and self.config.getoption("mailflow_update"):
            result = self._update(target, result)
        allure_report.publish(result)
        tolerated = list(result.deviations)
        judged = result.as_outcome()
        # The records, for `mailflow matrix` and last-run.json to judge without reading sentences.
        self.user_properties.append(("mailflow_failures", judged["failures"]))
        self.user_properties.append(("mailflow_waived", judged["waived"]))
        # What the target cannot show (a black box's tracking log, an outside MTA's mailboxes): said,
        # so that a pass is read as a pass of what was checked.
        unobserved = [c.title for c in result.checks if not c.observed]
        self.user_properties.append(("mailflow_unobserved", sorted(set(unobserved))))
        if not result.passed:
            # What differs only by the target's known deviations is a deviation, not a failure: the
            # same judgement as the conformance matrix's, so `mailflow run` agrees with `mailflow matrix`.
            found = matrix.verdict(judged, deviations(target.deviations_of or target.name))
            if found.status != "deviation":
                self.user_properties.append(("mailflow_deviations", tolerated))
                self.user_properties.append(("mailflow_reason", result.first_failure()))
                raise TraceFailed("\n".join(result.failures()))
            allure_report.deviated(result.failures(), found.reasons)
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
        _, reason = outcomes.problem(excinfo.value)
        if reason["kind"] != "harness":
            return outcomes.one_line(reason)  # the user's own set-up: no traceback to wade through
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
            "message": _message(report, properties),
            "reason": properties.get("mailflow_reason") or _reason(report),
            "deviations": properties.get("mailflow_deviations", []),
            "failures": properties.get("mailflow_failures", []),
            "waived": properties.get("mailflow_waived", []),
            "unobserved": properties.get("mailflow_unobserved", []),
            "update": properties.get("mailflow_update", ""),
        }
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    # One process may run several sessions (`mailflow matrix`, one per target): each starts afresh.
    _outcomes.clear()


def _message(report: pytest.TestReport, properties: dict[str, Any]) -> str:
    """Every failure of a failed trace (one per line, as harness/reports/matrix.py judges them), or the reason
    a trace was skipped, broken or invalid."""
    if report.passed:
        return ""
    if report.failed and properties.get("mailflow_verdict") is None:
        return _failure_text(report)
    reason = properties.get("mailflow_reason") or _reason(report) or {}
    return str(reason.get("message") or "")


def _failure_text(report: pytest.TestReport) -> str:
    # pytest-xdist puts a "[gw0] linux -- Python ..." line before a worker's failure text: not ours.
    lines = report.longreprtext.splitlines()
    return "\n".join(line for line in lines if not re.match(r"\[gw\d+\] ", line))


def _reason(report: pytest.TestReport) -> outcomes.Reason | None:
    """A reason for an outcome the trace item did not explain itself (pytest's own skip or error)."""
    if report.skipped and isinstance(report.longrepr, tuple):
        return {"kind": "skipped", "message": str(report.longrepr[2]).removeprefix("Skipped: ")}
    if report.failed:
        text = _failure_text(report)
        return {"kind": "failure", "message": text.splitlines()[0] if text else "failed", "traceback": text}
    return None


def pytest_sessionfinish(session: pytest.Session) -> None:
    if session.config.getoption("mailflow_backend", "local") == "docker":
        docker_lab.close_pools()  # this worker's containers, now rather than at its exit
    # Before a pytest-xdist worker says it has finished, after which it is soon stopped.
    allure_writer.drain(session.config)
    runtime.wait_for_folder_removals()
    if hasattr(session.config, "workerinput"):
        return
    record = session.config.stash.get(_SPLIT, None)
    empty = record is not None and record.selected and not record.traces
    if empty and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        # More shards than traces: this one has nothing to do, which is no failure. A run that selected
        # nothing at all (a wrong path, -k or -m) keeps pytest's 5.
        session.exitstatus = pytest.ExitCode.OK
    destination = session.config.getoption("mailflow_results", None)
    if destination:
        path = Path(destination)
        _write(path, _outcomes)
        if record is not None:
            _write(shard.record_path(path), record.to_json())
        else:
            shard.record_path(path).unlink(missing_ok=True)  # an earlier shard's: this run is whole


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed into place: a signal during the write leaves the previous file or the new
    # one, never half of one.
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=1), encoding="utf-8")
    partial.replace(path)
