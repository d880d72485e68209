"""The processes a benchmark starts: a lab (`mailflow lab up`) in a process of its own, so that its memory
is its own; a bare aiosmtpd server; Postfix's smtp-source. Each runs in a session of its own, so Ctrl-C
reaches only the benchmark, which stops them on its way out."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.runner import BenchmarkError
from harness.lab import config as lab_config
from harness.lab.placement import relocation
from harness.run.signals import stop_with_parent
from harness.yamlsource import SourceError

SMTP_SOURCE = "/usr/sbin/smtp-source"
START_TIMEOUT = 180.0


def lab_config_for(netns: bool, lab: str = "contoso") -> lab_config.LabConfig:
    """Lab `lab` (fixtures/labs) where this run's labs go (MAILFLOW_LAB_BASE, MAILFLOW_NETNS_SUBNET, ...)."""
    try:
        base, offset = relocation(netns=netns)
        return lab_config.load(lab_config.lab_path(lab), base=base, port_offset=offset)
    except (ValueError, SourceError) as exc:  # a SourceError names the lab file's line and field
        raise BenchmarkError(str(exc)) from None


def ex1(config: lab_config.LabConfig) -> tuple[str, int]:
    """EX1's default virtual server."""
    server = config.organization.server("EX1").default_virtual_server
    return server.address, server.port


def stop_group(process: subprocess.Popen[str] | subprocess.Popen[bytes], first: int = signal.SIGTERM) -> None:
    # SIGTERM rather than SIGINT for the labs: mailflow stops on both alike, but a process started in
    # the background of a non-interactive shell (a CI job) inherits SIGINT ignored.
    """Sends `first` to the child's process group, then SIGKILL if it has not ended within 60 s."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, first)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Memory:
    rss_kb: int  # now
    peak_kb: int  # since the process started (VmHWM)


class LabChild:
    """`mailflow lab up` with TARGET for `config` (its lab file is config.path), keeping its folder in
    `workdir`, until the block ends."""

    READY = "Ctrl-C stops the lab."

    def __init__(self, target: str, config: lab_config.LabConfig, workdir: Path) -> None:
        self.target = target
        self.config = config
        self.workdir = workdir
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> LabChild:
        command = [sys.executable, "-m", "harness.cli", "lab", "up", str(self.config.path)]
        command += ["--workdir", str(self.workdir)]
        command += ["--target", self.target, "--base", str(self.config.base)]
        command += ["--port-offset", str(self.config.port_offset)]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=stop_with_parent,  # a benchmark killed outright leaves no lab running
            env=os.environ | {"COLUMNS": "200"},
        )
        # A thread drains the pipe, so the lab never blocks writing its log lines.
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        try:
            self._wait_until_ready()
        except BaseException:
            stop_group(self.process, signal.SIGTERM)
            raise
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while not any(self.READY in line for line in self.lines):
            if self.process.poll() is not None:
                time.sleep(0.2)  # the reader thread takes the last lines
                said = "".join(self.lines[-5:]).strip() or "nothing"
                raise BenchmarkError(
                    f"the {self.target} lab did not start (exit {self.process.returncode}): {said}"
                )
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the {self.target} lab did not start within {START_TIMEOUT:g} s")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        stop_group(self.process, signal.SIGTERM)

    def memory(self) -> Memory:
        assert self.process is not None
        fields: dict[str, int] = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
        return Memory(fields["VmRSS"], fields["VmHWM"])


@contextlib.contextmanager
def aiosmtpd_sink(address: str, port: int) -> Iterator[tuple[str, int]]:
    """A bare aiosmtpd server with its Sink handler (accepts and drops every message), in a process of its
    own as the labs are."""
    command = [
        sys.executable,
        "-m",
        "aiosmtpd",
        "-n",
        "-l",
        f"{address}:{port}",
        "-c",
        "aiosmtpd.handlers.Sink",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=stop_with_parent,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                said = process.stderr.read().strip() if process.stderr else ""
                raise BenchmarkError(f"aiosmtpd did not start on {address}:{port}: {said or 'no message'}")
            try:
                socket.create_connection((address, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchmarkError(f"aiosmtpd did not listen on {address}:{port}") from None
                time.sleep(0.05)
        yield address, port
    finally:
        stop_group(process, signal.SIGTERM)


@dataclass
class Timing:
    accepted: float  # seconds from smtp-source's start to its exit
    arrived: float | None  # seconds from its start until `arrived` counted every message


def smtp_source(
    server: tuple[str, int],
    *,
    messages: int,
    sessions: int = 1,
    length: int | None = None,
    sender: str = "ann@fabrikam.com",
    recipient: str = "alice@contoso.com",
    recipients: int = 1,
    arrived: Callable[[], int] | None = None,
    timeout: float = 600.0,
) -> Timing:
    """Runs smtp-source (a new connection per message, as it does by default); with `arrived`, also polls
    it until it counts `messages` more than before."""
    if not os.access(SMTP_SOURCE, os.X_OK):
        raise BenchmarkError(f"{SMTP_SOURCE} is not installed (Debian: apt-get install postfix)")
    command = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-f", sender, "-t", recipient]
    if length is not None:
        command += ["-l", str(length)]
    if recipients > 1:
        command += ["-r", str(recipients)]
    command.append(f"{server[0]}:{server[1]}")
    before = arrived() if arrived is not None else 0
    exited: list[float] = []
    began = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=stop_with_parent,
    )
    errors: list[str] = []

    def wait() -> None:
        _, stderr = process.communicate()
        exited.append(time.perf_counter() - began)
        errors.append(stderr)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    try:
        landed: float | None = None
        while waiter.is_alive() or (arrived is not None and landed is None and process.returncode == 0):
            if arrived is not None and landed is None and arrived() - before >= messages:
                landed = time.perf_counter() - began
            if time.perf_counter() - began > timeout:
                got = f"; {arrived() - before} of {messages} arrived" if arrived is not None else ""
                raise BenchmarkError(f"smtp-source to {server[0]}:{server[1]} took over {timeout:g} s{got}")
            # Polling is the measurement here: the mailbox has no other way to say a message landed.
            time.sleep(0.01 if arrived is not None else 0.05)
        waiter.join()
    finally:
        stop_group(process, signal.SIGTERM)
    if process.returncode != 0:
        said = errors[0].strip().splitlines()[-1] if errors and errors[0].strip() else "no message"
        raise BenchmarkError(
            f"smtp-source to {server[0]}:{server[1]} failed (exit {process.returncode}): {said}"
        )
    return Timing(exited[0], landed)
