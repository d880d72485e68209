"""The benchmarks, each run as a user runs it (`python -m benchmarks.NAME` from the repository root) in a
tiny mode: each ends with its one-line summary, figures positive; a wrong option gets a usage error; Ctrl-C
stops the lab it started and prints no report."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import accept, corpus, size
from benchmarks.children import SMTP_SOURCE, ex1, lab_config_for

ROOT = Path(__file__).resolve().parent.parent
TRACES = [
    "inbound/case-insensitive-proxy.yaml",
    "inbound/decision-forwarding-without-keeping-a-copy.yaml",
    "inbound/decision-group-restrictions-before-expansion.yaml",
]
needs_smtp_source = pytest.mark.skipif(
    not os.access(SMTP_SOURCE, os.X_OK), reason=f"{SMTP_SOURCE} (Debian's postfix package) is not installed"
)
MACHINE = re.compile(r"\[\d+ cores, \w+, \d{4}-\d{2}-\d{2}\]$")


def benchmark(*args: str, timeout: float = 300.0) -> tuple[int, str, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the benchmark then stops the labs it started, each in a session of its own.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        pytest.fail(f"{args[0]} did not finish within {timeout:g} s:\n{stderr}")
    return process.returncode, stdout, stderr


def summary(script: str, stdout: str) -> str:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith(f"{script}: "), stdout
    assert MACHINE.search(last), last
    return last


def figures(line: str, unit: str) -> list[float]:
    found = [float(value) for value in re.findall(rf"(\d+(?:\.\d+)?) {unit}", line)]
    assert found, f"no figure in {unit} in {line}"
    return found


@needs_smtp_source
def test_accept_measures_the_reference_against_its_peers() -> None:
    code, stdout, stderr = benchmark("benchmarks.accept", "-m", "5", "-s", "2")
    assert code == 0, stderr
    line = summary("accept", stdout)
    assert all(rate > 0 for rate in figures(line, "msg/s")), line
    assert "reference/aiosmtpd" in line and "peak RSS" in line
    assert all(size > 0 for size in figures(line, "MB")), line
    assert "Traceback" not in stderr


@needs_smtp_source
def test_corpus_replays_traces_against_smtp_source(tmp_path: Path) -> None:
    for trace in TRACES:
        shutil.copy(ROOT / "traces" / trace, tmp_path)
    code, stdout, stderr = benchmark("benchmarks.corpus", str(tmp_path), "-n", "0")
    assert code == 0, stderr
    line = summary("corpus", stdout)
    assert line.startswith("corpus: 3 traces, -n 0: "), line
    assert all(rate > 0 for rate in figures(line, "traces/s") + figures(line, "sessions/s")), line


@needs_smtp_source
def test_size_measures_seconds_per_message_and_memory() -> None:
    code, stdout, stderr = benchmark(
        "benchmarks.size", "--sizes", "10K", "--recipients", "1,2", "-m", "1", "--rss-size", "10K",
        "--rss-messages", "2",
    )  # fmt: skip
    assert code == 0, stderr
    line = summary("size", stdout)
    assert all(seconds > 0 for seconds in figures(line, "s/msg")), line
    assert all(ratio > 0 for ratio in figures(line, "x")), line


@pytest.mark.parametrize(
    ("main", "args", "said"),
    [
        (accept.main, ["-m", "0"], "'0' is not a whole number of at least 1"),
        (accept.main, ["-s", "1,x"], "'x' is not a whole number of at least 1"),
        (size.main, ["--sizes", "10K,10X"], "'10X' is not a size"),
        (corpus.main, ["-n", "two"], "'two' is not a number of workers"),
    ],
)
def test_a_wrong_option_gets_a_usage_error(
    main: Callable[[list[str]], None], args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert said in err and "usage: python -m benchmarks." in err and out == ""


def test_lab_start_refuses_a_wrong_round_count() -> None:
    code, stdout, stderr = benchmark("benchmarks.lab_start", "many")
    assert code == 2 and stdout == ""
    assert "'many' is not a whole number of at least 1" in stderr and "Traceback" not in stderr


def test_a_missing_corpus_is_named() -> None:
    code, stdout, stderr = benchmark("benchmarks.corpus", "no-such-folder")
    assert code == 3 and stdout == ""
    assert "no-such-folder does not exist" in stderr and "Traceback" not in stderr


@needs_smtp_source
def test_ctrl_c_stops_the_lab_and_reports_nothing() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.accept", "-m", "100000", "-s", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # As a terminal leaves it: a CI job started in the background inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )

    # Whatever happens below, the benchmark does not outlive the test: SIGTERM first (it stops its labs
    # then), SIGKILL if that is not enough. A loaded CI machine can take minutes to start a lab.
    def stop() -> None:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    watchdog = threading.Timer(300, stop)
    watchdog.start()
    try:
        assert process.stderr is not None
        for line in process.stderr:  # the lab is up once the first measurement is announced
            if line.startswith("reference EX1: "):
                break
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate()
    finally:
        watchdog.cancel()
    assert process.returncode == 130, stderr
    assert stdout == ""
    assert "interrupted" in stderr and "Traceback" not in stderr
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(ex1(lab_config_for(netns=False)), timeout=5).close()
