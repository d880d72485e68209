"""Allure wiring: each trace is one Allure test named by its id — epic = flow, feature = the corpus folder,
a tag per catalogue ID, parameter = target;
each SMTP exchange and each outcome check is a step; transcript, tracking excerpt, DNS and LDAP logs,
delivered envelopes, the message's path and the log of a real MTA standing in for a server are attached.

allure-pytest reports a step as failed only when an AssertionError leaves it, so a failed exchange or
check raises one inside its step and we catch it just outside: the step shows red, the report goes on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import allure

from harness.corpus.catalogue import catalogue, flow_of
from harness.corpus.trace import Trace
from harness.judge.expectations import collapse
from harness.reports.diagram import path_svg
from harness.run.runner import TraceResult
from reference_mta import tracking


def label(trace: Trace, target: str) -> None:
    # The id, unique in the corpus: many traces share a title.
    allure.dynamic.title(trace.id)
    allure.dynamic.epic(flow_of(list(trace.spec)))
    allure.dynamic.feature(trace.id.split("/", 1)[0])
    # Behaviors lists a test under each of its stories and counts it once per story, so a trace that
    # claims five IDs would count five times: the IDs are tags, which group nothing.
    for spec_id in trace.spec:
        allure.dynamic.tag(spec_id)
    allure.dynamic.parameter("target", target)
    allure.dynamic.label("target", target)  # the matrix's column: reports filter and group by it
    allure.dynamic.label("trace", trace.id)
    for spec_id in sorted(trace.boundary):
        allure.dynamic.tag(f"boundary {spec_id}")
    known = catalogue()
    lines = [trace.title, *(["", trace.description] if trace.description else []), ""]
    lines += [f"Trace file: {trace.path}", "", "Checks:"]
    lines += [
        f"- {i}{' (boundary)' if i in trace.boundary else ''}: {known[i].title}"
        for i in trace.spec
        if i in known
    ]
    allure.dynamic.description("\n".join(lines).strip())


@contextmanager
def _step(title: str, failures: list[str]) -> Iterator[None]:
    try:
        with allure.step(title):
            yield
            if failures:
                raise AssertionError("\n".join(failures))
    except AssertionError:
        pass


def _text(body: str, name: str) -> None:
    allure.attach(body, name=name, attachment_type=allure.attachment_type.TEXT)


def deviated(failures: list[str], reasons: tuple[str, ...]) -> None:
    """The trace differs from Exchange only by the target's known deviations: shown, with their
    reasons, on a test that passes."""
    allure.dynamic.tag("known deviation")
    with allure.step(f"Known deviations of the target: {len(reasons)}"):
        _text("\n".join(reasons), "reasons")
        _text("\n".join(failures), "differences from Exchange")


def publish(result: TraceResult) -> None:
    for number, run in enumerate(result.sessions, start=1):
        session_failures = [f for e in run.result.exchanges for f in e.failures]
        with _step(f"Session {number}: {run.client} → {run.endpoint}", session_failures):
            for exchange in run.result.exchanges:
                with _step(exchange.title, exchange.failures):
                    if exchange.sent:
                        _text(exchange.sent.decode("utf-8", "replace"), "sent")
                    if exchange.reply is not None:
                        _text("\n".join(exchange.reply.lines), "reply")
            _text(run.result.transcript, f"transcript session {number}")
    for check in result.checks:
        if not check.observed:
            with allure.step(f"Not observable here: {check.title}"):
                _text(check.actual, "why")
            continue
        with _step(f"Check {check.title}", check.failures):
            if not check.passed:
                _text(f"expected:\n{check.expected}\n\nactual:\n{check.actual}", "expected vs actual")
    evidence = result.evidence
    if evidence is None:
        return
    if evidence.tracking:
        _text(_tracking_excerpt(evidence.tracking), "tracking log excerpt")
        _text(path_diagram(evidence.tracking), "message path")
        allure.attach(
            path_svg(evidence), name="message path diagram", attachment_type=allure.attachment_type.SVG
        )
    _text(
        "\n".join(
            f"{q.client} ({q.client_ip}) {q.transport} {q.name} {q.type} → {q.rcode} {' '.join(q.answers)}"
            for q in evidence.dns
        )
        or "no DNS queries",
        "DNS query log",
    )
    _text(
        "\n".join(
            f"{q.client}: {q.filter}  base={q.base} scope={q.scope} → {q.results}" for q in evidence.ldap
        )
        or "no LDAP queries",
        "LDAP query log",
    )
    _text("\n".join(d.describe() for d in evidence.deliveries) or "nothing delivered", "delivered envelopes")
    for log in evidence.mta_logs:
        _text(log.text or f"{log.mta} wrote nothing to its log", f"{log.mta} log ({log.server})")
    if not result.passed:
        _text("\n".join(result.failures()), "failures")
        # The same failures as records (kind, step, command, expected, actual): what verdicts read.
        allure.attach(
            json.dumps([f.to_json() for f in result.records()], indent=1),
            name="failure records",
            attachment_type=allure.attachment_type.JSON,
        )


def _tracking_excerpt(events: dict[str, list[dict[str, object]]]) -> str:
    lines = []
    for server, entries in events.items():
        for entry in entries:
            lines.append(
                f"{server}\t{entry['event-id']}\t{entry['spec']}\t{entry['recipient-address']}\t"
                f"{entry['msgid']}\t{entry['event']}\t{entry['queue']}\t{entry['detail']}"
            )
    return "server\tevent\tspec\trecipient\tmsgid\tdescription\tqueue\tdetail\n" + "\n".join(lines)


def path_diagram(events: dict[str, list[dict[str, object]]]) -> str:
    """The message's path as text: each server with its tracking events, in the order it first acted."""
    order = sorted(
        (min(float(str(e["timestamp"])) for e in entries), server)
        for server, entries in events.items()
        if entries
    )
    blocks = []
    for _, server in order:
        ids = collapse(int(str(e["event-id"])) for e in events[server])
        hops = sorted(
            {
                str(e["queue"])
                for e in events[server]
                if e["event-id"] in (tracking.ROUTED_REMOTE, tracking.ROUTED_GATEWAY)
            }
        )
        line = f"[{server}] {' → '.join(str(i) for i in ids)}"
        if hops:
            line += f"  ⇒ {', '.join(hops)}"
        blocks.append(line)
    return "\n   ↓\n".join(blocks) or "no server acted"
