"""A running lab, in-process backend: fake DNS, mock global catalog, Internet sinks and the reference
Exchange servers, all on one asyncio loop in a background thread.

The harness drives the lab from ordinary (synchronous) test code, so the loop lives in its own thread
and every call into it goes through `run()`. Replay clients use their own loop and reach the lab only
over real sockets on the lab's loopback addresses, as a remote client would.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from harness.lab.addresses import is_lab_address
from harness.lab.admin import StandInFactory
from harness.lab.captures import Capture
from harness.lab.certificates import LabCertificates
from harness.lab.config import LabConfig, sink_rule
from harness.lab.control import SOCKET_NAME, ControlServer
from harness.lab.dns import FakeDNS, Query
from harness.lab.gc import AUTH_CLIENT, LdapQuery, MockGlobalCatalog
from harness.lab.ldap_server import LdapServer, LdapServerThread
from harness.lab.lock import LabLock
from harness.lab.netns import LabNetwork, Namespace
from harness.lab.scratch import scratch_folder, sweep_once
from harness.lab.sender import PostfixSender
from harness.lab.sinks import SINKS_FOLDER, SinkHost
from harness.lab.standin import MailboxDelivery, StandIn
from reference_mta.ldap_directory import LdapDirectory
from reference_mta.linkstate import LinkState
from reference_mta.queue_contract import DIRECTORY_LOOKUP, RetryPolicy
from reference_mta.server import Environment, ExchangeServer

T = TypeVar("T")

# How long a lab with a program of its own in it must stay idle before it counts as settled: such a
# program is seen from outside (its queue folder, its log), between two looks something may be on its way.
QUIET = 0.05
# The settle loop's pauses between looks: short at first, as most work ends within milliseconds.
POLL_FIRST = 0.001
POLL_MAX = 0.01
# A stopped lab's folder (queues, mailboxes and logs of every server: some seventy folders) is removed
# by one background thread, so that the next lab need not wait for it. The executor's thread is
# joined when the interpreter exits, so a normal exit leaves no folder behind.
_REMOVER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-folder-removal")


def wait_for_folder_removals() -> None:
    """Wait until the folders of the labs stopped so far are gone (at the end of a run: a process that
    is stopped soon after, as a pytest-xdist worker is, would leave them behind)."""
    _REMOVER.submit(lambda: None).result()


class LabError(RuntimeError):
    """The lab could not do what was asked (a harness problem, not a conformance failure)."""


class OutsideServer(Protocol):
    """A server of the lab that runs outside it: an MTA at a host and port the harness neither starts
    nor configures (harness/targets/outside.py). The lab starts no server of its own for it; what it
    delivers is read from where the target profile says."""

    server: str

    def start(self, lab: Lab) -> None:
        """Once the lab's own hosts answer: note what its mailboxes hold, start what observes it."""
        ...

    def stop(self) -> None: ...

    def idle(self, since: float) -> bool:
        """Whether what it delivers has stopped changing since `since` (a time.monotonic() value)."""
        ...

    def deliveries(self) -> list[MailboxDelivery]: ...

    def relayed(self) -> list[tuple[str, Capture]]:
        """What it handed to its next hop, each with the name of the lab host it was meant for."""
        ...


