"""The stale-lab sweep: a lab whose process was killed (SIGKILL: it could not clean up) is removed by an
explicit sweep or by the next lab's start, its daemons first (Postfix's master and its children, Dovecot,
Exim, OpenSMTPD); and a daemon is only signalled while its pid is still the process that was recorded.

These need root (the state files live in /run/mailflow) and, for the killed labs, the real MTAs
(scripts/install_mtas.sh); without them they are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from leftovers import (
    MAILFLOW,
    STATE_DIR,
    child_env,
    left_behind,
    proc,
    short_folder,
    subnet,
    wait_for_labs,
    wait_until_answering,
)

from harness import targets
from harness.lab import netns

BAND = 140
NO_NETNS = netns.available()
DAEMONS = {"postfix": "postfix master", "exim": "exim", "opensmtpd": "smtpd"}
# What each runs in its namespace, by process name (a lab on the Postfix target also runs Dovecot).
DAEMON_NAMES = {"postfix": {"master", "dovecot"}, "exim": {"exim4"}, "opensmtpd": {"smtpd"}}


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_folder() as folder:
        yield folder


def start_lab(tmp_path: Path, workdir: Path, target: str, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    output = tmp_path / f"{name}.out"
    env = child_env(MAILFLOW_NETNS_SUBNET=subnet(BAND))
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [MAILFLOW, "lab", "up", "--target", target, "--workdir", str(workdir / name)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return process, output


@pytest.mark.parametrize("target", sorted(DAEMONS))
def test_a_killed_lab_is_swept_daemons_first(tmp_path: Path, workdir: Path, target: str) -> None:
    unavailable = targets.get(target).unavailable()
    if unavailable is not None:
        pytest.skip(unavailable)
    process, output = start_lab(tmp_path, workdir, target, "killed")
    seen = wait_for_labs(process, 1, output, daemon=DAEMONS[target])
    wait_until_answering(process, output)
    seen = wait_for_labs(process, 1, output, daemon=DAEMONS[target])  # its daemons' children too
    assert DAEMON_NAMES[target] <= seen.names(), seen.processes
    process.kill()  # nothing can clean up: the MTA keeps running in its namespace
    process.wait()
    netns.sweep_stale()
    assert left_behind(seen) == []


@pytest.mark.skipif(targets.POSTFIX.unavailable() is not None, reason=targets.POSTFIX.unavailable() or "")
def test_the_next_lab_sweeps_a_killed_one(tmp_path: Path, workdir: Path) -> None:
    first, first_output = start_lab(tmp_path, workdir, "postfix", "first")
    seen = wait_for_labs(first, 1, first_output)
    assert {"master", "dovecot"} <= seen.names(), seen.processes
    first.kill()
    first.wait()
    # On the same /24: starting, it sweeps the dead lab away.
    second, second_output = start_lab(tmp_path, workdir, "postfix", "second")
    try:
        wait_until_answering(second, second_output)
        assert left_behind(seen) == []
        later = wait_for_labs(second, 1, second_output)
    finally:
        second.send_signal(signal.SIGTERM)
        code = second.wait(timeout=90)
    assert code == 0, second_output.read_text()
    assert left_behind(later) == []


def sleeper() -> subprocess.Popen[bytes]:
    process = subprocess.Popen(["sleep", "120"], stdin=subprocess.DEVNULL)
    while (found := proc(process.pid)) is None or found.name != "sleep":  # until it has exec'd
        time.sleep(0.01)
    return process


@pytest.fixture
def state_file() -> Iterator[Path]:
    path = STATE_DIR / f"t{uuid.uuid4().hex[:7]}.json"
    yield path
    path.unlink(missing_ok=True)


def write_state(path: Path, owner: tuple[int, int], daemons: list[tuple[int, int]]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    state = {
        "lab_id": path.stem,
        "pid": owner[0],
        "started": owner[1],
        "bridge": f"mf{path.stem[:4]}br",
        "namespaces": [],
        "links": [],
        "daemons": [
            {"name": "sleep", "namespace": "-", "pid": pid, "started": started} for pid, started in daemons
        ],
    }
    path.write_text(json.dumps(state), encoding="utf-8")


def ticks(pid: int) -> int:
    found = proc(pid)
    assert found is not None
    return found.started


@pytest.mark.skipif(NO_NETNS is not None, reason=NO_NETNS or "")
def test_only_the_recorded_process_is_stopped_never_a_recycled_pid(state_file: Path) -> None:
    recorded, recycled = sleeper(), sleeper()
    try:
        # The owner: this pid, but a process that started a tick before this one (so it is gone).
        write_state(
            state_file,
            owner=(os.getpid(), ticks(os.getpid()) - 1),
            # `recycled` has the pid of a daemon that started before it: it is not that daemon.
            daemons=[(recorded.pid, ticks(recorded.pid)), (recycled.pid, ticks(recycled.pid) - 1)],
        )
        netns.sweep_stale()
        assert recorded.wait(timeout=10) == -signal.SIGTERM
        assert recycled.poll() is None
        assert not state_file.exists()
    finally:
        for each in (recorded, recycled):
            each.kill()
            each.wait()


@pytest.mark.skipif(NO_NETNS is not None, reason=NO_NETNS or "")
def test_a_lab_whose_owner_runs_is_left_alone(state_file: Path) -> None:
    daemon = sleeper()
    try:
        write_state(
            state_file, owner=(os.getpid(), ticks(os.getpid())), daemons=[(daemon.pid, ticks(daemon.pid))]
        )
        netns.sweep_stale()
        assert daemon.poll() is None
        assert state_file.exists()
    finally:
        daemon.kill()
        daemon.wait()
