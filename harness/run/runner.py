"""Runs one trace against one target: start the lab, replay each session from its client's address,
hand each `via:` message to the real sending MTA on its host, let the lab settle, gather the evidence
and check the outcome. A trace with a real sending MTA runs its lab in network namespaces (198.18.0.0/15,
standard ports), whatever the target: the MTA resolves through the lab's DNS on port 53 and delivers to
port 25."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver

from harness.corpus.messages import MESSAGE_DIRS, message_bytes
from harness.corpus.trace import (
    Connect,
    ForeignMemo,
    LabAction,
    LabVerb,
    Session,
    Submission,
    Trace,
    ViaMta,
)
from harness.judge.evidence import Evidence
from harness.judge.expectations import Check, check_outcome, check_queue
from harness.judge.records import Failure, Kind, Waived, lines, located, step_name
from harness.lab import config as lab_config
from harness.lab.config import LabConfig
from harness.lab.placement import relocation
from harness.lab.runtime import Lab, LabError
from harness.run.replay import Exchange, SessionResult, run_session, through
from harness.smtp.masking import Normalizer
from harness.targets import Target
from harness.targets.outside import OutsideMta


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

    @property
    def waived(self) -> list[Waived]:
        """The target's known deviations met on the way (tolerated: the trace can still pass)."""
        found: list[Waived] = []
        for number, run in enumerate(self.sessions):
            where = self._where(number, run)
            for exchange in run.result.exchanges:
                step = where(exchange)
                found += [Waived(replace(w.failure, **step), w.reason, w.entry) for w in exchange.deviations]
        return found

    @property
    def deviations(self) -> list[str]:
        """The known deviations met on the way, as sentences with their reasons."""
        return [w.text() for w in self.waived]

    def records(self) -> list[Failure]:
        """Every failure, located: the failed steps (sessions and steps count from 1, as a reader of the
        trace counts, with the step's line in the trace file), then the outcome checks. Once a session
        has failed the trace stops there, so the outcome checks that fail afterwards are marked as
        following from it (knock_on) rather than read as failures of their own."""
        found: list[Failure] = []
        for number, run in enumerate(self.sessions):
            where = self._where(number, run)
            for exchange in run.result.exchanges:
                found += located(exchange.records, **where(exchange))
        stopped = bool(found)
        for check in self.checks:
            found += located(check.records, knock_on=stopped)
        return found

    def as_outcome(self) -> dict[str, object]:
        """The run as the conformance matrix judges it (harness/reports/matrix.py: verdict)."""
        return {
            "trace": self.trace.id,
            "spec": list(self.trace.spec),
            "outcome": "passed" if self.passed else "failed",
            "message": "\n".join(self.failures()),
            "failures": [f.to_json() for f in self.records()],
            "deviations": self.deviations,
            "waived": [w.to_json() for w in self.waived],
        }

    def failures(self) -> list[str]:
        """One line per failure (harness/judge/records.py: lines)."""
        return lines(self.records())

    def first_failure(self) -> dict[str, object]:
        """The first difference, as `last-run.json` keeps it (harness/run/outcomes.py: a reason)."""
        reason: dict[str, object] = {"kind": "failure", "file": str(self.trace.path)}
        for number, run in enumerate(self.sessions):
            where = self._where(number, run)
            for exchange in run.result.exchanges:
                if not exchange.records:
                    continue
                step = where(exchange)
                unplaced = located(exchange.records, **{**step, "line": None})
                reason.update(
                    message=lines(unplaced)[0],
                    line=step["line"],
                    step=step_name(unplaced[0]),
                    expected=exchange.title,
                    received=exchange.reply.raw_text if exchange.reply is not None else exchange.error,
                )
                return reason
        for check in self.checks:
            if check.records:
                reason.update(
                    message=f"{check.title}: {check.failures[0]}",
                    step=check.title,
                    expected=check.expected,
                    received=check.actual,
                )
                return reason
        reason["message"] = "failed"
        return reason

    def _lines(self, number: int) -> tuple[int, ...]:
        item = self.trace.sessions[number] if number < len(self.trace.sessions) else None
        return item.step_lines if isinstance(item, Session) else (item.line,) if item is not None else ()

    def _where(self, number: int, run: SessionRun) -> Callable[[Exchange], dict[str, Any]]:
        """Where a step of session `number` is: the session and client, and the step's line."""
        step_lines = self._lines(number)

        def where(exchange: Exchange) -> dict[str, Any]:
            line = step_lines[exchange.index] if exchange.index < len(step_lines) else None
            return {"session": number + 1, "client": run.client, "line": line}

        return where