class Lab:
    def __init__(
        self,
        config: LabConfig,
        workdir: Path | None = None,
        *,
        reference_servers: bool = True,
        retry: RetryPolicy | None = None,
        control: bool = False,
        stand_ins: Mapping[str, StandInFactory] | None = None,
        senders: Sequence[str] = (),
        outside: Mapping[str, OutsideServer] | None = None,
        directory_over_ldap: bool = False,
    ) -> None:
        self.config = config
        # The reference servers reach the global catalog over real LDAP at its address and port, as
        # when each host runs apart, instead of in-process.
        self.directory_over_ldap = directory_over_ldap
        self.ldap: LdapServerThread | None = None
        self._ldap_clients: list[LdapDirectory] = []
        # Servers that run outside the lab, reached at their own address: no server of the lab's.
        self.outside = dict(outside or {})
        # Outside hosts that are a real sending MTA (harness/lab/sender.py), each in its own namespace:
        # they send, so no sink of the harness answers for them.
        self._sender_hosts = [config.host(name).name for name in senders]
        self.senders: dict[str, PostfixSender] = {}
        # Servers a program of its own stands in for (a real MTA), each in its own network namespace.
        self._stand_in_factories = dict(stand_ins or {})
        self.stand_ins: dict[str, StandIn] = {}
        self.network: LabNetwork | None = None
        self.reference_servers = reference_servers
        self.retry = retry or config.timers
        self.dns = FakeDNS(
            config.dns_address,
            config.dns_port,
            config.records,
            authoritative_zones=config.organization.literal_policy_domains,
        )
        self.gc = MockGlobalCatalog(config.global_catalog)
        self.sinks = {
            h.name: SinkHost(h, config.port(25))
            for h in config.internet_hosts
            if h.name not in self._sender_hosts
        }
        self.servers: dict[str, ExchangeServer] = {}
        self.control: ControlServer | None = None
        self._with_control = control
        self.link_state = LinkState(config.organization)
        # Made last: a lab whose hosts cannot be built leaves no folder behind.
        self._own_workdir = workdir is None
        # A real MTA's own files (a stand-in's queue, its sockets) stay where tempfile puts them.
        scratch = None if self._stand_in_factories or self._sender_hosts else scratch_folder()
        if scratch is not None and workdir is None:
            sweep_once(scratch)
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"mailflow-{config.name}-", dir=scratch))
        self.lock = LabLock(self.workdir)
        for sink in self.sinks.values():
            # What the Internet hosts receive is kept in the lab's folder as well as in memory.
            sink.keep_in(self.workdir / SINKS_FOLDER / sink.name)
        self.certificates = LabCertificates(self.workdir, config.name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.started_in = 0.0

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Lab:
        began = time.perf_counter()
        self._start_loop()
        try:
            # First of all: a second lab on this folder must not touch the running one's files.
            self.lock.acquire(self.config.name)
            self.gc.load()
            outside = self._stand_in_factories or self._sender_hosts
            namespaces = self._make_network() if outside else {}
            if self.directory_over_ldap:
                self._start_ldap()  # once the lab's addresses exist, which a namespace lab makes
            self.run(self._start())
            for server, factory in self._stand_in_factories.items():
                stand_in = factory(self)
                self.stand_ins[server] = stand_in
                stand_in.start(namespaces[server])
            for name in self._sender_hosts:
                sender = PostfixSender(self.config, self.config.host(name), self.workdir / f"{name}-postfix")
                self.senders[name] = sender
                sender.start(namespaces[name])
            for elsewhere in self.outside.values():
                elsewhere.start(self)
            if self._with_control:
                # Last: once the control socket answers, the whole lab does (a stand-in included).
                self.run(self._start_control())
            self.gc.clear_log()  # the stand-ins' own configuration look-ups are not the trace's
        except BaseException:
            self.stop()
            raise
        self.started_in = time.perf_counter() - began
        return self

    def _start_loop(self) -> None:
        """The lab's asyncio loop, in a thread of its own, for what the lab serves in this process."""
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=serve, name=f"lab-{self.config.name}", daemon=True)
        self._thread.start()
        ready.wait()

    async def _start(self) -> None:
        await _listening(self.dns.start(), "fake DNS", self.config.dns_address, self.config.dns_port)
        for sink in self.sinks.values():
            await _listening(
                sink.start(), f"Internet host {sink.host.name}", sink.host.address, self.config.port(25)
            )
        if not self.reference_servers:
            return
        environment = Environment(
            root=self.workdir,
            dns_address=self.config.dns_address,
            dns_port=self.config.dns_port,
            smtp_port=self.config.port(25),
            directory=self._ldap_directory if self.directory_over_ldap else self.gc.connect,
            base_dn=self.config.global_catalog.base_dn,
            authenticate=self._ldap_directory(AUTH_CLIENT).authenticate
            if self.directory_over_ldap
            else self.gc.authenticate,
            retry=self.retry,
            link_state=self.link_state,
            tls_context=self.certificates.server_context,
        )
        for server in self.config.organization.servers:
            if server.name in self._stand_in_factories or server.name in self.outside:
                continue
            exchange = ExchangeServer(self.config.organization, server.name, environment)
            self.servers[server.name] = exchange
            await _listening(
                exchange.start(process=False), f"server {server.name}", server.address, self.config.port(25)
            )
        # Only once every server listens: a backlog recovered after a crash would otherwise be sent to
        # servers not yet up, and be deferred, while the others are still starting.
        for exchange in self.servers.values():
            exchange.begin()

    def _start_ldap(self) -> None:
        gc = self.config.global_catalog
        names = {h.address: h.name for h in reversed(list(self.config.hosts.values()))}
        self.ldap = LdapServerThread(LdapServer(self.gc, gc.address, gc.port, names))
        self.ldap.start()
        self.ldap.run(_listening(self.ldap.server.start(), "global catalog (LDAP)", gc.address, gc.port))

    def _ldap_directory(self, client: str) -> LdapDirectory:
        """A connection to the LDAP global catalog from the named server's own address."""
        gc = self.config.global_catalog
        servers = {s.name: s.address for s in self.config.organization.servers}
        directory = LdapDirectory(
            gc.address, gc.port, gc.bind_dn, gc.bind_password, client, source_address=servers.get(client)
        )
        self._ldap_clients.append(directory)
        return directory

    async def _start_control(self) -> None:
        self.control = ControlServer(self, self.workdir / SOCKET_NAME)
        try:
            await self.control.start()
        except OSError as exc:
            raise LabError(
                f"the control socket {self.control.path} cannot be made: {exc.strerror or exc}"
                + (
                    " (a Unix socket's path is limited to 107 bytes: choose a shorter --workdir)"
                    if len(str(self.control.path)) > 107
                    else ""
                )
            ) from exc

    def stop(self) -> None:
        for sender in self.senders.values():
            sender.stop()
        self.senders.clear()
        for outside in self.outside.values():
            outside.stop()
        for stand_in in self.stand_ins.values():
            stand_in.stop()
        self.stand_ins.clear()
        loop = self._loop
        if loop is None:
            return
        try:
            if loop.is_running():
                self.run(self._stop(), timeout=10)
                self.run(_cancel_the_rest(), timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            loop.close()
            self._loop = None
            for client in self._ldap_clients:
                client.close()
            self._ldap_clients.clear()
            if self.ldap is not None:
                self.ldap.stop()
                self.ldap = None
            if self.network is not None:
                self.network.destroy()
                self.network = None
            self.lock.release()
            if self._own_workdir:
                try:
                    _REMOVER.submit(shutil.rmtree, self.workdir, ignore_errors=True)
                except RuntimeError:  # the interpreter is exiting and takes no more work: now, then
                    shutil.rmtree(self.workdir, ignore_errors=True)

    def _make_network(self) -> dict[str, Namespace]:
        """The netns backend: the lab's hosts on a bridge, each stand-in server and each sending MTA
        in its namespace."""
        config = self.config
        if config.port_offset != 0 or not is_lab_address(config.base) or config.base.is_loopback:
            raise LabError(
                "real MTAs (a server stood in for, a sending host) need the lab on 198.18.0.0/15 with "
                f"standard ports "
                f"(base {config.base}, port offset {config.port_offset})"
            )
        network = LabNetwork(ipaddress.IPv4Network(f"{config.base}/24", strict=False), config.name)
        self.network = network.create()
        outside = {
            address
            for name in self._stand_in_factories
            for address in (config.organization.server(name).address, *self._vs_addresses(name))
        }
        outside |= {config.host(name).address for name in self._sender_hosts}
        for address in sorted({host.address for host in config.hosts.values()} - outside):
            network.add_local(address)
        namespaces: dict[str, Namespace] = {}
        for name in self._stand_in_factories:
            server = config.organization.server(name)
            namespaces[name] = network.add_namespace(
                name, server.address, config.dns_address, extra=self._vs_addresses(name)
            )
        for name in self._sender_hosts:
            namespaces[name] = network.add_namespace(name, config.host(name).address, config.dns_address)
        return namespaces

    def _vs_addresses(self, server: str) -> list[str]:
        me = self.config.organization.server(server)
        return sorted({vs.address for vs in me.virtual_servers} - {me.address})

    async def _stop(self) -> None:
        if self.control is not None:
            await self.control.stop()
        for server in self.servers.values():
            await server.stop()
        for sink in self.sinks.values():
            await sink.stop()
        await self.dns.stop()

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- driving ---------------------------------------------------------------------------------

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        if self._loop is None:
            coroutine.close()
            raise LabError("the lab is not running")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except BaseException:
            # Interrupted (a signal, a time-out): the coroutine must not go on in the lab's thread,
            # starting what the clean-up has already stopped.
            future.cancel()
            raise

    def settle(
        self, timeout: float = 15.0, quiet: float | None = None, *, wait_for_retries: bool = True
    ) -> bool:
        """Wait until every server's queues are idle (parked retries excepted) for `quiet` seconds.

        By default a lab whose servers are all the reference MTA's, in this process, is settled at the
        first look that finds them idle, confirmed once more after the loop has run what was ready:
        their `idle` sees every message in flight (one being received keeps its session busy until it
        is queued, one being sent keeps its entry busy until the reply), so there is nothing to wait
        out. A program of its own (a stand-in, a sending MTA, an MTA outside) is seen from outside, and
        must stay idle for QUIET seconds."""
        if quiet is None:
            quiet = QUIET if self.stand_ins or self.senders or self.outside else 0.0

        async def wait() -> bool:
            began = time.monotonic()
            deadline = began + timeout
            # A retry due before the deadline is work still to come: fault traces wait for it.
            horizon = time.time() + timeout if wait_for_retries else None
            quiet_since: float | None = None
            pause = POLL_FIRST
            while time.monotonic() < deadline:
                if (
                    all(server.idle(horizon) for server in self.servers.values())
                    and all(stand_in.idle() for stand_in in self.stand_ins.values())
                    and all(sender.idle() for sender in self.senders.values())
                    and all(outside.idle(began) for outside in self.outside.values())
                ):
                    if quiet_since is not None and time.monotonic() - quiet_since >= quiet:
                        return True
                    quiet_since = quiet_since or time.monotonic()
                    # Without a quiet period, the look that confirms comes at once; with one, a program
                    # seen from outside is looked at as often as before.
                    pause = POLL_FIRST if quiet == 0 else POLL_MAX
                else:
                    quiet_since = None
                    # Busy: look again soon, then less often while the work goes on (a retry timer).
                    pause = min(pause * 2, POLL_MAX)
                await asyncio.sleep(pause)
            return False

        return self.run(wait(), timeout=timeout + 5)

    # --- control: what an administrator (or a trace's setup) does to the running organization ---

    def set_connector(self, name: str, up: bool) -> None:
        """Mark a connector down or up in the link state every server routes by."""

        async def change() -> None:
            self.change_connector(name, up)

        self.run(change())

    def change_connector(self, name: str, up: bool) -> None:
        self.link_state.set_connector(name, up)

    async def submit_through_store(
        self, server: str, mailbox: str, recipients: list[str], content: bytes, defer: float = 0.0
    ) -> str:
        exchange = self.servers[self.config.organization.server(server).name]
        return await exchange.submit_from_store(mailbox, recipients, content, defer=defer)

    def set_server(self, name: str, up: bool) -> None:
        """Take a server down (its virtual servers stop answering, link state marks it down) or back up."""
        self.run(self.change_server(name, up))

    async def change_server(self, name: str, up: bool) -> None:
        server = self.servers[self.config.organization.server(name).name]
        if up:
            await server.listen()
        else:
            await server.close()
        self.link_state.set_server(name, up)

    def submit(
        self, server: str, mailbox: str, recipients: list[str], content: bytes, defer: float = 0.0
    ) -> str:
        """A MAPI/OWA client submits through the store of `server` (ValueError if the mailbox is not
        there), deferred by `defer` seconds if asked; returns the message's Message-ID."""
        return self.run(self.submit_through_store(server, mailbox, recipients, content, defer))

    def foreign_send(self, gateway: str, memo: bytes) -> str:
        """The foreign system hands `memo` to the gateway connector `gateway` (ValueError if the
        gateway cannot read it); returns the item's name in the gateway's IN folder."""
        for server in self.servers.values():
            if gateway.lower() in server.gateways:
                return self.run(server.gateways[gateway.lower()].receive(memo))
        raise ValueError(f"no gateway connector named {gateway!r} runs in this lab")

    def set_gateway(self, name: str, running: bool) -> None:
        """Stop the service of gateway connector `name` (it takes no memos and delivers none; the MTA
        keeps filling its MTS-OUT folder) or start it again (LabError if no such gateway runs)."""

        async def change() -> None:
            self.change_gateway(name, running)

        self.run(change())

    def change_gateway(self, name: str, running: bool) -> None:
        """The same, on the lab's loop."""
        for server in self.servers.values():
            if name.lower() in server.gateways:
                server.set_gateway(name, running)
                return
        raise LabError(f"no gateway connector named {name!r} runs in this lab")

    def set_global_catalog(self, up: bool) -> None:
        """Stop the global catalog (every look-up fails as unreachable) or bring it back; when it is
        back, what waits in "Messages awaiting directory lookup" is categorized at once."""

        async def change() -> None:
            self.change_global_catalog(up)

        self.run(change())

    def change_global_catalog(self, up: bool) -> None:
        self.gc.available = up
        if up:
            for server in self.servers.values():
                server.aq.retry_now(DIRECTORY_LOOKUP)

    def freeze(self, server: str, queue: str, frozen: bool = True) -> None:
        """Freeze (or unfreeze) a link queue of a server, as Queue Viewer does."""

        async def change() -> None:
            self.change_freeze(server, queue, frozen)

        self.run(change())

    def change_freeze(self, server: str, queue: str, frozen: bool) -> None:
        """The same, on the lab's loop."""
        self.servers[self.config.organization.server(server).name].freeze(queue, frozen)

    def force_connection(self, queue: str) -> int:
        """Queue Viewer's Force Connection on link queue `queue` of every server: what waits in it for
        its connector's schedule (or its next retry) is sent now. How many messages it released."""

        async def change() -> int:
            return self.change_force(queue)

        return self.run(change())

    def change_force(self, queue: str) -> int:
        """The same, on the lab's loop."""
        return sum(server.force_connection(queue) for server in self.servers.values())

    def frozen_queues(self) -> dict[str, set[str]]:
        return {name: set(server.frozen) for name, server in self.servers.items()}

    def queues(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        async def snapshot() -> dict[str, dict[str, list[dict[str, Any]]]]:
            return self.queue_snapshot()

        return self.run(snapshot())

    def queue_snapshot(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Every server's queues (call on the lab's loop)."""
        return {name: server.queues() for name, server in self.servers.items()}

    def client_socket(self, source: str) -> socket.socket | None:
        """A socket bound to `source` where the lab holds that address apart from this process's
        network (a container's); None where a session simply binds it here."""
        return None

    # --- evidence: what the lab's hosts saw (a backend that runs them elsewhere asks them there) ---

    @property
    def reference_server_names(self) -> list[str]:
        """The servers the reference MTA runs (not those a real MTA stands in for)."""
        return list(self.servers)

    def dns_queries(self) -> list[Query]:
        return self.dns.queries

    def ldap_queries(self) -> list[LdapQuery]:
        return self.gc.queries

    def sink_captures(self) -> list[tuple[str, Capture]]:
        """What each Internet host received, with the host's name."""
        return [(sink.host.name, capture) for sink in self.sinks.values() for capture in sink.captures]

    def add_sink_rule(self, host: str, rule: Mapping[str, Any]) -> None:
        """A fault rule for an Internet host (a trace's sink_rule action), as its lab file would give it."""
        self.sinks[self.config.host(host).name].add_rule(sink_rule(rule))

    @property
    def tracking_dir(self) -> Path:
        return self.workdir / "tracking"


async def _listening(starting: Coroutine[Any, Any, None], what: str, address: str, port: int) -> None:
    try:
        await starting
    except OSError as exc:
        relocate = "relocate this lab (--base / --port-offset, or MAILFLOW_LAB_BASE / MAILFLOW_PORT_OFFSET)"
        if exc.errno == errno.EADDRINUSE:
            # Usually another lab (or a left-over process) on the same base and port offset.
            reason = f"the address is in use by another lab or program; stop it, or {relocate}"
        elif exc.errno == errno.EADDRNOTAVAIL:
            reason = (
                "no interface has this address (198.18.0.0/15 is for labs with a real MTA, which make "
                f"their own network); {relocate} into 127.0.0.0/8"
            )
        else:
            reason = f"{exc.strerror or exc}; {relocate}"
        raise LabError(f"{what} cannot listen on {address}:{port}: {reason}") from exc


async def _cancel_the_rest() -> None:
    """Whatever still runs on the lab's loop once it is stopped (a start a signal cut short, a server's
    own tasks): cancelled and waited for, so that closing the loop destroys no pending task."""
    rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)
