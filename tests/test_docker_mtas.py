"""A real MTA standing in for EX1 in a container of its image (`mailflow run --backend docker --target
exim`, `opensmtpd`, `postfix`) gives the verdicts it gives on the local backend, where it runs in a
network namespace of this machine (unpacked from tools/mtas for Exim and OpenSMTPD): for a handful of
relay traces, each trace's outcome and its deviation list in REPORTS/last-run.json are the same on both.
Once the Docker run ends, nothing of its lab is left: no container and no network it made.

Both runs are the real `mailflow` command in a subprocess. The images are the ones built for this
checkout (`mailflow images build`, made on first use), or a developer's where MAILFLOW_LAB_IMAGE and
MAILFLOW_<MTA>_IMAGE name them (then with this checkout mounted: MAILFLOW_DOCKER_SOURCE); a test is
skipped, with the reason, when Docker, a named image or the MTA on this machine is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from harness import targets
from harness.lab import containers
from harness.lab.placement import docker_first_octet
from tests.leftovers import child_env, subnet
from tests.mailflow_cli import MAILFLOW, ROOT

WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
BAND = 210  # this module's namespace labs (tests/standin.py lists the other modules' bands)
DOCKER_BAND = 100  # and its Docker labs, above MAILFLOW_DOCKER_SUBNET
RELAY = ROOT / "traces" / "relay"
# A relay-list client's mail relayed to the Internet by DNS; a relay refused by default; connection
# control refusing an attacker with 554 (Exim fails it); an accepted unknown recipient bounced with an
# NDR, and percent hacks bounced with 5.1.1 (both with known deviations on Exim and OpenSMTPD). None
# needs what a target lacks, so each runs on every one.
TRACES = [
    RELAY / "relay-list-client-relays.yaml",
    RELAY / "relay-denied-by-default.yaml",
    RELAY / "access-restricted-vs-refuses-attacker.yaml",
    RELAY / "filter-unfiltered-vs-accepts-then-ndrs.yaml",
    RELAY / "trick-percent-hack-variants.yaml",
]


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    if (reason := containers.unavailable()) is not None:
        pytest.skip(f"no Docker engine: {reason}")
    if os.geteuid() != 0:
        pytest.skip("the Docker backend puts the clients' addresses on the lab bridge: needs root")
    client = docker.from_env()
    yield client
    client.close()


def images(mta: str) -> dict[str, str]:
    """A developer's image settings for a run of `mta`, where this environment has them (none: the
    images built for this checkout)."""
    names = ("MAILFLOW_LAB_IMAGE", f"MAILFLOW_{mta.upper()}_IMAGE")
    return {name: os.environ[name] for name in names if os.environ.get(name)}


def run_env(mta: str) -> dict[str, str]:
    settings = {
        **images(mta),
        **(
            {"MAILFLOW_DOCKER_SOURCE": os.environ.get("MAILFLOW_DOCKER_SOURCE") or str(ROOT)}
            if images(mta)
            else {}
        ),
        "MAILFLOW_NETNS_SUBNET": subnet(BAND),
        # Wrapped into 1..249, whatever MAILFLOW_DOCKER_SUBNET this run has.
        "MAILFLOW_DOCKER_SUBNET": str(1 + (docker_first_octet() + DOCKER_BAND + WORKER) % 249),
    }
    return child_env(**settings)


def run(mta: str, backend: str, reports: Path) -> tuple[int, subprocess.CompletedProcess[str]]:
    """`mailflow run --backend BACKEND --target MTA` on TRACES; its pid and what it did."""
    argv = [str(MAILFLOW), "run", "--backend", backend, "--target", mta, "--reports", str(reports)]
    process = subprocess.Popen(
        [*argv, *map(str, TRACES)],
        cwd=ROOT,
        env=run_env(mta),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        process.terminate()
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"mailflow run --backend {backend} --target {mta} took over 15 minutes: {stdout}{stderr}")
    return process.pid, subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def verdicts(reports: Path) -> dict[str, tuple[str, list[Any]]]:
    """Each trace's outcome and deviation list, from the run's last-run.json."""
    return {row["trace"]: (row["outcome"], row["deviations"]) for row in _rows(reports)}


def reasons(reports: Path) -> str:
    """Each trace's outcome and why, one line each: what a failed comparison shows."""
    return "\n".join(f"{row['trace']}: {row['outcome']} {row['message']}" for row in _rows(reports))


def _rows(reports: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads((reports / "last-run.json").read_text(encoding="utf-8"))
    return rows


def left_by(client: docker.DockerClient, pid: int) -> tuple[list[str], list[str]]:
    """The containers and networks of a lab that the process `pid` made and that still exist."""
    label = f"{containers.OWNER_PID}={pid}"
    found = [str(c.name) for c in client.containers.list(all=True, filters={"label": label})]
    networks = [str(n.name) for n in client.networks.list(filters={"label": label})]
    return found, networks


@pytest.mark.parametrize("mta", ["exim", "opensmtpd", "postfix"])
def test_an_mta_in_its_container_gives_the_local_verdicts(
    engine: docker.DockerClient, mta: str, tmp_path: Path
) -> None:
    if (reason := targets.get(mta).unavailable()) is not None:
        pytest.skip(f"{mta} cannot run on the local backend here: {reason}")
    for name, image in images(mta).items():
        try:
            engine.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.skip(f"the image {image} ({name}) is not on this machine")

    _, local = run(mta, "local", tmp_path / "local")
    pid, in_docker = run(mta, "docker", tmp_path / "docker")

    expected = verdicts(tmp_path / "local")
    assert sorted(expected) == sorted(f"relay/{path.stem}" for path in TRACES), local.stdout + local.stderr
    # Every trace ran on both: two labs broken alike would agree on nothing worth comparing.
    ran = {trace: outcome for trace, (outcome, _) in expected.items()}
    assert set(ran.values()) <= {"passed", "failed"}, reasons(tmp_path / "local")
    assert verdicts(tmp_path / "docker") == expected, reasons(tmp_path / "docker") + in_docker.stderr
    assert in_docker.returncode == local.returncode
    assert left_by(engine, pid) == ([], []), f"mailflow (pid {pid}) left its lab behind"
