"""What became of a trace, in one vocabulary: its outcome, the structured reason behind it, and the exit
code a run of several traces ends with (harness/exit_codes.py).

Outcomes:
- passed: the target did what the trace expects (known deviations of the target included);
- failed: it did not; the reason is the first differing step, with the reply received;
- skipped: the target lacks what the trace needs, or cannot run here;
- invalid: the trace file is wrong (the reason names its file and line);
- error: the set-up the trace ran in is wrong, the user's to fix: a variable the trace takes from the
  environment is not set, or the lab's addresses are in use (another run, another program);
- broken: the lab, the real MTA or mailflow itself failed (only a bug in mailflow has a traceback).

A reason is a plain mapping (it travels from pytest-xdist workers and is written to `last-run.json`):
`kind`, `message` (one line), and where known `file`, `line`, `step`, `expected`, `received`,
`traceback`. Beside it, a failed trace's outcome carries `failures`, its failure records
(harness/judge/records.py: `Failure.to_json`), and `waived`, those its target's known deviations
explained: what `mailflow matrix` judges, rather than the sentences in `message`.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from harness.corpus.script import ScriptError
from harness.exit_codes import ExitCode
from harness.lab.gc import GlobalCatalogError
from harness.lab.netns import NetnsError
from harness.lab.runtime import LabError
from harness.run.replay import ConnectError
from harness.targets import NoSuchServer
from harness.targets.daemon import StandInError
from harness.yamlsource import SourceError

OUTCOMES = ("passed", "failed", "error", "broken", "invalid", "skipped")

Reason = dict[str, Any]

# When a run has traces of several kinds, the exit code is the one that says most about whether the
# run itself can be trusted: a broken lab or harness (3) before invalid input (2) before a failed trace
# (1). A CI job then looks at its set-up before it looks at the target (docs/exit-codes.md).
_SEVERITY = (ExitCode.OK, ExitCode.FAILED, ExitCode.INPUT, ExitCode.BROKEN)


def code_of(outcome: Mapping[str, Any]) -> ExitCode:
    """The exit code one trace's outcome calls for. A set-up error is input (2), except an address in
    use, which is the lab failing to start (3), as `mailflow lab up` reports it."""
    name = outcome["outcome"]
    if name == "error":
        kind = (outcome.get("reason") or {}).get("kind")
        return ExitCode.BROKEN if kind == "address" else ExitCode.INPUT
    return {"failed": ExitCode.FAILED, "invalid": ExitCode.INPUT, "broken": ExitCode.BROKEN}.get(
        str(name), ExitCode.OK
    )


def worst(codes: Iterable[ExitCode]) -> ExitCode:
    """Of several exit codes, the one that wins: 3, then 2, then 1, then 0."""
    return max(codes, key=_SEVERITY.index, default=ExitCode.OK)


def exit_code(outcomes: Iterable[Mapping[str, Any]]) -> ExitCode:
    """The exit code of a run whose traces ended as `outcomes` (an empty run is the caller's to judge)."""
    return worst(code_of(outcome) for outcome in outcomes)


def run_exit_code(pytest_code: int, outcomes: list[dict[str, Any]]) -> ExitCode:
    """pytest's exit code and the traces' outcomes as one of mailflow's exit codes."""
    if pytest_code == pytest.ExitCode.NO_TESTS_COLLECTED:
        return ExitCode.INPUT  # nothing matched: the paths or -k expression are wrong
    if pytest_code == pytest.ExitCode.USAGE_ERROR:
        return ExitCode.INPUT
    if pytest_code in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR):
        return ExitCode.BROKEN  # the run did not finish: its results cannot be trusted
    code = exit_code(outcomes)
    if code == ExitCode.OK and pytest_code != pytest.ExitCode.OK:
        # pytest saw a failure no trace accounts for (a collection error outside any trace).
        return ExitCode.BROKEN
    return code


def problem(exc: BaseException) -> tuple[str, Reason]:
    """The outcome (invalid, error or broken) and reason for an exception that stopped a trace, in the user's
    terms: a traceback only for what can only be a bug in mailflow."""
    if isinstance(exc, SourceError):
        return "invalid", {
            "kind": "invalid",
            "message": f"{exc.field}: {exc.message}" if exc.field else exc.message,
            "file": exc.path,
            "line": exc.line,
        }
    if isinstance(exc, ScriptError):
        if exc.key == "auth":
            return "error", {"kind": "environment", "message": exc.message}
        return "invalid", {"kind": "invalid", "message": exc.message}
    if isinstance(exc, LabError) and isinstance(exc.__cause__, OSError):
        return "error", {"kind": "address", "message": f"the lab could not start: {exc}"}
    if isinstance(exc, ValueError) and str(exc).startswith("MAILFLOW_"):
        # harness/run/runner.py: relocation() refuses a MAILFLOW_* variable it cannot use.
        return "error", {"kind": "environment", "message": str(exc)}
    if isinstance(exc, NoSuchServer):
        return "error", {"kind": "input", "message": str(exc)}
    if isinstance(exc, StandInError):
        return "broken", {"kind": "target", "message": f"the target could not run: {exc}"}
    if isinstance(exc, ConnectError):
        return "broken", {"kind": "lab", "message": str(exc)}
    if isinstance(exc, LabError | NetnsError | GlobalCatalogError):
        return "broken", {"kind": "lab", "message": f"the lab could not run: {exc}"}
    text = "".join(traceback.format_exception(exc)).rstrip()
    return "broken", {
        "kind": "harness",
        "message": f"mailflow failed (a bug; the traceback is in the run's JSON results): "
        f"{type(exc).__name__}: {exc}",
        "traceback": text,
    }


def one_line(reason: Mapping[str, Any]) -> str:
    """A reason as the summary shows it: where, then what."""
    message = " ".join(str(reason.get("message") or "").split())
    where = ""
    if reason.get("file"):
        where = f"{reason['file']}:{reason['line']}: " if reason.get("line") else f"{reason['file']}: "
    return where + message
