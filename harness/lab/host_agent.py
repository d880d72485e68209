"""One lab host in a container of its own (the Docker backend): the fake DNS server, the global catalog
over real LDAP, an Internet host's sink, or a reference Exchange server, on the host's lab address.

`python -m harness.lab.host_agent --socket PATH --host NAME` waits on a Unix socket in the folder the
container shares with the harness (the lab's folders are there, at the same path on both sides). The
harness asks it, one JSON object per line and one reply each way per connection:

  {"op": "start", "lab": PATH, "base": A, "port_offset": N, "workdir": W}   build the host, fresh, and
                                                     start it: every trace gets new objects, as in-process
  {"op": "stop"}                                     stop it (the container stays for the next trace)
  {"op": "dns_queries"} · {"op": "ldap_queries"} · {"op": "captures"}     what the host saw
  {"op": "global_catalog", "up": bool} · {"op": "sink_rule", "rule": {...}}
  {"op": "idle", "horizon": T|null} · {"op": "queues"} · {"op": "link", "connector"|"server": N, "up": b}
  {"op": "listen", "up": bool} · {"op": "submit", ...} · {"op": "foreign", ...} · {"op": "freeze", ...}
  {"op": "retry_directory"} · {"op": "frozen"} · {"op": "force", "queue": Q}

Replies are {"ok": true, "result": ...} or {"ok": false, "error": "...", "kind": "input" | "broken"}, as
on the lab's control socket (harness/lab/control.py). The same classes as the in-process lab do the work
(FakeDNS, the LDAP server in front of MockGlobalCatalog, SinkHost, ExchangeServer): the backends differ
only in where each host runs.

`--start LABFILE --workdir DIR [--base B] [--port-offset N]` starts the host at once, as a "start"
request would, with no harness to ask it (a lab exported for docker compose: harness/lab/compose.py);
the socket is then optional. SIGTERM or SIGINT stop the host and end the agent.

A server whose virtual servers have addresses of their own needs them on the container's interface
before it listens: the agent adds those it lacks, which takes root and CAP_NET_ADMIN (compose runs it
so; the Docker backend adds them itself, so there they are found in place).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.lab import config as lab_config
from harness.lab.config import LabConfig, sink_rule
from harness.lab.dns import FakeDNS
from harness.lab.gc import MockGlobalCatalog
from harness.lab.ldap_server import LdapServer
from harness.lab.sinks import SINKS_FOLDER, SinkHost
from harness.yamlsource import SourceError
from reference_mta.ldap_directory import LdapDirectory
from reference_mta.linkstate import LinkState
from reference_mta.queue_contract import DIRECTORY_LOOKUP
from reference_mta.server import Environment, ExchangeServer

TLS_FOLDER = "tls"
REQUEST_LIMIT = 256 * 1024 * 1024
INTERFACE = "eth0"  # a container's interface on the lab network


def chain_file(workdir: Path, fqdn: str) -> Path:
    """Where the harness puts a server's key and certificate chain for its container (one lab CA)."""
    return workdir / TLS_FOLDER / f"{fqdn.lower()}.pem"


class Refused(Exception):
    """The store or a gateway refused what was handed to it, as Exchange would: the request's answer,
    not a fault of the lab."""


class AgentError(ValueError):
    """A request the host cannot serve (it is not that kind of host, or not started)."""


class AddressError(RuntimeError):
    """A server's address could not be put on the container's interface."""


