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

from harness.cli import main
from harness.lab import config as lab_config

BASE = f"127.{220 + WORKER % 10}.0.0"


def listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def test_run_on_the_embedded_lab_stopped_by_sigterm_exits_143_with_the_lab_gone(tmp_path: Path) -> None:
    trace = tmp_path / "traces" / "hold.yaml"
    trace.parent.mkdir()
    trace.write_text(HOLD.format(name="embedded"), encoding="utf-8")
    config = lab_config.load(lab_config.lab_path("contoso"), base=BASE)
    ex1 = config.organization.server("EX1").default_virtual_server
    output = tmp_path / "mailflow.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [MAILFLOW, "run", str(trace)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=child_env(MAILFLOW_LAB_BASE=BASE),
        )
    try:
        deadline = time.monotonic() + 120
        while not listening(ex1.address, ex1.port):
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        process.kill()
        process.wait()
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
    trace = tmp_path / "traces" / "hold.yaml"
    trace.parent.mkdir()
    trace.write_text(HOLD.format(name="starting"), encoding="utf-8")
    base = f"127.{230 + WORKER % 10}.0.0"
    config = lab_config.load(lab_config.lab_path("contoso"), base=base)
    ex1 = config.organization.server("EX1").default_virtual_server
    for attempt in range(3):
        output = tmp_path / f"mailflow-{attempt}.out"
        with output.open("wb") as sink:
            process = subprocess.Popen(
                [MAILFLOW, "run", str(trace)],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env=child_env(MAILFLOW_LAB_BASE=base),
            )
        try:
            deadline = time.monotonic() + 120
            while not listening(ex1.address, ex1.port):
                assert process.poll() is None and time.monotonic() < deadline, output.read_text()
                time.sleep(0.005)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 143, output.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        said = output.read_text()
        assert "Task was destroyed" not in said and "Traceback" not in said, said
