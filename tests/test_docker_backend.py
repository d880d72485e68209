"""The Docker backend, from outside: `mailflow run --backend docker` runs traces with every lab host in a
container of its own, a session from a server's own address leaves from that server's container, nothing
is left once a run ends, a killed run's containers and network are removed at the next start, and a
machine without a Docker engine gets an error that says how to get one.

The containers are read straight from the Docker engine (the SDK, filtered by label), not through the
harness's own pool, so that a mistake there cannot hide itself here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from harness.lab import containers
from tests.mailflow_cli import ROOT, mailflow

WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
INBOUND = ROOT / "traces" / "inbound" / "case-insensitive-proxy.yaml"
# EX2's own address is the client: the session must leave from EX2's container.
FROM_A_SERVER = ROOT / "traces" / "relay" / "decision-organization-servers-trusted-by-address.yaml"


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    if (reason := containers.unavailable()) is not None:
        pytest.skip(f"no Docker engine: {reason}")
    if os.geteuid() != 0:
        pytest.skip("the Docker backend puts the clients' addresses on the lab bridge: needs root")
    client = docker.from_env()
    yield client
    client.close()


def child_env() -> dict[str, str]:
    """This process's environment less what marks it as a pytest-xdist worker."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}


def subnet_env(band: int) -> dict[str, str]:
    """This worker's own /24 of 198.19.0.0/16 for a mailflow a test starts (bands 150 and up)."""
    return {"MAILFLOW_DOCKER_SUBNET": str(band + WORKER * 4)}


def run_subnet(band: int) -> str:
    """The /24 a `mailflow run` started with subnet_env(band) puts its lab on: it inherits this worker's
    PYTEST_XDIST_WORKER, which moves it up by the worker's number, as a worker's own labs are."""
    return f"198.19.{band + WORKER * 4 + WORKER}.0/24"


def on_subnet(client: docker.DockerClient, subnet: str) -> list[str]:
    found = []
    for network in client.networks.list(filters={"label": containers.LABEL}):
        configs = network.attrs.get("IPAM", {}).get("Config") or []
        if any(c.get("Subnet") == subnet for c in configs):
            found.append(network.name)
    return found


def owned_by(client: docker.DockerClient, pid: int) -> tuple[list[str], list[str]]:
    label = f"{containers.OWNER_PID}={pid}"
    found = [c.name for c in client.containers.list(all=True, filters={"label": label})]
    networks = [n.name for n in client.networks.list(filters={"label": label})]
    return found, networks


