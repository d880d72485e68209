"""The lab's own network, for hosts that are programs of their own (a real MTA standing in for a lab
server): Linux network namespaces joined by a bridge, on 198.18.0.0/15 only, with no route out.

Layout for a lab with id `ab12`:

    root namespace                              namespace mf-ab12-ex1
    bridge mfab12br  198.18.0.1/24 (+ /32s)  <-veth->  eth0 198.18.0.11/24, lo
                     198.18.0.53 (fake DNS), 198.18.0.101 (an Internet host), ...

Hosts the harness runs itself (fake DNS, global catalog, Internet hosts, reference servers) keep running
in-process; their addresses sit on the bridge in the root namespace, so they are reachable from every
namespace and from the harness, and nothing else is. A namespace has no default route: a program inside
can reach the lab's /24 and nothing more. `/etc/netns/<namespace>/resolv.conf` points it at the lab's
DNS, so the program resolves through the lab and its queries show in the query log.

Everything created is recorded in a state file under /run/mailflow before it is made, so a lab that died
(kill -9, a crashed run) is swept away by the next one (`sweep_stale`). That includes the daemons a lab
starts in its namespaces (a real MTA, its SASL server): each is noted before it starts, with its pid and
start tick once it has them, and a sweep stops them (TERM, then KILL after a deadline) before it removes
the namespaces: a namespace outlives its `ip netns del` for as long as a process runs in it, and so would
the daemon. Needs root (CAP_NET_ADMIN); a clear NetnsError says so otherwise.

iproute2's `ip` is driven as a subprocess: the kernel's netlink interface has no well-kept Python binding
in the project's dependencies, and `ip` is what an administrator would type to inspect the same state.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import ipaddress
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.lab import processes
from harness.lab.addresses import NETNS
from harness.lab.processes import Process

STATE_DIR = Path("/run/mailflow")
NETNS_ETC = Path("/etc/netns")
NETNS_RUN = Path("/run/netns")  # where `ip netns add` bind-mounts each namespace
PREFIX = "mf-"
# How long a lab's daemons get to end on TERM before they are killed.
STOP_GRACE = 5.0


class NetnsError(RuntimeError):
    """The lab network could not be made (no privileges, no iproute2, a kernel that refuses)."""


@dataclass
class Daemon:
    """A long-running program a lab starts in one of its namespaces: its name and namespace are noted
    before it starts, its pid and start tick (clock ticks after boot) as soon as it has a pid. A sweep
    stops it, and its process group, only while that pid is still the process that started at that tick:
    a recycled pid is never signalled."""

    name: str
    namespace: str
    pid: int | None = None
    started: int | None = None


@dataclass
class NetworkState:
    """What a lab network owns; written before each thing is made, so a sweep can undo it all. `pid` and
    `started` name the owning process (a pid alone could be another process's by the time of a sweep)."""

    lab_id: str
    pid: int
    bridge: str
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    daemons: list[Daemon] = field(default_factory=list)
    started: int | None = None

    @classmethod
    def parse(cls, text: str) -> NetworkState:
        data = json.loads(text)
        data["daemons"] = [Daemon(**each) for each in data.get("daemons", [])]
        return cls(**data)

    def owner_gone(self) -> bool:
        if self.started is None:  # written before owners were recorded with their start tick
            return not _alive(self.pid)
        return not processes.running(Process(self.pid, self.started))


class RecordedDaemon:
    """A daemon noted in its lab's state file; `started` adds its pid once it has one."""

    def __init__(self, network: LabNetwork | None, daemon: Daemon) -> None:
        self._network = network
        self.daemon = daemon

    def started(self, pid: int) -> None:
        process = processes.identify(pid)
        if process is None:
            return  # already ended: nothing left to stop
        self.daemon.pid, self.daemon.started = process.pid, process.started
        if self._network is not None:
            self._network.save()


@dataclass(frozen=True)
class Namespace:
    name: str
    address: str
    # The lab network the namespace belongs to, whose state file notes the daemons started in it.
    network: LabNetwork | None = field(default=None, compare=False, repr=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this namespace (with its /etc/netns files bind-mounted by `ip netns exec`)."""
        return ["ip", "netns", "exec", self.name, *argv]

    @property
    def etc(self) -> Path | None:
        """The files `ip netns exec` puts over /etc for this namespace (None where there are none)."""
        return NETNS_ETC / self.name

    @property
    def shares_pids(self) -> bool:
        """Whether a pid a daemon here writes is one of this machine's (a container's are its own)."""
        return True

    def user(self, name: str) -> tuple[int, int]:
        """The uid and gid of user `name` where the MTA runs (KeyError if there is none)."""
        entry = pwd.getpwnam(name)
        return entry.pw_uid, entry.pw_gid

    def group(self, name: str) -> int:
        return grp.getgrnam(name).gr_gid

    def daemon(self, name: str) -> RecordedDaemon:
        """Note in the lab's state file that daemon `name` is about to start in this namespace (call
        before starting it); tell the record its pid once it has one."""
        daemon = Daemon(name, self.name)
        if self.network is not None:
            self.network.state.daemons.append(daemon)
            self.network.save()
        return RecordedDaemon(self.network, daemon)


def available() -> str | None:
    """None if lab networks can be made here, else why not."""
    if os.geteuid() != 0:
        return "the netns backend needs root (CAP_NET_ADMIN) to create namespaces and interfaces"
    if shutil.which("ip") is None:
        return "the netns backend needs iproute2's `ip` command (Debian package iproute2)"
    return None


class LabNetwork:
    """A bridge for the lab's /24 in 198.18.0.0/15 and one namespace per external host."""

    def __init__(self, subnet: ipaddress.IPv4Network, label: str = "") -> None:
        if subnet.prefixlen != 24 or not subnet.subnet_of(NETNS):
            raise NetnsError(f"a lab network is a /24 inside {NETNS}, not {subnet}")
        reason = available()
        if reason is not None:
            raise NetnsError(reason)
        self.subnet = subnet
        # Interface names have at most 15 characters: a short id, unique per process and label.
        self.lab_id = hashlib.sha1(f"{os.getpid()}-{label}-{subnet}".encode()).hexdigest()[:4]
        owner = processes.identify(os.getpid())
        self.state = NetworkState(
            self.lab_id,
            os.getpid(),
            bridge=f"mf{self.lab_id}br",
            started=owner.started if owner is not None else None,
        )
        self._state_file = STATE_DIR / f"{self.lab_id}.json"
        self._up = False

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    # --- lifecycle -------------------------------------------------------------------------------

    def create(self) -> LabNetwork:
        sweep_stale()
        self.save()
        try:
            bridge = self.state.bridge
            _ip("link", "add", bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", bridge)
            _ip("link", "set", bridge, "up")
        except BaseException:
            self.destroy()
            raise
        self._up = True
        return self

    def add_local(self, address: str) -> None:
        """An address for a host the harness runs in the root namespace."""
        self._check(address)
        _ip("addr", "add", f"{address}/32", "dev", self.state.bridge)

    def add_namespace(self, host: str, address: str, dns: str, extra: Sequence[str] = ()) -> Namespace:
        """A namespace for `host` at `address` (and `extra` addresses, its virtual servers), joined to
        the bridge, resolving through `dns`."""
        for each in (address, *extra):
            self._check(each)
        number = len(self.state.namespaces)
        name = f"{PREFIX}{self.lab_id}-{host.lower()}"[:40]
        outer, inner = f"mf{self.lab_id}h{number}", f"mf{self.lab_id}n{number}"
        self.state.namespaces.append(name)
        self.state.links.append(outer)
        self.save()
        etc = NETNS_ETC / name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(
            f"nameserver {dns}\noptions timeout:2 attempts:1\n", encoding="utf-8"
        )
        _ip("netns", "add", name)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", name)
        _ip("link", "set", outer, "master", self.state.bridge)
        _ip("link", "set", outer, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "set", inner, "name", "eth0")
        _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        for each in extra:
            _ip("-n", name, "addr", "add", f"{each}/32", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        return Namespace(name, address, network=self)

    def destroy(self) -> None:
        _undo(self.state)
        with contextlib.suppress(FileNotFoundError):
            self._state_file.unlink()
        self._up = False

    def __enter__(self) -> LabNetwork:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # --- helpers ---------------------------------------------------------------------------------

    def _check(self, address: str) -> None:
        if ipaddress.IPv4Address(address) not in self.subnet:
            raise NetnsError(f"{address} is not in the lab network {self.subnet}")

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        # Replaced whole: a sweep in another process never reads half a file (and drops it as unreadable).
        draft = self._state_file.with_name(f"{self._state_file.name}.tmp")
        draft.write_text(json.dumps(asdict(self.state)), encoding="utf-8")
        draft.replace(self._state_file)


def sweep_stale(own: bool = False) -> list[str]:
    """Undo every lab network whose owning process is gone, daemons first; returns their ids. With
    `own`, also those of this process: it is about to exit after a signal, and what it still owns was
    left by a clean-up the signal cut short."""
    swept: list[str] = []
    if not STATE_DIR.is_dir():
        return swept
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            state = NetworkState.parse(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)  # unreadable: nothing to undo by it
            continue
        if not state.owner_gone() and not (own and state.pid == os.getpid()):
            continue
        _undo(state)
        path.unlink(missing_ok=True)
        swept.append(state.lab_id)
    return swept


def _undo(state: NetworkState) -> None:
    _stop_daemons(state)
    # Deleting a namespace removes the veth end inside it, and with it the peer; the explicit deletes
    # cover a namespace that was never made.
    for name in state.namespaces:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
    for link in [*state.links, state.bridge]:
        subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)


def _stop_daemons(state: NetworkState) -> None:
    """Stop the daemons the lab recorded, their process groups, and whatever else still runs in its
    namespaces (a daemon started after the owner died before noting its pid, a shell someone opened
    there): nothing but the lab's own programs can be in them."""
    recorded = [
        Process(daemon.pid, daemon.started)
        for daemon in state.daemons
        if daemon.pid is not None and daemon.started is not None
    ]
    found = processes.with_groups(recorded) | processes.in_namespaces(
        NETNS_RUN / name for name in state.namespaces
    )
    processes.stop(found, STOP_GRACE)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip() or f'exit {result.returncode}'}")
