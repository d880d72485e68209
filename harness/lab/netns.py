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
(kill -9, a crashed run) is swept away by the next one (`sweep_stale`). Needs root (CAP_NET_ADMIN); a
clear NetnsError says so otherwise.

iproute2's `ip` is driven as a subprocess: the kernel's netlink interface has no well-kept Python binding
in the project's dependencies, and `ip` is what an administrator would type to inspect the same state.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.lab.addresses import NETNS

STATE_DIR = Path("/run/mailflow")
NETNS_ETC = Path("/etc/netns")
PREFIX = "mf-"


class NetnsError(RuntimeError):
    """The lab network could not be made (no privileges, no iproute2, a kernel that refuses)."""


@dataclass
class NetworkState:
    """What a lab network owns; written before each thing is made, so a sweep can undo it all."""

    lab_id: str
    pid: int
    bridge: str
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Namespace:
    name: str
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this namespace (with its /etc/netns files bind-mounted by `ip netns exec`)."""
        return ["ip", "netns", "exec", self.name, *argv]


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
        self.state = NetworkState(self.lab_id, os.getpid(), bridge=f"mf{self.lab_id}br")
        self._state_file = STATE_DIR / f"{self.lab_id}.json"
        self._up = False

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    # --- lifecycle -------------------------------------------------------------------------------

    def create(self) -> LabNetwork:
        sweep_stale()
        self._save()
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
        self._save()
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
        return Namespace(name, address)

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

    def _save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps(asdict(self.state)), encoding="utf-8")


def sweep_stale() -> list[str]:
    """Undo every lab network whose owning process is gone; returns their ids."""
    swept: list[str] = []
    if not STATE_DIR.is_dir():
        return swept
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            state = NetworkState(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)  # unreadable: nothing to undo by it
            continue
        if _alive(state.pid):
            continue
        _undo(state)
        path.unlink(missing_ok=True)
        swept.append(state.lab_id)
    return swept


def _undo(state: NetworkState) -> None:
    # Deleting a namespace removes the veth end inside it, and with it the peer; the explicit deletes
    # cover a namespace that was never made.
    for name in state.namespaces:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
    for link in [*state.links, state.bridge]:
        subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)


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
