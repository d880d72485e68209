"""The Docker backend: each host of the lab in a container of its own, on an internal Docker network of
198.18.0.0/15 with no route out.

- The DNS server, the global catalog (over real LDAP), each reference Exchange server and each Internet
  host's sink run `harness.lab.host_agent` in the lab image; a real MTA standing in for a server runs
  in its own image (harness/lab/container_shell.py).
- The harness replays from this machine: the clients' lab addresses are put on the host's side of the
  network's bridge, so each session leaves from its client's address, as with the netns backend.
- Every container shares one folder with the harness, at the same path on both sides: each trace's lab
  folder is made there, so the mailboxes, tracking logs, queues, gateway folders, protocol logs and an
  MTA's log are read where they are written. What lives only in a host's memory (the DNS and LDAP query
  logs, what a sink received) is asked of its agent.
- Starting containers costs seconds, so a process keeps one set of containers per lab placement and
  every trace starts the hosts inside them afresh (new objects, a new lab folder, as a new in-process
  lab would). The containers are removed when the process ends; those of a killed process, at the next
  start (harness/lab/containers.py `sweep`).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import dataclasses
import hashlib
import ipaddress
import itertools
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker.errors

from harness.lab import containers, images
from harness.lab.captures import Capture
from harness.lab.config import LabConfig
from harness.lab.container_shell import ContainerShell
from harness.lab.dns import Query
from harness.lab.gc import LdapQuery
from harness.lab.host_agent import chain_file
from harness.lab.runtime import QUIET, Lab, LabError
from harness.lab.sender import PostfixSender

if TYPE_CHECKING:
    from harness.lab.admin import StandInFactory

AGENT_PYTHON = f"{images.VENV}/bin/python"
# A developer's settings: run the lab image named here instead of the one built for this checkout, and
# mount this checkout into it (its code first on the path), so a change is tried without a new image.
SOURCE_SETTING = "MAILFLOW_DOCKER_SOURCE"
FOLDER_PREFIX = "mailflow-docker-"
OWNER_FILE = "owner.json"
AGENT_TIMEOUT = 60.0


class AgentFailed(LabError):
    """A lab host's agent refused a request or could not be reached."""

    def __init__(self, message: str, kind: str = "broken") -> None:
        super().__init__(message)
        self.kind = kind


def image(kind: str) -> str:
    """The image of `kind` (lab, postfix, ...): a developer's setting (MAILFLOW_LAB_IMAGE,
    MAILFLOW_POSTFIX_IMAGE, ...), else the one built for this checkout, built if missing."""
    if chosen := os.environ.get(f"MAILFLOW_{kind.upper()}_IMAGE"):
        return chosen
    try:
        return images.ensure([kind])[kind]
    except images.ImageError as exc:
        raise LabError(f"the {kind} image: {exc}") from None