def claim_addresses(addresses: Iterable[str], interface: str = INTERFACE) -> None:
    """Put on `interface` each of `addresses` this host does not hold yet (a virtual server's own)."""
    for address in addresses:
        if _held(address):
            continue
        try:
            result = subprocess.run(
                ["ip", "addr", "add", f"{address}/32", "dev", interface],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            said = result.stderr.strip()
        except FileNotFoundError:
            said = "the ip command (iproute2) is not installed"
        if not _held(address):  # another agent's or a racing add is as good as ours
            raise AddressError(
                f"cannot put the virtual server address {address} on {interface}: {said}; the host "
                "agent needs root and CAP_NET_ADMIN for that (compose: cap_add: [NET_ADMIN])"
            )


def _held(address: str) -> bool:
    """Whether this network namespace holds `address` (only a local address can be bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


class HostAgent:
    def __init__(self, host: str) -> None:
        self.host = host.lower()
        self.config: LabConfig | None = None
        self.dns: FakeDNS | None = None
        self.catalog: MockGlobalCatalog | None = None
        self.ldap: LdapServer | None = None
        self.sink: SinkHost | None = None
        self.server: ExchangeServer | None = None
        self.link_state: LinkState | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self, request: dict[str, Any]) -> str:
        await self.stop()
        config = lab_config.load(
            Path(request["lab"]), base=request.get("base"), port_offset=request.get("port_offset")
        )
        self.config = config
        workdir = Path(request["workdir"])
        kind = self._kind(config)
        if kind == "dns":
            self.dns = FakeDNS(
                config.dns_address,
                config.dns_port,
                config.records,
                authoritative_zones=config.organization.literal_policy_domains,
            )
            await self.dns.start()
        elif kind == "gc":
            self.catalog = MockGlobalCatalog(config.global_catalog)
            self.catalog.load()
            names = {h.address: h.name for h in reversed(list(config.hosts.values()))}
            names.update({s.address: s.name for s in config.organization.servers})
            self.ldap = LdapServer(
                self.catalog, config.global_catalog.address, config.global_catalog.port, names
            )
            await self.ldap.start()
        elif kind == "internet":
            self.sink = SinkHost(config.host(self.host), config.port(25))
            self.sink.keep_in(workdir / SINKS_FOLDER / self.sink.name)
            await self.sink.start()
        else:
            await self._start_server(config, workdir)
        return kind

    async def _start_server(self, config: LabConfig, workdir: Path) -> None:
        server = config.organization.server(self.host)
        gc = config.global_catalog

        def directory(client: str) -> LdapDirectory:
            return LdapDirectory(gc.address, gc.port, gc.bind_dn, gc.bind_password, client)

        contexts: dict[str, ssl.SSLContext] = {}

        def tls_context(fqdn: str) -> ssl.SSLContext:
            if fqdn not in contexts:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                path = chain_file(workdir, fqdn)
                if not path.is_file():  # ssl's own error names no file
                    raise FileNotFoundError(
                        f"{fqdn}'s key and certificate chain {path} is missing (the harness, or "
                        "`mailflow lab export`, writes it before the server starts)"
                    )
                context.load_cert_chain(str(path))
                contexts[fqdn] = context
            return contexts[fqdn]

        claim_addresses(sorted({vs.address for vs in server.virtual_servers} - {server.address}))
        self.link_state = LinkState(config.organization)
        environment = Environment(
            root=workdir,
            dns_address=config.dns_address,
            dns_port=config.dns_port,
            smtp_port=config.port(25),
            directory=directory,
            base_dn=gc.base_dn,
            authenticate=directory(f"{server.name} authentication").authenticate,
            retry=config.timers,
            link_state=self.link_state,
            tls_context=tls_context,
        )
        self.server = ExchangeServer(config.organization, server.name, environment)
        await self.server.start()

    def _kind(self, config: LabConfig) -> str:
        if any(s.name.lower() == self.host for s in config.organization.servers):
            return "server"
        host = config.host(self.host)
        if host.kind not in ("dns", "gc", "internet"):
            raise AgentError(f"lab host {host.name} is a {host.kind}: no container runs it")
        return host.kind

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.sink is not None:
            await self.sink.stop()
        if self.ldap is not None:
            await self.ldap.stop()
        if self.dns is not None:
            await self.dns.stop()
        self.server = self.sink = self.ldap = self.dns = None
        self.catalog = None
        self.link_state = None

    # --- requests --------------------------------------------------------------------------------

    async def handle(self, request: dict[str, Any]) -> Any:
        op = request.get("op")
        if op == "start":
            return await self.start(request)
        if op == "stop":
            await self.stop()
            return None
        if op == "ping":
            return self.host
        if op == "dns_queries":
            return [dataclasses.asdict(q) for q in self._dns().queries]
        if op == "ldap_queries":
            return [dataclasses.asdict(q) for q in self._catalog().queries]
        if op == "global_catalog":
            self._catalog().available = bool(request["up"])
            return self._catalog().available
        if op == "captures":
            return [_capture(c) for c in self._sink().captures]
        if op == "sink_rule":
            self._sink().add_rule(sink_rule(request["rule"]))
            return None
        return await self._server_request(str(op), request)

    async def _server_request(self, op: str, request: dict[str, Any]) -> Any:
        handlers = {
            "idle": self._idle,
            "queues": self._queues,
            "link": self._link,
            "listen": self._listen,
            "retry_directory": self._retry_directory,
            "submit": self._submit,
            "foreign": self._foreign,
            "gateways": self._gateways,
            "gateway": self._gateway,
            "freeze": self._freeze,
            "frozen": self._frozen,
            "force": self._force,
        }
        if op not in handlers:
            raise AgentError(f"unknown operation {op!r}; operations: {', '.join(sorted(handlers))}")
        return await handlers[op](self._server(), request)

    async def _idle(self, server: ExchangeServer, request: dict[str, Any]) -> bool:
        horizon = request.get("horizon")
        return server.idle(float(horizon) if horizon is not None else None)

    async def _queues(self, server: ExchangeServer, _: dict[str, Any]) -> dict[str, Any]:
        return server.queues()

    async def _link(self, _: ExchangeServer, request: dict[str, Any]) -> None:
        assert self.link_state is not None
        if "connector" in request:
            self.link_state.set_connector(str(request["connector"]), bool(request["up"]))
        else:
            self.link_state.set_server(str(request["server"]), bool(request["up"]))

    async def _listen(self, server: ExchangeServer, request: dict[str, Any]) -> None:
        await (server.listen() if request["up"] else server.close())

    async def _retry_directory(self, server: ExchangeServer, _: dict[str, Any]) -> None:
        server.aq.retry_now(DIRECTORY_LOOKUP)

    async def _submit(self, server: ExchangeServer, request: dict[str, Any]) -> str:
        content = base64.b64decode(request["content"])
        try:
            return await server.submit_from_store(
                str(request["mailbox"]), list(request["to"]), content, defer=float(request.get("defer", 0.0))
            )
        except ValueError as exc:  # the store refused it: what a trace may expect
            raise Refused(str(exc)) from None

    async def _foreign(self, server: ExchangeServer, request: dict[str, Any]) -> str:
        name = str(request["gateway"]).lower()
        if name not in server.gateways:
            raise AgentError(f"no gateway connector {request['gateway']!r} runs on {self.host}")
        try:
            return await server.gateways[name].receive(base64.b64decode(request["memo"]))
        except ValueError as exc:  # the gateway could not read the memo
            raise Refused(str(exc)) from None

    async def _gateways(self, server: ExchangeServer, _: dict[str, Any]) -> list[str]:
        return sorted(server.gateways)

    async def _gateway(self, server: ExchangeServer, request: dict[str, Any]) -> None:
        name = str(request["name"])
        if name.lower() not in server.gateways:
            raise AgentError(f"no gateway connector {name!r} runs on {self.host}")
        server.set_gateway(name, bool(request["running"]))

    async def _freeze(self, server: ExchangeServer, request: dict[str, Any]) -> None:
        server.freeze(str(request["queue"]), bool(request["frozen"]))

    async def _force(self, server: ExchangeServer, request: dict[str, Any]) -> int:
        return server.force_connection(str(request["queue"]))

    async def _frozen(self, server: ExchangeServer, _: dict[str, Any]) -> list[str]:
        return sorted(server.frozen)

    def _dns(self) -> FakeDNS:
        if self.dns is None:
            raise AgentError(f"{self.host} runs no DNS server")
        return self.dns

    def _catalog(self) -> MockGlobalCatalog:
        if self.catalog is None:
            raise AgentError(f"{self.host} runs no global catalog")
        return self.catalog

    def _sink(self) -> SinkHost:
        if self.sink is None:
            raise AgentError(f"{self.host} is no Internet host")
        return self.sink

    def _server(self) -> ExchangeServer:
        if self.server is None:
            raise AgentError(f"{self.host} runs no Exchange server")
        return self.server


def _capture(capture: Any) -> dict[str, Any]:
    fields = dataclasses.asdict(capture)
    fields["data"] = base64.b64encode(capture.data).decode("ascii")
    return fields


async def listen(agent: HostAgent, socket_path: Path) -> asyncio.Server:
    """Answer the harness's requests on `socket_path`."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply: dict[str, Any]
            try:
                line = await reader.readline()
                reply = {"ok": True, "result": await agent.handle(json.loads(line))}
            except Refused as exc:
                reply = {"ok": False, "error": str(exc), "kind": "input"}
            except Exception as exc:  # the host keeps running; the harness says what broke
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "kind": "broken"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    # A store submission carries its message: far more than asyncio's default line limit of 64 KiB.
    server = await asyncio.start_unix_server(answer, path=str(socket_path), limit=REQUEST_LIMIT)
    socket_path.chmod(0o600)  # the harness's own user, whom the agent runs as, and no one else
    return server


async def run(agent: HostAgent, socket_path: Path | None, boot: dict[str, Any] | None) -> int:
    """Start the host at once if `boot` (a start request) says so, answer on the socket if there is
    one, and run until SIGTERM or SIGINT; the exit status (2: a wrong lab file or host name, 3: the
    host could not start)."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stopped.set)
    if boot is not None:
        try:
            kind = await agent.start(boot)
        except (SourceError, AgentError, KeyError) as exc:
            said = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # no repr quotes
            print(f"lab host {agent.host}: {said}", file=sys.stderr, flush=True)
            return 2
        except Exception as exc:  # what broke, in its own words, for `docker compose logs`
            await agent.stop()
            print(f"lab host {agent.host} could not start: {exc}", file=sys.stderr, flush=True)
            return 3
        print(f"lab host {agent.host} started: {kind}", flush=True)
    server = await listen(agent, socket_path) if socket_path is not None else None
    try:
        await stopped.wait()
    finally:
        if server is not None:
            server.close()
        await agent.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one lab host of mailflow's Docker backend")
    parser.add_argument("--host", required=True, help="the lab host this container is")
    parser.add_argument("--socket", type=Path, default=None, help="the Unix socket to answer on")
    parser.add_argument(
        "--start",
        type=Path,
        default=None,
        metavar="LABFILE",
        help="start the host at once from this lab file, without waiting for a start request",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="with --start: the lab's folder")
    parser.add_argument("--base", default=None, help="with --start: the lab's address base")
    parser.add_argument("--port-offset", type=int, default=None, help="with --start: the lab's port offset")
    args = parser.parse_args(argv)
    if args.socket is None and args.start is None:
        parser.error("give --socket PATH, --start LABFILE, or both")
    if args.start is not None and args.workdir is None:
        parser.error("--start needs --workdir DIR")
    boot = None
    if args.start is not None:
        boot = {
            "lab": str(args.start),
            "base": args.base,
            "port_offset": args.port_offset,
            "workdir": str(args.workdir),
        }
    return asyncio.run(run(HostAgent(args.host), args.socket, boot))


if __name__ == "__main__":
    sys.exit(main())
