"""Stopping mailflow with SIGTERM or SIGHUP while its lab runs cleans up as Ctrl-C does: `lab up`, `run`
(also on pytest-xdist workers, and when the workers lose their controller), `matrix` and `diff` are
started as real processes with Postfix standing in for EX1, signalled once their lab is up, and then
nothing of the lab may be left: no Postfix or Dovecot process, no namespace, veth or bridge, no state
file. A command the signal interrupted exits 128 + the signal's number; `lab up`, whose normal end is a
signal, exits 0.

These need root and Postfix (scripts/install_mtas.sh); without them they are skipped with the reason.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from leftovers import (
    MAILFLOW,
    Seen,
    child_env,
    hold_traces,
    left_behind,
    short_folder,
    subnet,
    wait_for_labs,
    wait_until_answering,
    wait_until_gone,
)

from harness import targets

UNAVAILABLE = targets.POSTFIX.unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")
BAND = 130


def start(tmp_path: Path, *arguments: str) -> tuple[subprocess.Popen[bytes], Path]:
    output = tmp_path / "mailflow.out"
    env = child_env(MAILFLOW_NETNS_SUBNET=subnet(BAND))
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [MAILFLOW, *arguments],
            # As from a terminal: under `nohup` (a CI job started so) SIGHUP would be inherited ignored,
            # and mailflow rightly keeps an ignored SIGHUP ignored.
            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    return process, output


def stop(process: subprocess.Popen[bytes], output: Path, number: int, timeout: float = 90) -> int:
    process.send_signal(number)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(
            f"mailflow still running {timeout} s after the signal:\n{output.read_text()}"
        ) from None


def assert_real_lab(seen: Seen) -> None:
    """The lab the test watches is the real thing: Postfix's master and Dovecot ran in its namespace."""
    assert {"master", "dovecot"} <= seen.names(), seen.processes


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_lab_up_stopped_by_a_signal_leaves_nothing(tmp_path: Path, number: signal.Signals) -> None:
    with short_folder() as workdir:
        process, output = start(tmp_path, "lab", "up", "--target", "postfix", "--workdir", str(workdir))
        wait_until_answering(process, output)
        seen = wait_for_labs(process, 1, output)
        assert_real_lab(seen)
        code = stop(process, output, number)
    # A signal is how `lab up` is meant to end: after its clean-up it exits 0.
    assert code == 0, output.read_text()
    assert left_behind(seen) == []


def test_run_stopped_by_sigterm_leaves_nothing(tmp_path: Path) -> None:
    process, output = start(tmp_path, "run", "--target", "postfix", *hold_traces(tmp_path))
    seen = wait_for_labs(process, 1, output)
    assert_real_lab(seen)
    assert stop(process, output, signal.SIGTERM) == 143, output.read_text()
    assert left_behind(seen) == []


def test_run_on_two_workers_stopped_by_sigterm_leaves_nothing(tmp_path: Path) -> None:
    process, output = start(tmp_path, "run", "-n", "2", "--target", "postfix", *hold_traces(tmp_path, 2))
    seen = wait_for_labs(process, 2, output)
    # The labs are the workers' own, not the controller's.
    assert {state["pid"] for state in seen.states.values()}.isdisjoint({process.pid})
    assert stop(process, output, signal.SIGTERM) == 143, output.read_text()
    assert left_behind(seen) == []


def test_workers_whose_controller_is_killed_stop_their_labs(tmp_path: Path) -> None:
    process, output = start(tmp_path, "run", "-n", "2", "--target", "postfix", *hold_traces(tmp_path, 2))
    seen = wait_for_labs(process, 2, output)
    process.kill()  # the controller cannot clean up; its orphaned workers must
    process.wait()
    assert wait_until_gone(seen, timeout=60) == []


def test_matrix_stopped_by_sigterm_leaves_nothing_and_goes_no_further(tmp_path: Path) -> None:
    # After Postfix, the reference MTA would hold the same trace for another minute.
    process, output = start(
        tmp_path, "matrix", "--target", "postfix", "--target", "reference", *hold_traces(tmp_path)
    )
    seen = wait_for_labs(process, 1, output)
    began = time.monotonic()
    assert stop(process, output, signal.SIGTERM) == 143, output.read_text()
    assert time.monotonic() - began < 45, "matrix went on to its next target"
    assert left_behind(seen) == []
    assert not (tmp_path / "reports" / "matrix.md").exists()


def test_diff_stopped_by_sigterm_leaves_nothing(tmp_path: Path) -> None:
    process, output = start(
        tmp_path, "diff", "--target", "postfix", "--target", "reference", *hold_traces(tmp_path)
    )
    seen = wait_for_labs(process, 1, output)
    assert_real_lab(seen)
    assert stop(process, output, signal.SIGTERM) == 143, output.read_text()
    assert left_behind(seen) == []
