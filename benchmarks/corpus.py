"""Benchmark: how fast `mailflow run` replays a trace corpus, against a peer measured in the same run:
smtp-source sending as many sessions (one message each, over as many parallel sessions as the run has
workers) as there are traces, to the reference MTA's EX1 in one lab started once.

The corpus is timed from the start of `mailflow run PATH -n WORKERS` to its exit, labs, pytest and
reports included; that is what a user waits for. A run whose traces fail still counts (exit 1); one that
cannot run (exit 2 or 3) stops the benchmark with what it said.

Run from the repository root: python -m benchmarks.corpus [PATH] [-n WORKERS]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import children, machine
from benchmarks.runner import BenchmarkError, note, run
from harness.run.signals import stop_with_parent


def workers(text: str) -> str:
    if text == "auto":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (0, 1, 2, ...) or auto")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.corpus",
        description="mailflow run over a trace corpus against smtp-source sending as many sessions",
    )
    parser.add_argument(
        "path", nargs="?", type=Path, default=Path("traces"), help="traces (default: traces/)"
    )
    parser.add_argument(
        "-n", "--workers", type=workers, default="2", help="mailflow run's workers (default 2)"
    )
    return parser


def _replay(path: Path, worker_count: str, reports: Path) -> tuple[float, list[dict[str, object]]]:
    command = [
        sys.executable,
        "-m",
        "harness.cli",
        "run",
        str(path),
        "-n",
        worker_count,
        "--reports",
        str(reports),
    ]
    log = reports.with_suffix(".log")
    with log.open("w", encoding="utf-8") as output:
        began = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=stop_with_parent,
        )
        try:
            process.wait()
        finally:
            children.stop_group(process, signal.SIGTERM)  # as Ctrl-C: the run removes its labs
        seconds = time.perf_counter() - began
    if process.returncode not in (0, 1):
        said = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise BenchmarkError(f"mailflow run {path} ended with exit {process.returncode}: " + " / ".join(said))
    outcomes = json.loads((reports / "last-run.json").read_text(encoding="utf-8"))
    if not outcomes:
        raise BenchmarkError(f"mailflow run {path} ran no trace")
    return seconds, outcomes


def measure(args: argparse.Namespace) -> list[str]:
    if not args.path.exists():
        raise BenchmarkError(f"{args.path} does not exist: give a folder of traces or a trace file")
    sessions = (os.cpu_count() or 1) if args.workers == "auto" else max(int(args.workers), 1)
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-") as scratch:
        folder = Path(scratch)
        note(f"mailflow run {args.path} -n {args.workers}")
        seconds, outcomes = _replay(args.path, args.workers, folder / "reports")
        traces = len(outcomes)
        passed = sum(1 for outcome in outcomes if outcome.get("outcome") == "passed")
        note(
            f"peer: smtp-source, {traces} sessions of one message, {sessions} at a time, to the reference EX1"
        )
        config = children.lab_config_for(netns=False)
        with children.LabChild("reference", config, folder / "lab"):
            peer = children.smtp_source(children.ex1(config), messages=traces, sessions=sessions).accepted
    rate = traces / seconds
    peer_rate = traces / peer
    return [
        f"corpus: mailflow run {args.path} -n {args.workers}",
        f"  {traces} traces ({passed} passed) in {seconds:.1f} s: {rate:.2f} traces/s",
        f"  peer: smtp-source, {traces} sessions of one message ({sessions} in parallel) to the reference "
        f"EX1 in one lab: {peer:.2f} s, {peer_rate:.1f} sessions/s",
        f"  ratio traces/s over the peer's sessions/s: {rate / peer_rate:.3f}x",
        machine.summary(
            "corpus",
            f"{traces} traces, -n {args.workers}: {rate:.2f} traces/s; smtp-source peer "
            f"{peer_rate:.1f} sessions/s; ratio {rate / peer_rate:.3f}x",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    run("corpus", lambda: measure(args))


if __name__ == "__main__":
    main()
