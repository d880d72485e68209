"""SIGTERM stops a command as Ctrl-C does, on the embedded lab too (no root, no real MTA): `mailflow run`
is started as a real process, signalled while its trace holds a session open on EX1, and must exit
143 with EX1 no longer listening. A command run in-process (as the tests do with CliRunner) leaves the
process's signal handlers as they were.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from click.testing import CliRunner
from leftovers import HOLD, MAILFLOW, WORKER, child_env

from harness.cli.app import main
from harness.lab import config as lab_config

BASE = f"127.{220 + WORKER % 10}.0.0"


def listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def run_stopped_once_ex1_answers(trace: Path, base: str, output: Path, poll: float) -> int:
    """`mailflow run TRACE` on a lab at `base`, sent SIGTERM as soon as EX1 answers; its exit code."""
    config = lab_config.load(lab_config.lab_path("contoso"), base=base)
    ex1 = config.organization.server("EX1").default_virtual_server
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [MAILFLOW, "run", str(trace)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=trace.parent.parent,
            env=child_env(MAILFLOW_LAB_BASE=base),
        )
    try:
        deadline = time.monotonic() + 120
        while not listening(ex1.address, ex1.port):
            assert process.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(poll)
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def hold_trace(tmp_path: Path, name: str) -> Path:
    trace = tmp_path / "traces" / "hold.yaml"
    trace.parent.mkdir()
    trace.write_text(HOLD.format(name=name), encoding="utf-8")
    return trace


def test_run_on_the_embedded_lab_stopped_by_sigterm_exits_143_with_the_lab_gone(tmp_path: Path) -> None:
    output = tmp_path / "mailflow.out"
    # The trace holds its session open on EX1: the signal comes while the lab is in use.
    code = run_stopped_once_ex1_answers(hold_trace(tmp_path, "embedded"), BASE, output, poll=0.1)
    assert code == 143, output.read_text()
    assert "stopped by SIGTERM" in output.read_text()


def test_a_command_run_in_process_leaves_the_signal_handlers_as_they_were() -> None:
    before = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    result = CliRunner().invoke(main, ["catalogue"])
    assert result.exit_code == 0, result.output
    assert {number: signal.getsignal(number) for number in before} == before


def test_sigterm_while_the_lab_starts_stops_it_without_noise(tmp_path: Path) -> None:
    """A signal as soon as EX1 answers (the lab still starting its other hosts) cuts the start short:
    nothing of it goes on in the lab's thread, and no pending task is destroyed with the loop."""
    trace = hold_trace(tmp_path, "starting")
    base = f"127.{230 + WORKER % 10}.0.0"
    for attempt in range(3):
        output = tmp_path / f"mailflow-{attempt}.out"
        assert run_stopped_once_ex1_answers(trace, base, output, poll=0.005) == 143, output.read_text()
        said = output.read_text()
        assert "Task was destroyed" not in said and "Traceback" not in said, said
