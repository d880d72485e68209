"""`mailflow lab up` in a process of its own, as a user runs it: started with its environment, waited
for until its control socket answers, stopped with Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from harness.cli.app import main

MAILFLOW = str(Path(sys.executable).with_name("mailflow"))


def environment(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILFLOW_", "PYTEST_XDIST"))}
    return env | variables | {"COLUMNS": "200"}


class LabProcess:
    """`mailflow lab up` running in the background until stopped; what it prints is collected as it
    comes (a thread reads the pipe, so the lab never blocks on a full one)."""

    READY = "Ctrl-C stops the lab."

    def __init__(self, workdir: Path, env: dict[str, str], *args: str) -> None:
        self.workdir = workdir
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [MAILFLOW, "lab", "up", "--workdir", str(workdir), *args],
            env=env | {"PYTHONFAULTHANDLER": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Ctrl-C is how a user stops it, even when the tests run where SIGINT is ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until_running(self, timeout: float = 60.0) -> None:
        """Until it has printed its hosts and its control socket answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reader.join(timeout=10)
                pytest.fail(f"lab up exited with {self.process.returncode}: {self.output}")
            if self.READY in self.output and queues(self.workdir).exit_code == 0:
                return
            time.sleep(0.05)
        pytest.fail(f"lab up did not start: {self.output}")

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # PYTHONFAULTHANDLER is set: SIGABRT prints every thread's stack, which says where it hung.
            self.process.send_signal(signal.SIGABRT)
            self.process.wait(timeout=30)
            self._reader.join(timeout=10)
            pytest.fail(f"lab up did not stop within 30 s of the signal:\n{self.output}")
        self._reader.join(timeout=10)
        return self.process.returncode, self.output


@contextlib.contextmanager
def lab_processes() -> Iterator[list[LabProcess]]:
    """The labs a test starts (with `start`), each stopped at the end if it still runs."""
    labs: list[LabProcess] = []
    try:
        yield labs
    finally:
        for lab in labs:
            if lab.process.poll() is None:
                lab.stop()


def start(labs: list[LabProcess], workdir: Path, env: dict[str, str], *args: str) -> LabProcess:
    lab = LabProcess(workdir, env, *args)
    labs.append(lab)
    lab.wait_until_running()
    return lab


def queues(workdir: Path) -> Result:
    return CliRunner().invoke(main, ["queues", "--lab-dir", str(workdir), "--all", "--json"])


def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Polls `condition` until it holds; fails the test, saying `what` did not happen, after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"not within {timeout:g} s: {what}")
