"""`mailflow coverage` over a real run's results: per catalogue ID the traces that show it (by the
evidence rule, not by their `spec:` alone) and show its boundary, how many of them passed on each
target, a JSON form, and the `--min` gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.exit_codes import ExitCode
from tests.mailflow_cli import GOOD, failing_trace, mailflow


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The results of one real run: GOOD (RELAY-1, and IN-3 and IN-7b as boundaries) passes, and a copy
    of it that expects 250 where EX1 refuses the relay fails."""
    folder = tmp_path_factory.mktemp("coverage")
    failing, _ = failing_trace(folder)
    done = mailflow("run", "--reports", str(folder / "reports"), str(GOOD), str(failing), cwd=folder)
    assert done.returncode == ExitCode.FAILED, done.stdout + done.stderr
    return folder


def _coverage(folder: Path, *args: str) -> tuple[int, str, str]:
    done = mailflow(
        "coverage", "--results", str(folder / "reports" / "last-run.json"), *args, cwd=folder, columns=200
    )
    return done.returncode, done.stdout, done.stderr


def test_json_counts_showing_boundary_and_passing_traces(ran: Path) -> None:
    code, out, err = _coverage(ran, "--json", str(GOOD), str(ran / "failing.yaml"))
    assert code == ExitCode.OK, out + err
    report = json.loads(out)
    assert report["targets"] == ["reference"]
    ids = {entry["id"]: entry for entry in report["ids"]}
    relay = ids["RELAY-1"]
    # The copy that expects 250 at RCPT no longer asserts the refusal that shows RELAY-1.
    assert relay["showing"] == ["relay/relay-denied-by-default"]
    assert relay["unshown"] == ["try/relay-expected-wrongly"]
    assert relay["targets"]["reference"]["showing_passed"] == 1
    assert relay["targets"]["reference"]["outcomes"] == {
        "relay/relay-denied-by-default": "passed",
        "try/relay-expected-wrongly": "failed",
    }
    # A boundary claim counts under "bounding", not "showing".
    assert ids["IN-3"]["showing"] == [] and ids["IN-3"]["bounding"] == ["relay/relay-denied-by-default"]
    assert ids["IN-3"]["targets"]["reference"]["bounding_passed"] == 1
    assert ids["OUT-1"]["claimed_by"] == []


def test_min_gate_names_the_ids_short_of_passing_traces(ran: Path) -> None:
    code, _, err = _coverage(ran, "--min", "1", "--flow", "Relay", str(GOOD), str(ran / "failing.yaml"))
    assert code == ExitCode.FAILED
    # RELAY-1 has one passing showing trace; the other Relay IDs have none.
    assert "RELAY-1:" not in err
    assert "RELAY-2: shown by 0 trace(s) that passed on reference, fewer than 1" in err
    code, _, err = _coverage(ran, "--min", "2", "--flow", "relay", str(GOOD), str(ran / "failing.yaml"))
    assert "RELAY-1: shown by 1 trace(s) that passed on reference, fewer than 2" in err


def test_table_shows_passed_of_showing_per_target(ran: Path) -> None:
    code, out, _ = _coverage(ran, str(GOOD), str(ran / "failing.yaml"))
    assert code == ExitCode.OK
    row = next(line for line in out.splitlines() if "RELAY-1 " in line)
    assert "1/1 passed, 1 failed" in row


def test_wrong_target_and_flow_are_input_errors(ran: Path) -> None:
    code, _, err = _coverage(ran, "--min", "1", "--target", "postfix", str(GOOD))
    assert code == ExitCode.INPUT
    assert "--target: the results have no run on 'postfix'; targets run: reference" in " ".join(err.split())
    code, _, err = _coverage(ran, "--min", "1", "--flow", "Outbund", str(GOOD))
    assert code == ExitCode.INPUT
    assert "--flow: no flow 'Outbund'; flows: " in " ".join(err.split())
