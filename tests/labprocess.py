"""`mailflow lab up` in a process of its own, as a user runs it: started with its environment, waited
for until its control socket answers, stopped with Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from harness.cli import main

MAILFLOW = str(Path(sys.executable).with_name("mailflow"))


def environment(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILFLOW_", "PYTEST_XDIST"))}
    return env | variables | {"COLUMNS": "200"}


class LabProcess:
    """`mailflow lab up` running in the background until stopped."""

    def __init__(self, workdir: Path, env: dict[str, str], *args: str) -> None:
        self.workdir = workdir
        self.process = subprocess.Popen(
            [MAILFLOW, "lab", "up", "--workdir", str(workdir), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Ctrl-C is how a user stops it, even when the tests run where SIGINT is ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def wait_until_running(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out, err = self.process.communicate()
                pytest.fail(f"lab up exited with {self.process.returncode}: {err}{out}")
            if queues(self.workdir).exit_code == 0:
                return
            time.sleep(0.05)
        pytest.fail("lab up did not answer on its control socket")

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        out, _ = self.process.communicate(timeout=30)
        return self.process.returncode, out


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