def test_traces_run_with_each_host_in_a_container(engine: docker.DockerClient, tmp_path: Path) -> None:
    done = mailflow(
        "run",
        "--backend",
        "docker",
        str(INBOUND),
        str(FROM_A_SERVER),
        "--reports",
        str(tmp_path),
        cwd=ROOT,
        env=subnet_env(150),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ran = json.loads((tmp_path / "last-run.json").read_text())
    assert sorted(r["outcome"] for r in ran) == ["passed", "passed"]
    # The run's network and containers went with it.
    assert on_subnet(engine, run_subnet(150)) == []


def test_the_hosts_run_in_containers_on_the_lab_network(engine: docker.DockerClient, tmp_path: Path) -> None:
    """While a lab of the Docker backend runs, its DNS server, global catalog, servers and sinks are
    containers on an internal network of 198.19.0.0/16, and the harness's process is not listening on
    the lab's SMTP addresses itself."""
    process, base = hold_a_lab(tmp_path, 151)
    try:
        names, networks = owned_by(engine, process.pid)
        hosts = {engine.containers.get(n).labels[containers.HOST] for n in names}
        assert {"dns", "gc", "EX1", "EX2", "EX3", "EX4", "fabrikam-mx"} <= hosts
        (network,) = networks
        attrs = engine.networks.get(network).attrs
        assert attrs["Internal"] is True
        assert attrs["IPAM"]["Config"][0]["Subnet"] == f"{base}/24"
        ex1 = engine.containers.get(next(n for n in names if n.endswith("-ex1")))
        assert ex1.attrs["NetworkSettings"]["Networks"][network]["IPAMConfig"]["IPv4Address"].endswith(".11")
    finally:
        process.terminate()
        process.wait(timeout=60)
    names, networks = owned_by(engine, process.pid)
    assert (names, networks) == ([], []), "a stopped lab left its containers"


def test_a_killed_run_is_swept_at_the_next_start(engine: docker.DockerClient, tmp_path: Path) -> None:
    process, _ = hold_a_lab(tmp_path, 152)
    process.kill()  # SIGKILL: no clean-up of its own
    process.wait(timeout=30)
    names, networks = owned_by(engine, process.pid)
    assert len(names) > 10 and len(networks) == 1, "the killed lab's containers should still be there"
    # The next start of any Docker lab removes them (here on another subnet, so nothing else clashes).
    done = mailflow(
        "run",
        "--backend",
        "docker",
        str(INBOUND),
        "--reports",
        str(tmp_path / "r"),
        cwd=ROOT,
        env=subnet_env(153),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert owned_by(engine, process.pid) == ([], [])


def test_without_a_docker_engine_the_error_says_how_to_get_one(tmp_path: Path) -> None:
    done = mailflow(
        "run",
        "--backend",
        "docker",
        str(INBOUND),
        "--reports",
        str(tmp_path),
        cwd=ROOT,
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"},
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "--backend docker: no Docker engine answers" in done.stderr
    assert "apt-get install docker.io" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_backend_names_the_backends(tmp_path: Path) -> None:
    done = mailflow("run", "--backend", "podman", str(INBOUND), "--reports", str(tmp_path), cwd=ROOT)
    assert done.returncode == 2
    assert "'podman' is not one of 'local', 'docker'" in done.stderr


def hold_a_lab(folder: Path, band: int) -> tuple[subprocess.Popen[str], str]:
    """A process holding a started Docker lab of the default lab file, and the lab's base address."""
    script = folder / "hold.py"
    script.write_text(_HOLD)
    process = subprocess.Popen(
        [sys.executable, str(script), str(ROOT / "fixtures" / "labs" / "contoso.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**child_env(), **subnet_env(band)},
        cwd=ROOT,
    )
    assert process.stdout is not None
    ready = process.stdout.readline()
    if not ready.startswith("ready"):
        process.kill()
        pytest.fail(f"the lab did not start: {process.stderr.read() if process.stderr else ready}")
    return process, ready.split()[1]


# A process that starts one Docker lab and holds it until it is stopped: what a run does, minus the
# traces, so a test can look at the containers and then kill it.
_HOLD = """
import signal, sys, time
from pathlib import Path
from harness.lab import config, docker_lab
from harness.lab.placement import relocation

base, offset = relocation(docker=True)
lab = docker_lab.DockerLab(config.load(Path(sys.argv[1]), base=base, port_offset=offset))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
lab.start()
try:
    print("ready", base, flush=True)
    time.sleep(600)
finally:
    lab.stop()
    docker_lab.close_pools()
"""


def test_a_store_submission_of_any_size_and_a_refused_one(engine: docker.DockerClient) -> None:
    """A submission carries its message to the server's container (far past a line of 64 KiB), and the
    store's refusal comes back as the refusal a trace may expect, not as a broken lab."""
    from harness.lab import config, docker_lab
    from harness.lab.runtime import LabError

    octet = 154 + WORKER * 4
    lab = docker_lab.DockerLab(
        config.load(ROOT / "fixtures" / "labs" / "contoso.yaml", base=f"198.19.{octet}.0", port_offset=0)
    )
    body = b"x" * 76 + b"\r\n"
    content = b"Subject: large\r\n\r\n" + body * 4000  # about 312 KB
    try:
        lab.start()
        message_id = lab.submit("EX1", "alice@contoso.com", ["bob@contoso.com"], content)
        assert message_id.endswith("@ex1.contoso.com")
        assert lab.settle(timeout=30)
        stored = [
            path
            for path in lab.workdir.glob("EX2/mdbdata/*/bob@contoso.com/new/*")
            if path.read_bytes().endswith(body * 4000)
        ]
        assert len(stored) == 1, "the large message did not reach bob's mailbox on EX2"
        with pytest.raises(ValueError, match="not a mailbox in the directory"):
            lab.submit("EX1", "nobody@contoso.com", ["bob@contoso.com"], b"Subject: x\r\n\r\nx\r\n")
        with pytest.raises(LabError):  # a server the lab does not run is the lab's fault, not a refusal
            lab.pool.call("dns", {"op": "submit", "mailbox": "a@b", "to": [], "content": ""})
    finally:
        lab.stop()
        docker_lab.close_pools()