def run_trace(trace: Trace, target: Target) -> TraceResult:
    began = time.perf_counter()
    base, offset = relocation(netns=target.needs_netns or bool(trace.senders), docker=target.in_docker)
    config = lab_config.load(trace.lab, base=base, port_offset=offset)
    result = TraceResult(trace=trace, target=target.name)
    # One for the whole trace: a value that recurs across its sessions keeps its placeholder.
    normalizer = Normalizer(trace.masks)
    with target.lab(config, senders=trace.senders) as lab:
        result.lab_started_in = lab.started_in
        for item in trace.sessions:
            if isinstance(item, Submission):
                run = _submit(lab, item, trace)
            elif isinstance(item, ForeignMemo):
                run = _foreign(lab, item, trace)
            elif isinstance(item, LabAction):
                run = _act(lab, item, trace)
            elif isinstance(item, ViaMta):
                run = _via(lab, item, trace)
            else:
                run = _smtp_session(lab, item, trace, target, normalizer)
            result.sessions.append(run)
            if not run.result.passed:
                break
        settled = lab.settle(timeout=trace.timeout, wait_for_retries=trace.wait_for_retries)
        result.evidence = Evidence.collect(lab)
        result.checks = check_outcome(
            trace.outcome, result.evidence, target.capabilities, wording=target.judges_wording(trace)
        )
        if not settled:
            # Messages still being retried when the trace's time is up: the target's behaviour, so a
            # failed check (with the queues as evidence) rather than a broken run.
            busy = [
                f"{server}: {queue}: {len(items)} message(s)"
                for server, queues in result.evidence.queues.items()
                for queue, items in queues.items()
                if items
            ]
            result.checks.insert(
                0,
                Check(
                    f"the lab settled within {trace.timeout:g} s",
                    [Failure(Kind.SETTLED, f"{trace.timeout:g}")],
                    "no message in progress",
                    "\n".join(busy) or "none",
                ),
            )
    result.duration = time.perf_counter() - began
    return result


def _smtp_session(
    lab: Lab, session: Session, trace: Trace, target: Target, normalizer: Normalizer
) -> SessionRun:
    config = lab.config
    client = config.host(session.client)
    host, port, name = asyncio.run(endpoint(session.connect, config, client.address))
    source: str | None = client.address
    tls_context = lab.certificates.client_context()
    outside = elsewhere(target, config, host)
    if outside is not None:
        # The server is an MTA outside the lab: its certificate is its own, and off loopback the
        # lab client's address is not ours to send from.
        host, port, name = outside.host, outside.port, outside.host
        source = client.address if outside.on_loopback else None
        tls_context = outside.tls.context()
    # Where the client's address is a container's, the session leaves from that container's network.
    bound = lab.client_socket(source) if source is not None and outside is None else None
    if session.refused:
        refused = expect_refused(host, port, source, bound)
        return SessionRun(session.client, f"{host}:{port}", asyncio.run(refused))
    outcome = asyncio.run(
        run_session(
            session.steps,
            host=host,
            port=port,
            source_address=source,
            base_dir=trace.base_dir,
            search_dirs=MESSAGE_DIRS,
            timeout=min(trace.timeout, 30.0),
            tls_context=tls_context,
            server_hostname=name,
            tolerate=target.tolerate(trace.id, trace.spec),
            normalizer=normalizer,
            wording=target.judges_wording(trace),
            implicit_tls=outside is not None and outside.implicit_tls,
            bound=bound,
        )
    )
    return SessionRun(session.client, f"{host}:{port}", outcome)