class HostPool:
    """The containers of one lab placement: a network, one container per host, the shared folder.

    Each host's container is of a role: `lab` (a host agent in the lab image) or a real MTA's image kind
    (`postfix`, ...), for a server one stands in for or an Internet host that sends through one.
    `arrange` swaps only the containers whose role a trace changes."""

    def __init__(self, client: docker.DockerClient, config: LabConfig, shared: Path | None = None) -> None:
        self.client = client
        self.config = config
        # A lab folder the user chose (lab up --workdir), shared with the containers beside the pool's.
        self.shared = shared
        self.owner = containers.Owner.me()
        key = f"{os.getpid()}-{config.path}-{config.base}"
        self.lab_id = hashlib.sha1(key.encode()).hexdigest()[:10]
        # Checked before anything is made: a base outside 198.18.0.0/15 leaves nothing behind.
        self.network = containers.DockerNetwork(
            client, ipaddress.IPv4Network(f"{config.base}/24", strict=False), self.lab_id, self.owner
        )
        self.folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
        self.folder.chmod(0o755)  # the MTAs' own users, in their containers, reach the lab folders
        (self.folder / "agents").mkdir()
        (self.folder / OWNER_FILE).write_text(json.dumps(dataclasses.asdict(self.owner)), encoding="utf-8")
        self.roles: dict[str, str] = {}  # host → the role of its running container
        self._numbers = itertools.count(1)
        self.started = False

    def _name(self, name: str) -> str:
        servers = {s.name.lower(): s.name for s in self.config.organization.servers}
        return servers.get(name.lower()) or self.config.host(name).name

    def _all_hosts(self) -> list[str]:
        """Every host that runs in a container: the DNS server, the global catalog, the Internet
        hosts and the servers (the clients are the harness's own addresses)."""
        config = self.config
        names = [h.name for h in config.hosts.values() if h.kind in ("dns", "gc", "internet")]
        return names + [s.name for s in config.organization.servers]

    @property
    def hosts(self) -> list[str]:
        """The hosts whose container is a host agent."""
        return [host for host, role in self.roles.items() if role == "lab"]

    @property
    def mtas(self) -> dict[str, str]:
        return {host: role for host, role in self.roles.items() if role != "lab"}

    @property
    def reference_servers(self) -> list[str]:
        return [s.name for s in self.config.organization.servers if self.roles.get(s.name) == "lab"]

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            containers.sweep(self.client)
            sweep_folders()
            self.network.create()
            (self.folder / "resolv.conf").write_text(
                f"nameserver {self.config.dns_address}\noptions timeout:2 attempts:1\n", encoding="utf-8"
            )
            self.network.add_local(self._client_addresses())
        except BaseException:
            self.close()
            raise
        self.started = True

    def arrange(self, mtas: Mapping[str, str]) -> None:
        """Give each host the container its role asks for: a real MTA's for the hosts in `mtas` (host
        or server name → image kind), a host agent for every other one."""
        wanted = {host: "lab" for host in self._all_hosts()}
        wanted.update({self._name(name): kind for name, kind in mtas.items()})
        changing = [host for host, role in wanted.items() if self.roles.get(host) != role]
        if not changing:
            return
        try:
            images = {role: image(role) for role in {wanted[host] for host in changing}}
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(self._remove_container, [h for h in changing if h in self.roles]))
                for host in changing:
                    self.roles.pop(host, None)
                list(
                    pool.map(lambda host: self._run_role(images[wanted[host]], host, wanted[host]), changing)
                )
            self.roles.update({host: wanted[host] for host in changing})
            deadline = time.monotonic() + AGENT_TIMEOUT
            for host in changing:
                if wanted[host] == "lab":
                    self._wait_for_agent(host, deadline)
        except BaseException:
            self.close()
            raise

    def _remove_container(self, host: str) -> None:
        if (container := self._container(host)) is not None:
            container.remove(force=True)

    def _run_role(self, image_name: str, host: str, role: str) -> None:
        if role == "lab":
            self._run_agent(image_name, host)
        else:
            self._run_mta(image_name, host)

    def _client_addresses(self) -> list[str]:
        """Every lab address no container holds: the clients the harness replays from."""
        held = {self.config.host(h).address for h in self._all_hosts() if h.lower() in self.config.hosts}
        for server in self.config.organization.servers:
            held |= {server.address, *(vs.address for vs in server.virtual_servers)}
        return sorted({h.address for h in self.config.hosts.values()} - held - {self.network.gateway})

    def mounts(self) -> dict[str, Mapping[str, str]]:
        """What every container of the lab sees at the harness's own paths."""
        config = self.config
        binds: dict[str, Mapping[str, str]] = {
            str(self.folder): {"bind": str(self.folder), "mode": "rw"},
            str(self.folder / "resolv.conf"): {"bind": "/etc/resolv.conf", "mode": "ro"},
            str(config.path.resolve().parent): {"bind": str(config.path.resolve().parent), "mode": "ro"},
        }
        directory = config.global_catalog.directory.resolve().parent
        binds.setdefault(str(directory), {"bind": str(directory), "mode": "ro"})
        if self.shared is not None:
            binds[str(self.shared)] = {"bind": str(self.shared), "mode": "rw"}
        if source := os.environ.get(SOURCE_SETTING):
            binds[source] = {"bind": source, "mode": "ro"}
        return binds

    def _run_agent(self, image: str, host: str) -> None:
        environment = {"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
        if source := os.environ.get(SOURCE_SETTING):
            environment["PYTHONPATH"] = source
        command = [AGENT_PYTHON, "-m", "harness.lab.host_agent", "--socket", str(self._socket(host))]
        # The agents run as the harness's own user: what they write in the shared folder is its to remove.
        self._run(
            image, host, [*command, "--host", host], "agent", environment, f"{os.getuid()}:{os.getgid()}"
        )

    def _run_mta(self, image: str, server: str) -> None:
        # The MTA's own daemons start by `docker exec` (harness/lab/container_shell.py); until then the
        # container only holds the server's addresses.
        self._run(image, server, ["sleep", "infinity"], "mta", {}, "root")

    def _run(
        self, image: str, host: str, command: list[str], role: str, environment: dict[str, str], user: str
    ) -> None:
        api = self.client.api
        labels = {**self.owner.labels(self.lab_id), containers.ROLE: role, containers.HOST: host}
        created = api.create_container(
            image,
            command=command,
            name=self.container_name(host),
            hostname=host.lower()[:63],
            user=user,
            environment=environment,
            labels=labels,
            host_config=api.create_host_config(binds=self.mounts(), cap_add=["NET_ADMIN"], init=True),
            # The SDK takes a mapping of network name to endpoint here; its type stubs say otherwise.
            networking_config=api.create_networking_config(
                {self.network.name: api.create_endpoint_config(ipv4_address=self._address(host))}  # type: ignore[arg-type]
            ),
        )
        api.start(created["Id"])
        for extra in self._extra_addresses(host):
            exit_code, output = self.client.containers.get(created["Id"]).exec_run(
                ["ip", "addr", "add", f"{extra}/32", "dev", "eth0"], user="root"
            )
            if exit_code != 0:
                said = output.decode().strip() if isinstance(output, bytes) else ""
                raise LabError(f"{host}'s container cannot take its address {extra}: {said}")

    def _address(self, host: str) -> str:
        if host.lower() in self.config.hosts and self.config.host(host).kind != "server":
            return self.config.host(host).address
        return self.config.organization.server(host).address

    def _extra_addresses(self, host: str) -> list[str]:
        if any(s.name == host for s in self.config.organization.servers):
            server = self.config.organization.server(host)
            return sorted({vs.address for vs in server.virtual_servers} - {server.address})
        return []

    def _socket(self, host: str) -> Path:
        return self.folder / "agents" / f"{host.lower()}.sock"

    def _wait_for_agent(self, host: str, deadline: float) -> None:
        while True:
            try:
                self.call(host, {"op": "ping"}, timeout=2)
                return
            except AgentFailed as exc:
                if time.monotonic() > deadline:
                    raise AgentFailed(
                        f"{host}'s container did not answer: {exc}; {self._logs(host)}"
                    ) from None
                container = self._container(host)
                if container is not None and container.status in ("exited", "dead"):
                    raise AgentFailed(f"{host}'s container stopped: {self._logs(host)}") from None
                time.sleep(0.05)

    def clear_processes(self, host: str) -> None:
        """End every process in an MTA's container but its init and the `sleep` that holds it."""
        script = (
            "for p in $(ps -eo pid=,comm= | awk '$1 != 1 && $2 != \"sleep\" {print $1}'); do "
            '[ "$p" -ne "$$" ] && kill -KILL "$p" 2>/dev/null; done; true'
        )
        container = self._container(host)
        if container is not None:
            container.exec_run(["sh", "-c", script], user="root")

    def container_name(self, host: str) -> str:
        return f"mailflow-{self.lab_id}-{host.lower()}"

    def shell(self, server: str) -> ContainerShell:
        """Where the real MTA standing in for `server` runs its commands."""
        name = self.container_name(server)
        return ContainerShell(name, self._address(server), container=name)

    def holder(self, address: str) -> str | None:
        """The host whose container holds `address`, None if none does (a client's, on the bridge)."""
        for host in self.roles:
            if address == self._address(host) or address in self._extra_addresses(host):
                return host
        return None

    def client_socket(self, source: str) -> socket.socket | None:
        host = self.holder(source)
        if host is None:
            return None
        container = self._container(host)
        if container is None:
            raise AgentFailed(
                f"the container of {host}, whose address {source} a session leaves from, is gone"
            )
        state = container.attrs.get("State") or {}
        if not state.get("Running") or not state.get("Pid"):
            raise AgentFailed(
                f"the container of {host}, whose address {source} a session leaves from, is not running "
                f"({state.get('Status', 'no state')}): {self._logs(host)}"
            )
        return containers.socket_in(int(state["Pid"]), source)

    def _container(self, host: str) -> Any:
        with contextlib.suppress(Exception):
            return self.client.containers.get(self.container_name(host))
        return None

    def _logs(self, host: str) -> str:
        container = self._container(host)
        if container is None:
            return "its container is gone"
        text = container.logs(tail=20).decode("utf-8", "replace").strip()
        return f"its output: {text}" if text else "it wrote nothing"

    def new_workdir(self) -> Path:
        workdir = self.folder / f"lab-{next(self._numbers)}"
        workdir.mkdir()
        return workdir

    def close(self) -> None:
        for container in containers.running(self.client, self.lab_id):
            with contextlib.suppress(Exception):
                container.remove(force=True)
        self.network.remove()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.roles.clear()
        self.started = False

    # --- the agents ------------------------------------------------------------------------------

    def call(self, host: str, request: Mapping[str, Any], timeout: float = AGENT_TIMEOUT) -> Any:
        try:
            with socket.socket(socket.AF_UNIX) as channel:
                channel.settimeout(timeout)
                channel.connect(str(self._socket(host)))
                channel.sendall(json.dumps(request).encode() + b"\n")
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = channel.recv(1 << 20)
                    if not chunk:
                        break
                    reply += chunk
        except OSError as exc:
            raise AgentFailed(f"the lab host {host} does not answer ({exc.strerror or exc})") from None
        try:
            answer = json.loads(reply)
        except ValueError:
            raise AgentFailed(f"the lab host {host} gave no answer to {request.get('op')}") from None
        if not answer.get("ok"):
            raise AgentFailed(f"{host}: {answer.get('error')}", str(answer.get("kind", "broken")))
        return answer.get("result")

    def call_all(self, hosts: Sequence[str], request: Mapping[str, Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda host: self.call(host, request), hosts))


_pools: dict[str, HostPool] = {}  # by the lab network's subnet
_pools_lock = threading.Lock()


def pool_for(config: LabConfig, mtas: Mapping[str, str], shared: Path | None = None) -> HostPool:
    """This process's containers for `config`'s placement, arranged for the real MTAs in `mtas`, with
    `shared` mounted too; a pool of another lab file (or folder) on the same subnet is removed first."""
    subnet = str(ipaddress.IPv4Network(f"{config.base}/24", strict=False))
    with _pools_lock:
        pool = _pools.get(subnet)
        same = (config.path.resolve(), config.port_offset, shared)
        if pool is not None and (pool.config.path.resolve(), pool.config.port_offset, pool.shared) != same:
            pool.close()
            pool = None
        if pool is None:
            try:
                pool = HostPool(containers.engine(), config, shared)
            except (containers.DockerUnavailable, containers.LabNetworkError) as exc:
                raise LabError(str(exc)) from None
            _pools[subnet] = pool
        try:
            if not pool.started:
                pool.start()
            pool.arrange(mtas)
        except BaseException as exc:
            _pools.pop(subnet, None)  # start and arrange have removed what they made
            if isinstance(exc, containers.LabNetworkError):
                raise LabError(str(exc)) from None
            if isinstance(exc, docker.errors.APIError):
                raise LabError(
                    f"Docker refused to make the lab's containers: {exc.explanation or exc}"
                ) from None
            raise
        return pool


def close_pools() -> None:
    """Remove every container and network this process made (at its end, and at a test session's)."""
    with _pools_lock:
        for pool in _pools.values():
            # One pool the engine cannot remove (it went away) must not keep the others.
            with contextlib.suppress(Exception):
                pool.close()
            with contextlib.suppress(Exception):
                pool.client.close()
        _pools.clear()


def sweep_folders() -> list[Path]:
    """The shared folders of pools whose process is gone (a killed run), removed."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"):
        try:
            owner = containers.Owner(**json.loads((folder / OWNER_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue  # not one of ours, or being written: left alone
        if owner.where == containers.where_i_run() and not owner.alive():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


atexit.register(close_pools)


class DockerLab(Lab):
    """A lab whose hosts run in containers; what the harness drives and reads is Lab's."""

    def __init__(
        self,
        config: LabConfig,
        workdir: Path | None = None,
        *,
        control: bool = False,
        stand_ins: Mapping[str, StandInFactory] | None = None,
        mtas: Mapping[str, str] | None = None,
        senders: Sequence[str] = (),
    ) -> None:
        """`stand_ins` and `mtas` name the same servers: how each real MTA is made, and its image."""
        # A real sending MTA is Postfix (harness/lab/sender.py), in a container of the Postfix image.
        workdir = workdir.resolve() if workdir is not None else None  # the same path in every container
        wanted = {**(mtas or {}), **{config.host(name).name: "postfix" for name in senders}}
        self.pool = pool_for(config, wanted, workdir)
        super().__init__(
            config,
            workdir or self.pool.new_workdir(),
            reference_servers=False,
            control=control,
            stand_ins=stand_ins,
            senders=senders,
        )
        self._own_workdir = workdir is None
        self._server_names = self.pool.reference_servers

    @property
    def reference_server_names(self) -> list[str]:
        return list(self._server_names)

    def client_socket(self, source: str) -> socket.socket | None:
        return self.pool.client_socket(source)

    def start(self) -> DockerLab:
        began = time.perf_counter()
        try:
            self.lock.acquire(self.config.name)
            self.gc.load()  # this side's copy of the directory configures a stand-in's recipients
            for each in self.config.organization.servers:
                path = chain_file(self.workdir, each.fqdn)
                path.parent.mkdir(exist_ok=True)
                self.certificates.write_chain(each.fqdn, path)
                path.chmod(0o644)  # read by the container's user
            request = {
                "op": "start",
                "lab": str(self.config.path.resolve()),
                "base": str(self.config.base),
                "port_offset": self.config.port_offset,
                "workdir": str(self.workdir),
            }
            self.pool.call_all(self.pool.hosts, request)
            for host in self.pool.mtas:
                # What a previous trace's MTA left running, had its stop failed, is ended first.
                self.pool.clear_processes(host)
            for server, factory in self._stand_in_factories.items():
                stand_in = factory(self)
                self.stand_ins[server] = stand_in
                stand_in.start(self.pool.shell(server))
            for name in self._sender_hosts:
                sender = PostfixSender(self.config, self.config.host(name), self.workdir / f"{name}-postfix")
                self.senders[name] = sender
                sender.start(self.pool.shell(name))
            if self._with_control:
                # The control socket is served here, in this process, and works through the agents.
                self._start_loop()
                self.run(self._start_control())
        except BaseException:
            self.stop()
            raise
        self.started_in = time.perf_counter() - began
        return self

    def stop(self) -> None:
        """Every part is stopped even when one fails, and the first failure is raised at the end: an
        MTA left running in its container would answer the next trace."""
        failures: list[BaseException] = []

        def attempt(step: Callable[[], object]) -> None:
            try:
                step()
            except Exception as exc:
                failures.append(exc)

        for sender in self.senders.values():
            attempt(sender.stop)
        self.senders.clear()
        for stand_in in self.stand_ins.values():
            attempt(stand_in.stop)
        self.stand_ins.clear()
        if self.pool.started:
            attempt(partial(self.pool.call_all, self.pool.hosts, {"op": "stop"}))
        attempt(self._stop_control)
        self.lock.release()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if failures:
            raise failures[0]

    def _stop_control(self) -> None:
        if (loop := self._loop) is None:
            return
        try:
            if self.control is not None and loop.is_running():
                self.run(self.control.stop(), timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            loop.close()
            self._loop = None

    # --- driving ---------------------------------------------------------------------------------

    def settle(
        self, timeout: float = 15.0, quiet: float | None = None, *, wait_for_retries: bool = True
    ) -> bool:
        # The agents answer over a socket, between two of their answers something may be on its way.
        quiet = QUIET if quiet is None else quiet
        began = time.monotonic()
        deadline = began + timeout
        horizon = time.time() + timeout if wait_for_retries else None
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            idle = all(self.pool.call_all(self._server_names, {"op": "idle", "horizon": horizon}))
            mtas_idle = all(s.idle() for s in self.stand_ins.values()) and all(
                s.idle() for s in self.senders.values()
            )
            if idle and mtas_idle:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= quiet:
                    return True
            else:
                quiet_since = None
            time.sleep(0.02)  # polling the agents, as the in-process settle polls the servers
        return False

    def set_connector(self, name: str, up: bool) -> None:
        self.change_connector(name, up)

    def change_connector(self, name: str, up: bool) -> None:
        self.link_state.set_connector(name, up)
        self.pool.call_all(self._server_names, {"op": "link", "connector": name, "up": up})

    # What the control socket does (harness/lab/control.py), on its loop: each through the agents.

    async def change_server(self, name: str, up: bool) -> None:
        await asyncio.to_thread(self.set_server, name, up)

    async def submit_through_store(
        self, server: str, mailbox: str, recipients: list[str], content: bytes, defer: float = 0.0
    ) -> str:
        return await asyncio.to_thread(self.submit, server, mailbox, recipients, content, defer)

    def change_global_catalog(self, up: bool) -> None:
        self.set_global_catalog(up)

    def change_freeze(self, server: str, queue: str, frozen: bool) -> None:
        self.freeze(server, queue, frozen)

    def queue_snapshot(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        return self.queues()

    def set_server(self, name: str, up: bool) -> None:
        server = self.config.organization.server(name).name
        if server not in self._server_names:
            raise LabError(f"{server} is not a reference server of this lab")
        self.pool.call(server, {"op": "listen", "up": up})
        self.link_state.set_server(server, up)
        self.pool.call_all(self._server_names, {"op": "link", "server": server, "up": up})

    def submit(
        self, server: str, mailbox: str, recipients: list[str], content: bytes, defer: float = 0.0
    ) -> str:
        name = self.config.organization.server(server).name
        request = {
            "op": "submit",
            "mailbox": mailbox,
            "to": recipients,
            "defer": defer,
            "content": base64.b64encode(content).decode("ascii"),
        }
        return str(self._input_error_as_value(partial(self.pool.call, name, request)))

    def foreign_send(self, gateway: str, memo: bytes) -> str:
        request = {"op": "foreign", "gateway": gateway, "memo": base64.b64encode(memo).decode()}
        for server in self._server_names:
            if gateway.lower() in self.pool.call(server, {"op": "gateways"}):
                return str(self._input_error_as_value(partial(self.pool.call, server, request)))
        raise ValueError(f"no gateway connector named {gateway!r} runs in this lab")

    @staticmethod
    def _input_error_as_value(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except AgentFailed as exc:
            if exc.kind == "input":
                raise ValueError(str(exc).split(": ", 1)[-1]) from None
            raise

    def set_gateway(self, name: str, running: bool) -> None:
        for server in self._server_names:
            if name.lower() in self.pool.call(server, {"op": "gateways"}):
                self.pool.call(server, {"op": "gateway", "name": name, "running": running})
                return
        raise LabError(f"no gateway connector named {name!r} runs in this lab")

    def change_gateway(self, name: str, running: bool) -> None:
        self.set_gateway(name, running)

    def set_global_catalog(self, up: bool) -> None:
        self.pool.call(self._host_of_kind("gc"), {"op": "global_catalog", "up": up})
        self.gc.available = up
        if up:
            self.pool.call_all(self._server_names, {"op": "retry_directory"})

    def force_connection(self, queue: str) -> int:
        replies = self.pool.call_all(self._server_names, {"op": "force", "queue": queue})
        return sum(int(r) for r in replies)

    def change_force(self, queue: str) -> int:
        return self.force_connection(queue)

    def freeze(self, server: str, queue: str, frozen: bool = True) -> None:
        name = self.config.organization.server(server).name
        self.pool.call(name, {"op": "freeze", "queue": queue, "frozen": frozen})

    def frozen_queues(self) -> dict[str, set[str]]:
        return {name: set(self.pool.call(name, {"op": "frozen"})) for name in self._server_names}

    def queues(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        return dict(
            zip(self._server_names, self.pool.call_all(self._server_names, {"op": "queues"}), strict=True)
        )

    def _host_of_kind(self, kind: str) -> str:
        return next(h.name for h in self.config.hosts.values() if h.kind == kind)

    # --- evidence --------------------------------------------------------------------------------

    def dns_queries(self) -> list[Query]:
        host = self._host_of_kind("dns")
        return [
            Query(**{**q, "answers": tuple(q["answers"])})
            for q in self.pool.call(host, {"op": "dns_queries"})
        ]

    def ldap_queries(self) -> list[LdapQuery]:
        rows = self.pool.call(self._host_of_kind("gc"), {"op": "ldap_queries"})
        return [
            LdapQuery(**{**q, "attributes": tuple(q["attributes"]), "dns": tuple(q["dns"])}) for q in rows
        ]

    def sink_captures(self) -> list[tuple[str, Capture]]:
        found: list[tuple[str, Capture]] = []
        for name in self.sinks:
            for row in self.pool.call(name, {"op": "captures"}):
                found.append(
                    (
                        name,
                        Capture(
                            **{
                                **row,
                                "data": base64.b64decode(row["data"]),
                                "rcpt_tos": tuple(row["rcpt_tos"]),
                                "mail_options": tuple(row["mail_options"]),
                                "rcpt_options": tuple(row["rcpt_options"]),
                            }
                        ),
                    )
                )
        return found

    def add_sink_rule(self, host: str, rule: Mapping[str, Any]) -> None:
        self.pool.call(self.config.host(host).name, {"op": "sink_rule", "rule": dict(rule)})
