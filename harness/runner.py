"""Runs one trace against one target: start the lab, replay each session from its client's address,
let the lab settle, gather the evidence and check the outcome."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.resolver

from harness.expect import Check, Evidence, check_outcome
from harness.lab import config as lab_config
from harness.lab.config import LabConfig
from harness.lab.runtime import LabError
from harness.replay import Exchange, SessionResult, run_session
from harness.targets import Target
from harness.trace import MESSAGE_DIRS, Connect, Trace


@dataclass
class SessionRun:
    client: str
    endpoint: str
    result: SessionResult


@dataclass
class TraceResult:
    trace: Trace
    target: str
    sessions: list[SessionRun] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    evidence: Evidence | None = None
    lab_started_in: float = 0.0
    duration: float = 0.0

    @property
    def passed(self) -> bool:
        return all(s.result.passed for s in self.sessions) and all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        problems = []
        for number, run in enumerate(self.sessions):
            for exchange in run.result.exchanges:
                for failure in exchange.failures:
                    problems.append(
                        f"session {number + 1} ({run.client}), step {exchange.index}: "
                        f"{exchange.title}: {failure}"
                    )
        for check in self.checks:
            problems.extend(check.failures)
        return problems


def relocation() -> tuple[str | None, int | None]:
    """Each pytest-xdist worker gets its own address block so labs run side by side."""
    base = os.environ.get("MAILFLOW_LAB_BASE")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if base is None and worker.startswith("gw") and worker[2:].isdigit():
        base = f"127.{101 + int(worker[2:]) % 150}.0.0"
    offset = os.environ.get("MAILFLOW_PORT_OFFSET")
    return base, int(offset) if offset else None


def run_trace(trace: Trace, target: Target) -> TraceResult:
    began = time.perf_counter()
    base, offset = relocation()
    config = lab_config.load(trace.lab, base=base, port_offset=offset)
    result = TraceResult(trace=trace, target=target.name)
    with target.lab(config) as lab:
        result.lab_started_in = lab.started_in
        for session in trace.sessions:
            client = config.host(session.client)
            host, port = asyncio.run(endpoint(session.connect, config, client.address))
            if session.refused:
                result.sessions.append(
                    SessionRun(
                        session.client,
                        f"{host}:{port}",
                        asyncio.run(expect_refused(host, port, client.address)),
                    )
                )
                continue
            outcome = asyncio.run(
                run_session(
                    session.steps,
                    host=host,
                    port=port,
                    source_address=client.address,
                    base_dir=trace.base_dir,
                    search_dirs=MESSAGE_DIRS,
                    timeout=min(trace.timeout, 30.0),
                )
            )
            result.sessions.append(SessionRun(session.client, f"{host}:{port}", outcome))
            if not outcome.passed:
                break
        if not lab.settle(timeout=trace.timeout):
            raise LabError(f"the lab did not settle within {trace.timeout} s: {lab.queues()}")
        result.evidence = Evidence.collect(lab)
        result.checks = check_outcome(trace.outcome, result.evidence)
    result.duration = time.perf_counter() - began
    return result


async def expect_refused(host: str, port: int, source: str) -> SessionResult:
    """A session whose connection must be refused: nothing listens there."""
    exchange = Exchange(
        index=0, title=f"connect {host}:{port} is refused", sent=b"", reply=None, failures=[], error=None
    )
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=(source, 0)), 5.0)
    except (ConnectionRefusedError, TimeoutError) as exc:
        note = f"-- connect {host}:{port} from {source}: {exc.__class__.__name__} (expected)"
        return SessionResult([exchange], note, True, "none", (source, 0))
    writer.close()
    exchange.failures.append(f"expected the connection to {host}:{port} to be refused, but it was accepted")
    return SessionResult(
        [exchange], f"-- connect {host}:{port} from {source}: accepted", False, "client", (source, 0)
    )


async def endpoint(connect: Connect, config: LabConfig, source: str) -> tuple[str, int]:
    """Where a session connects. `mx:` resolves like a sending MTA does (IN-1): MX by preference, then
    the exchanger's A record, asked of the lab's DNS from the client's own address."""
    port = config.port(25)
    if connect.server:
        server = config.organization.server(connect.server)
        vs = server.default_virtual_server
        if connect.virtual_server:
            matches = [v for v in server.virtual_servers if v.name.lower() == connect.virtual_server.lower()]
            if not matches:
                raise LabError(f"server {server.name} has no virtual server {connect.virtual_server!r}")
            vs = matches[0]
        return vs.address, vs.port
    if connect.host:
        return config.host(connect.host).address, port
    assert connect.mx is not None
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [config.dns_address]
    resolver.port = config.dns_port
    resolver.lifetime = 5.0
    try:
        answer = await resolver.resolve(connect.mx, "MX", source=source)
        exchanges = sorted(answer, key=lambda r: r.preference)
        for record in exchanges:
            addresses = await resolver.resolve(record.exchange, "A", source=source)
            for address in addresses:
                return address.to_text(), port
    except (
        dns.resolver.NXDOMAIN,
        dns.resolver.NoAnswer,
        dns.resolver.NoNameservers,
        dns.exception.Timeout,
    ) as exc:
        raise LabError(f"cannot resolve the MX of {connect.mx} in the lab: {exc}") from exc
    raise LabError(f"the MX of {connect.mx} has no address")