def elsewhere(target: Target, config: LabConfig, address: str) -> OutsideMta | None:
    """The MTA outside the lab a session to `address` goes to instead: any address of the server it
    stands in for (its default virtual server and the others, which a trace reaches only on a target
    that has virtual servers), whether the session named the server or found it by MX."""
    if target.outside is None or target.stands_in_for is None:
        return None
    server = config.organization.server(target.stands_in_for)
    addresses = {server.address, *(vs.address for vs in server.virtual_servers)}
    return target.outside if address in addresses else None


def _single(title: str, failure: str | None, note: str) -> SessionResult:
    """A one-step result for what is not an SMTP session (a store submission, a lab action)."""
    exchange = Exchange(index=0, title=title, sent=b"", reply=None, records=[], error=failure)
    if failure:
        exchange.fail(Kind.STEP, failure)
    return SessionResult([exchange], note, failure is None, "none", ("", 0))


def _submit(lab: Lab, item: Submission, trace: Trace) -> SessionRun:
    content = message_bytes(item.data, trace.base_dir, MESSAGE_DIRS)
    title = f"submit through the store of {item.server}: {item.mailbox} → {', '.join(item.to)}"
    try:
        msgid = lab.submit(item.server, item.mailbox, list(item.to), content, defer=item.defer)
    except ValueError as exc:
        failure = None if item.refused else str(exc)
        return SessionRun("store", item.server, _single(title, failure, f"-- {title}: refused: {exc}"))
    failure = "expected the store to refuse the submission" if item.refused else None
    return SessionRun("store", item.server, _single(title, failure, f"-- {title}: submitted as <{msgid}>"))


def _foreign(lab: Lab, item: ForeignMemo, trace: Trace) -> SessionRun:
    memo = message_bytes(item.data, trace.base_dir, MESSAGE_DIRS)
    title = f"foreign system hands a memo to {item.gateway}"
    try:
        handle = lab.foreign_send(item.gateway, memo)
    except ValueError as exc:
        failure = None if item.refused else str(exc)
        return SessionRun("foreign", item.gateway, _single(title, failure, f"-- {title}: refused: {exc}"))
    failure = "expected the gateway to refuse the memo" if item.refused else None
    return SessionRun(
        "foreign", item.gateway, _single(title, failure, f"-- {title}: queued in IN as {handle}")
    )


def _via(lab: Lab, item: ViaMta, trace: Trace) -> SessionRun:
    """Hand the message to the real MTA on the item's host and wait until it has passed it on to the next
    hop (or given up on it): what it logged of each recipient is the step's transcript."""
    sender = lab.senders[lab.config.host(item.host).name]
    content = message_bytes(item.data, trace.base_dir, MESSAGE_DIRS)
    title = f"{sender.mta} on {item.host} sends {item.sender or '<>'} → {', '.join(item.to)}"
    since = sender.log_size()
    sender.send(item.sender, item.to, content)
    attempts = sender.wait(item.to, since, timeout=trace.timeout)
    note = "\n".join([f"-- {title}", *(f"   {a.line}" for a in attempts)])
    undelivered = [a for a in attempts if a.status != "sent"]
    failure = None
    if undelivered:
        failure = f"{sender.mta} on {item.host} did not hand the message over: " + "; ".join(
            f"{a.recipient}: {a.status or 'nothing logged'} ({a.line})" for a in undelivered
        )
    return SessionRun(item.host, f"{sender.mta} (sendmail)", _single(title, failure, note))


