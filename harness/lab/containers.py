"""The Docker engine as the lab's Docker backend uses it: reaching it (or saying how to get it), an
internal network for a lab's /24 in 198.18.0.0/15 with no route out, containers that carry the labels of
the process that made them, and the sweep that removes what a killed run left behind.

Everything is made through the docker SDK (`docker` on PyPI). Each container and network carries
`org.mailflow.lab` (the lab's id) and the pid and start tick of the process that made it
(harness/lab/processes.py): a sweep at the next start removes every one whose owner is gone, which a pid
alone could not tell once the pid is reused.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors

from harness.lab import processes
from harness.lab.addresses import NETNS

if TYPE_CHECKING:
    import docker.models.containers

LABEL = "org.mailflow.lab"
OWNER_PID = "org.mailflow.owner-pid"
OWNER_STARTED = "org.mailflow.owner-started"
OWNER_WHERE = "org.mailflow.owner-where"
ROLE = "org.mailflow.role"
HOST = "org.mailflow.host"

HOW_TO_GET = (
    "on Debian: apt-get install docker.io, then start the engine (systemctl start docker, or as root "
    "`dockerd --iptables=false &`); elsewhere see https://docs.docker.com/engine/install/"
)


class DockerUnavailable(RuntimeError):
    """No Docker engine can be used here; the message says why and how to get one."""


def engine() -> docker.DockerClient:
    """A client of the local Docker engine that answers, or DockerUnavailable."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        raise DockerUnavailable(f"no Docker engine answers ({_first_line(exc)}): {HOW_TO_GET}") from None
    return client


def unavailable() -> str | None:
    """None if the Docker backend can run here, else why not and how to get it."""
    try:
        engine().close()
    except DockerUnavailable as exc:
        return str(exc)
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def where_i_run() -> str:
    """This machine's boot and this process's pid namespace: a pid and a start tick name a process only
    there. Two runs in two containers that share one Docker engine see each other's pids as gone."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        boot = "unknown-boot"
    return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"


@dataclass(frozen=True)
class Owner:
    pid: int
    started: int
    where: str

    @classmethod
    def me(cls) -> Owner:
        found = processes.identify(os.getpid())
        return cls(os.getpid(), found.started if found is not None else 0, where_i_run())

    def labels(self, lab_id: str) -> dict[str, str]:
        return {
            LABEL: lab_id,
            OWNER_PID: str(self.pid),
            OWNER_STARTED: str(self.started),
            OWNER_WHERE: self.where,
        }

    @classmethod
    def of(cls, labels: Mapping[str, str]) -> Owner | None:
        try:
            return cls(int(labels[OWNER_PID]), int(labels[OWNER_STARTED]), labels[OWNER_WHERE])
        except (KeyError, ValueError):
            return None

    def alive(self) -> bool:
        return processes.running(processes.Process(self.pid, self.started))


def sweep(client: docker.DockerClient) -> list[str]:
    """Remove every lab container and network whose owner process is gone; the names of what was
    removed. Only owners this process can judge are swept: those that ran on this boot of this machine,
    in this pid namespace. What carries no owner, or another's, is left alone (a run in another
    container of a shared engine, a folder exported for docker compose)."""
    here = where_i_run()

    def stale(labels: Mapping[str, str]) -> bool:
        owner = Owner.of(labels)
        return owner is not None and owner.where == here and not owner.alive()

    removed: list[str] = []
    for container in client.containers.list(all=True, filters={"label": LABEL}):
        if stale(container.labels):
            with contextlib.suppress(Exception):  # removed meanwhile by its owner
                container.remove(force=True)
                removed.append(f"container {container.name}")
    for network in client.networks.list(filters={"label": LABEL}):
        if stale(network.attrs.get("Labels") or {}):
            with contextlib.suppress(Exception):
                network.remove()
                removed.append(f"network {network.name}")
    return removed


class LabNetworkError(RuntimeError):
    """The lab's network could not be made (its subnet is taken, an address is outside it)."""


class DockerNetwork:
    """An internal Docker network for one lab's /24: no route out (`internal`), the host on .1 of the
    subnet, and every lab address the harness itself sends from (the clients) on the host's side of its
    bridge, so that a replayed session leaves from its client's address."""

    def __init__(
        self, client: docker.DockerClient, subnet: ipaddress.IPv4Network, lab_id: str, owner: Owner
    ) -> None:
        if subnet.prefixlen != 24 or not subnet.subnet_of(NETNS):
            raise LabNetworkError(f"a lab network is a /24 inside {NETNS}, not {subnet}")
        self.client = client
        self.subnet = subnet
        self.lab_id = lab_id
        self.bridge = f"mfd{lab_id[:8]}"
        self.name = f"mailflow-{lab_id}"
        self.owner = owner
        self.network: Any = None

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def create(self) -> DockerNetwork:
        import docker.errors
        import docker.types

        pool = docker.types.IPAMPool(subnet=str(self.subnet), gateway=self.gateway)
        try:
            self.network = self.client.networks.create(
                self.name,
                driver="bridge",
                internal=True,
                ipam=docker.types.IPAMConfig(pool_configs=[pool]),
                options={"com.docker.network.bridge.name": self.bridge},
                labels=self.owner.labels(self.lab_id),
            )
        except docker.errors.APIError as exc:
            raise LabNetworkError(
                f"the lab network {self.subnet} cannot be made: {exc.explanation or exc}; another lab or "
                "Docker network may use it (move the lab: MAILFLOW_DOCKER_SUBNET)"
            ) from None
        return self

    def add_local(self, addresses: Sequence[str]) -> None:
        for address in addresses:
            if ipaddress.IPv4Address(address) not in self.subnet:
                raise LabNetworkError(f"{address} is not in the lab network {self.subnet}")
            result = subprocess.run(
                ["ip", "addr", "add", f"{address}/32", "dev", self.bridge],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0 and "File exists" not in result.stderr:
                raise LabNetworkError(
                    f"cannot put the client address {address} on the bridge {self.bridge}: "
                    f"{result.stderr.strip()} (this needs root: CAP_NET_ADMIN)"
                )

    def remove(self) -> None:
        if self.network is not None:
            with contextlib.suppress(Exception):
                self.network.remove()
            self.network = None


CLONE_NEWNET = 0x40000000  # <sched.h>


def socket_in(pid: int, source: str) -> socket.socket:
    """A TCP socket bound to `source` in the network namespace of process `pid` (a container's): a
    session the harness replays leaves from that container's address, as its own would. The socket is
    made in a thread that enters the namespace (setns(2) changes only the calling thread's), and keeps
    that namespace once the thread has ended. Needs root (CAP_SYS_ADMIN), as the backend does."""
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter_and_bind() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/proc/{pid}/ns/net", "rb") as namespace:
                if libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"cannot enter the network of process {pid}: {os.strerror(error)}")
            bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            bound.bind((source, 0))
            made.append(bound)
        except BaseException as exc:  # raised again in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=enter_and_bind, name=f"bind {source}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def running(client: docker.DockerClient, lab_id: str) -> Iterator[docker.models.containers.Container]:
    yield from client.containers.list(all=True, filters={"label": f"{LABEL}={lab_id}"})