def _act(lab: Lab, item: LabAction, trace: Trace) -> SessionRun:
    title = f"lab: {item.action.replace('_', ' ')}" + (f" {item.target}" if item.target else "")
    if item.action is LabVerb.SETTLE:
        retries = trace.wait_for_retries and (item.rule or {}).get("retries", True)
        settled = lab.settle(timeout=trace.timeout, wait_for_retries=retries)
        failure = None if settled else f"the lab did not settle within {trace.timeout:g} s"
        if failure is None and item.rule:
            # What the queues hold at this point of the trace (a frozen queue keeping a message).
            snapshot = lab.queues()
            checks = [check_queue(spec, snapshot) for spec in item.rule.get("queues") or []]
            wrong = [
                f"{c.title}: expected {c.expected}; the queues hold: {c.actual}"
                for c in checks
                if not c.passed
            ]
            failure = "; ".join(wrong) or None
            title += f", then check {len(checks)} queue(s)"
        return SessionRun("lab", "settle", _single(title, failure, f"-- {title}"))
    if item.action in (LabVerb.GLOBAL_CATALOG_DOWN, LabVerb.GLOBAL_CATALOG_UP):
        lab.set_global_catalog(item.action.up)
        return SessionRun("lab", "global catalog", _single(title, None, f"-- {title}"))
    assert item.target is not None
    if item.action in (LabVerb.FREEZE, LabVerb.UNFREEZE) and item.rule is not None:
        queue = str(item.rule["queue"])
        lab.freeze(item.target or "", queue, item.action is LabVerb.FREEZE)
        return SessionRun("lab", "queues", _single(f"{title}: {queue}", None, f"-- {title}: {queue}"))
    if item.rule is not None:
        lab.add_sink_rule(item.target, item.rule)
        return SessionRun("lab", "sink", _single(title, None, f"-- {title}: {item.rule}"))
    if item.action is LabVerb.FORCE_CONNECTION:
        lab.force_connection(item.target)
    elif item.action in (LabVerb.CONNECTOR_DOWN, LabVerb.CONNECTOR_UP):
        lab.set_connector(item.target, item.action.up)
    elif item.action in (LabVerb.GATEWAY_STOPPED, LabVerb.GATEWAY_STARTED):
        lab.set_gateway(item.target, item.action.up)
    else:
        lab.set_server(item.target, item.action.up)
    return SessionRun("lab", item.action.subject, _single(title, None, f"-- {title}"))


async def expect_refused(
    host: str, port: int, source: str | None, bound: socket.socket | None = None
) -> SessionResult:
    """A session whose connection must be refused: nothing listens there."""
    exchange = Exchange(
        index=0, title=f"connect {host}:{port} is refused", sent=b"", reply=None, records=[], error=None
    )
    local = (source, 0) if source else None

    async def connect() -> asyncio.StreamWriter:
        if bound is not None:
            return (await through(bound, host, port, None))[1]
        return (await asyncio.open_connection(host, port, local_addr=local))[1]

    try:
        writer = await asyncio.wait_for(connect(), 5.0)
    except (ConnectionRefusedError, TimeoutError) as exc:
        note = f"-- connect {host}:{port} from {source}: {exc.__class__.__name__} (expected)"
        return SessionResult([exchange], note, True, "none", (source or "", 0))
    writer.close()
    exchange.fail(Kind.STEP, f"expected the connection to {host}:{port} to be refused, but it was accepted")
    return SessionResult(
        [exchange], f"-- connect {host}:{port} from {source}: accepted", False, "client", (source or "", 0)
    )


async def endpoint(connect: Connect, config: LabConfig, source: str) -> tuple[str, int, str | None]:
    """Where a session connects (address, port, and the name a TLS certificate must carry). `mx:`
    resolves like a sending MTA does (IN-1): MX by preference, then the exchanger's A record, asked of
    the lab's DNS from the client's own address."""
    port = config.port(25)
    if connect.server:
        server = config.organization.server(connect.server)
        vs = server.default_virtual_server
        if connect.virtual_server:
            matches = [v for v in server.virtual_servers if v.name.lower() == connect.virtual_server.lower()]
            if not matches:
                raise LabError(f"server {server.name} has no virtual server {connect.virtual_server!r}")
            vs = matches[0]
        return vs.address, vs.port, server.fqdn
    if connect.host:
        host = config.host(connect.host)
        return host.address, port, host.fqdn
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
                return address.to_text(), port, record.exchange.to_text(omit_final_dot=True)
    except (
        dns.resolver.NXDOMAIN,
        dns.resolver.NoAnswer,
        dns.resolver.NoNameservers,
        dns.exception.Timeout,
    ) as exc:
        raise LabError(f"cannot resolve the MX of {connect.mx} in the lab: {exc}") from exc
    raise LabError(f"the MX of {connect.mx} has no address")
