"""Outcome expectations: a trace's `outcome` checked against the evidence (`harness.judge.evidence`) — DNS and
LDAP queries (the DNS ones in order, with `dns_in_order`), SMTP sessions in the protocol logs, deliveries
into mailboxes, sinks and gateways, tracking events per server, queues.

Each check returns its own verdict with the expected and actual values in words, so a failing trace
says what differed without a debugger. Names of lab hosts, servers, sinks and connectors are compared
without regard to case, as Exchange and DNS treat them; that they name something in the lab at all is
checked when the trace is loaded (`harness.corpus.trace`), so an `absent: true` check cannot pass on a typo.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.judge.evidence import Connection, Delivery, DeliveryKind, DnsQuery, Evidence, LdapQuery
from harness.judge.records import Failure, Kind, Near, near_line, sentence, sentences
from reference_mta import tracking


@dataclass
class Check:
    title: str
    records: list[Failure] = field(default_factory=list)
    expected: str = ""
    actual: str = ""
    observed: bool = True  # False: the target cannot show this (a black box has no tracking log)

    @property
    def passed(self) -> bool:
        return not self.records

    @property
    def failures(self) -> list[str]:
        """The failures as sentences, a missing delivery followed by the ones that came near it."""
        return [text for record in self.records for text in sentences(record)]


# What each white-box expectation needs the target to show; the rest is seen from outside.
NEEDS = {"ldap": "ldap_log", "tracking": "tracking", "events": "tracking", "hops": "tracking",
         "queues": "queues", "queues_empty": "queues", "connections": "connection_log"}  # fmt: skip
# What a black box shows only through the lab around it: the DNS queries it makes are in the lab's DNS
# log when it resolves through the lab's DNS, which an MTA outside the lab does not.
THROUGH_THE_LAB = {"dns": "dns_log", "dns_in_order": "dns_log"}
# A delivery is seen where it went: the stood-in server's mailboxes ("mailbox"), or the lab's Internet
# hosts, reached only if the target's next hops lead there ("outbound"). An MTA outside the lab shows
# either only as its target profile says (harness/targets/outside.py).
DELIVERY_NEEDS = {"mailbox": "mailbox", "sink": "outbound"}


def check_outcome(
    outcome: dict[str, Any],
    evidence: Evidence,
    observable: frozenset[str] | None = None,
    *,
    wording: bool = True,
) -> list[Check]:
    """The trace's expected outcome against the evidence. With `observable` (a target's capabilities),
    expectations the target cannot show are reported as not observed instead of being checked. Without
    `wording`, the headers a delivery expects in the trace's wording are not checked (the behaviour
    layer: docs/decisions.md)."""
    if not wording:
        outcome = _behaviour(outcome)
    if observable is not None:
        needs = NEEDS | THROUGH_THE_LAB
        hidden = {key for key, needed in needs.items() if key in outcome and needed not in observable}
        visible = {key: value for key, value in outcome.items() if key not in hidden}
        unobserved = [_unobserved(key, outcome[key], needs[key]) for key in sorted(hidden)]
        unobserved += _unseen_deliveries(visible, observable)
        if unobserved:
            return check_outcome(visible, evidence) + unobserved
    return _queries(outcome, evidence) + _deliveries(outcome, evidence) + _logs(outcome, evidence)


def _behaviour(outcome: dict[str, Any]) -> dict[str, Any]:
    """The outcome without its wording: each delivery spec without its `wording_headers`."""
    return {
        key: [{k: v for k, v in spec.items() if k != "wording_headers"} for spec in value]
        if key in ("delivered", "not_delivered")
        else value
        for key, value in outcome.items()
    }


def _unobserved(title: str, expected: object, needed: str) -> Check:
    return Check(title, [], str(expected), f"not observable on this target (needs {needed})", False)


def _unseen_deliveries(outcome: dict[str, Any], observable: frozenset[str]) -> list[Check]:
    """The delivery expectations the target cannot show, taken out of `outcome` (changed in place)."""
    unseen: list[Check] = []
    for key in ("delivered", "not_delivered"):
        kept = []
        for spec in outcome.get(key) or []:
            needed = next((n for k, n in DELIVERY_NEEDS.items() if k in spec), None)
            if needed is not None and needed not in observable:
                unseen.append(_unobserved(key, spec, needed))
            else:
                kept.append(spec)
        if key in outcome:
            outcome[key] = kept
    lacking = sorted(set(DELIVERY_NEEDS.values()) - observable)
    for key in ("nothing_else_delivered", "nothing_delivered"):
        # Every delivery must be visible before "nothing else" can be said.
        if outcome.get(key) and lacking:
            del outcome[key]
            unseen.append(_unobserved(key, True, " and ".join(lacking)))
    return unseen


def _queries(outcome: dict[str, Any], evidence: Evidence) -> list[Check]:
    checks = [_check_dns(spec, evidence) for spec in outcome.get("dns") or []]
    if outcome.get("dns_in_order"):
        asked = [spec for spec in outcome.get("dns") or [] if not spec.get("absent")]
        checks.append(_check_dns_order(asked, evidence))
    checks += [_check_ldap(spec, evidence) for spec in outcome.get("ldap") or []]
    return checks + [_check_connection(spec, evidence) for spec in outcome.get("connections") or []]


def _deliveries(outcome: dict[str, Any], evidence: Evidence) -> list[Check]:
    matched: set[int] = set()
    checks = [_check_delivered(spec, evidence, matched) for spec in outcome.get("delivered") or []]
    checks += [_check_not_delivered(spec, evidence) for spec in outcome.get("not_delivered") or []]
    if outcome.get("nothing_else_delivered"):
        extra = [d for i, d in enumerate(evidence.deliveries) if i not in matched]
        checks.append(_unexpected("nothing else delivered", "no other delivery", extra))
    if outcome.get("nothing_delivered"):
        checks.append(_unexpected("nothing delivered", "no delivery", evidence.deliveries))
    return checks


def _logs(outcome: dict[str, Any], evidence: Evidence) -> list[Check]:
    """Tracking logs, the hop chain and the queues."""
    checks = [
        _check_tracking(server, expected, evidence)
        for server, expected in (outcome.get("tracking") or {}).items()
    ]
    checks += [_check_event(spec, evidence) for spec in outcome.get("events") or []]
    if "hops" in outcome:
        checks.append(_check_hops(outcome["hops"], evidence))
    checks += [check_queue(spec, evidence.queues) for spec in outcome.get("queues") or []]
    if outcome.get("queues_empty"):
        busy = [
            Failure(Kind.QUEUES_EMPTY, "0", str(len(items)), f"{server}: {queue}")
            for server, queues in evidence.queues.items()
            for queue, items in queues.items()
            if items
        ]
        shown = "\n".join(sentence(f) for f in busy)
        checks.append(Check("queues empty", busy, "all queues empty", shown or "all empty"))
    return checks


def _unexpected(title: str, expected: str, deliveries: list[Delivery]) -> Check:
    kind = Kind.NOTHING_DELIVERED if title == "nothing delivered" else Kind.UNEXPECTED_DELIVERY
    found = [d.describe() for d in deliveries]
    records = [Failure(kind, "", f) for f in found]
    return Check(title, records, expected, "\n".join(found) or "none")


def _dns_title(spec: dict[str, Any]) -> str:
    rtype = spec["type"].upper() if spec.get("type") else ""
    client = spec.get("client")
    name = spec["name"].lower().rstrip(".")
    return f"DNS query {name} {rtype}".rstrip() + (f" from {client}" if client else "")


def _dns_matches(spec: dict[str, Any], query: DnsQuery) -> bool:
    rtype = spec["type"].upper() if spec.get("type") else None
    client = spec.get("client")
    return (
        query.name.lower().rstrip(".") == spec["name"].lower().rstrip(".")
        and (rtype is None or query.type.upper() == rtype)
        and (client is None or query.client.lower() == client.lower())
    )


def _dns_seen(evidence: Evidence) -> str:
    return (
        "\n".join(
            f"{q.client} ({q.client_ip}) asked {q.name} {q.type} → {q.rcode} {list(q.answers)}"
            for q in evidence.dns
        )
        or "no queries"
    )


def _check_dns(spec: dict[str, Any], evidence: Evidence) -> Check:
    rcode = spec.get("rcode")
    answers = spec.get("answers")
    title = _dns_title(spec)
    if rcode is not None or answers is not None:
        title += (
            " answered"
            + (f" {rcode}" if rcode else "")
            + (f" with {answers} records" if answers is not None else "")
        )
    asked = [q for q in evidence.dns if _dns_matches(spec, q)]
    found = [
        q
        for q in asked
        if (rcode is None or q.rcode.upper() == rcode) and (answers is None or len(q.answers) == answers)
    ]
    seen = _dns_seen(evidence)
    # Made, but answered otherwise: say how, or "was not made" would mislead.
    got = "; ".join(f"{q.rcode} with {len(q.answers)} records" for q in asked)
    answered = f": it was answered {got}" if asked and not found else ""
    if spec.get("absent"):
        return Check(
            f"no {title}", [Failure(Kind.DNS, "absent", field=title)] if found else [], "no such query", seen
        )
    return Check(title, [] if found else [Failure(Kind.DNS, "present", answered, title)], title, seen)


def _check_dns_order(specs: list[dict[str, Any]], evidence: Evidence) -> Check:
    """The queries were asked in the order listed: each one's first match in the log (which keeps
    arrival order) comes after the previous one's. A query never asked fails its own check."""
    titles = [_dns_title(spec) for spec in specs]
    title = "DNS queries in order: " + ", then ".join(t.removeprefix("DNS query ") for t in titles)
    previous: tuple[int, str] | None = None
    for spec, spec_title in zip(specs, titles, strict=True):
        position = next((i for i, q in enumerate(evidence.dns) if _dns_matches(spec, q)), None)
        if position is None:
            continue
        if previous is not None and position < previous[0]:
            failure = Failure(Kind.DNS_ORDER, previous[1], spec_title)
            return Check(title, [failure], " → ".join(titles), _dns_seen(evidence))
        previous = (position, spec_title)
    return Check(title, [], " → ".join(titles), _dns_seen(evidence))


def _check_connection(spec: dict[str, Any], evidence: Evidence) -> Check:
    """An SMTP session from a lab host to a virtual server, as its protocol log shows it."""
    vs = spec.get("virtual_server")
    where = f"{spec['server']}" + (f" ({vs})" if vs else "")
    title = f"SMTP session from {spec['client']} to {where}"

    def matches(connection: Connection) -> bool:
        return (
            connection.client.lower() == spec["client"].lower()
            and connection.server.lower() == spec["server"].lower()
            and (vs is None or connection.virtual_server.lower() == vs.lower())
        )

    found = [c for c in evidence.connections if matches(c)]
    seen = "\n".join(
        f"{c.client} ({c.client_ip}) → {c.server} {c.virtual_server} ({c.address})"
        for c in evidence.connections
    )
    if spec.get("absent"):
        failures = [Failure(Kind.CONNECTION, "absent", field=title)] if found else []
        return Check(f"no {title}", failures, "no such session", seen or "no sessions logged")
    failures = [] if found else [Failure(Kind.CONNECTION, "present", field=title)]
    return Check(title, failures, title, seen or "no sessions logged")


def _check_ldap(spec: dict[str, Any], evidence: Evidence) -> Check:
    exact = spec.get("filter")
    pattern = re.compile(spec["filter_regex"]) if spec.get("filter_regex") else None
    client = spec.get("client")
    described = exact or f"/{spec.get('filter_regex')}/"
    title = f"LDAP filter {described}" + (f" from {client}" if client else "")

    def matches(query: LdapQuery) -> bool:
        if exact is not None and query.filter.lower() != exact.lower():
            return False
        if pattern is not None and not pattern.search(query.filter):
            return False
        if client is not None and query.client.lower() != client.lower():
            return False
        return "results" not in spec or query.results == spec["results"]

    found = [q for q in evidence.ldap if matches(q)]
    seen = "\n".join(f"{q.client}: {q.filter} (base {q.base}) → {q.results}" for q in evidence.ldap)
    if spec.get("absent"):
        failures = [Failure(Kind.LDAP, "absent", field=title)] if found else []
        return Check(f"no {title}", failures, "no such filter", seen or "none")
    results = f" with {spec['results']} results" if "results" in spec else ""
    failures = [] if found else [Failure(Kind.LDAP, "present", results, title)]
    return Check(title, failures, described, seen or "no LDAP queries")


def _delivery_matches(
    spec: dict[str, Any], delivery: Delivery, *, any_rcpt: bool = False
) -> list[Failure] | None:
    """Differences between a delivery spec and one actual delivery (empty: it matches; None: it went
    somewhere else altogether).

    `rcpt` must equal the delivery's recipient set, unless `any_rcpt`: then one listed recipient among
    them is enough. not_delivered needs that, or a copy for [bob, eve] would not count as one for eve.
    """
    problems = _destination(spec, delivery)
    if problems is None:
        return None
    problems += _envelope(spec, delivery, any_rcpt)
    if {"headers", "wording_headers", "body_contains", "body_lacks", "dsn"} & spec.keys():
        problems += _content(spec, delivery)
    return problems


# Where a delivery went, by the spec key that names it: the delivery kind, and the spec key and words of
# the server that stored or handed it over.
_DESTINATIONS: dict[str, tuple[DeliveryKind, str, str]] = {
    "mailbox": (DeliveryKind.MAILBOX, "server", "stored on"),
    "sink": (DeliveryKind.SINK, "peer", "handed over by"),
    "foreign": (DeliveryKind.FOREIGN, "", ""),
    "gateway": (DeliveryKind.GATEWAY, "server", "handed to the gateway on"),
}


def _destination(spec: dict[str, Any], delivery: Delivery) -> list[Failure] | None:
    key = next((k for k in _DESTINATIONS if k in spec), None)
    if key is None:
        return []
    kind, server_key, words = _DESTINATIONS[key]
    if delivery.kind != kind or delivery.where.lower() != spec[key].lower():
        return None
    if server_key and server_key in spec and delivery.server.lower() != spec[server_key].lower():
        return [Failure(Kind.SERVER, spec[server_key], delivery.server, words)]
    return []


def _envelope(spec: dict[str, Any], delivery: Delivery, any_rcpt: bool) -> list[Failure]:
    problems: list[Failure] = []
    if "rcpt" in spec:
        wanted = [spec["rcpt"]] if isinstance(spec["rcpt"], str) else spec["rcpt"]
        have = {r.lower() for r in delivery.rcpt}
        lowered = sorted(w.lower() for w in wanted)
        if any_rcpt and not have & set(lowered):
            problems.append(Failure(Kind.RECIPIENTS, str(lowered), str(sorted(have)), "any"))
        elif not any_rcpt and set(lowered) != have:
            problems.append(Failure(Kind.RECIPIENTS, str(lowered), str(sorted(have))))
    if "sender" in spec:
        expected_sender = spec["sender"].strip("<>")
        if delivery.sender.lower() != expected_sender.lower():
            problems.append(Failure(Kind.SENDER, expected_sender, delivery.sender))
    if "greeting" in spec and delivery.greeting.upper() != spec["greeting"].upper():
        problems.append(Failure(Kind.GREETING, spec["greeting"].upper(), delivery.greeting))
    return problems


def _content(spec: dict[str, Any], delivery: Delivery) -> list[Failure]:
    message = email.message_from_bytes(delivery.data, policy=email.policy.default)
    problems: list[Failure] = []
    headers = [*(spec.get("headers") or {}).items(), *(spec.get("wording_headers") or {}).items()]
    for name, pattern in headers:
        value = str(message.get(name, ""))
        if not re.search(pattern, value):
            problems.append(Failure(Kind.HEADER, pattern, value, name))
    if "body_contains" in spec and spec["body_contains"].encode() not in delivery.data:
        problems.append(Failure(Kind.BODY, spec["body_contains"], field="contains"))
    if "body_lacks" in spec and spec["body_lacks"].encode() in delivery.data:
        problems.append(Failure(Kind.BODY, spec["body_lacks"], field="lacks"))
    if "dsn" in spec:
        problems.extend(_dsn_problems(spec["dsn"], message))
    return problems


def _status_blocks(text: str) -> list[email.message.Message]:
    text = text.replace("\r\n", "\n")
    return [email.message_from_string(b) for b in text.split("\n\n") if b.strip()]


def _dsn_fields(message: email.message.Message) -> list[dict[str, str]]:
    """The per-recipient fields of a DSN's delivery-status part(s), names in lower case."""
    fields: list[dict[str, str]] = []
    for part in message.walk():
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            for block in _status_part_blocks(part)[1:]:
                if isinstance(block, email.message.Message):
                    fields.append({k.lower(): str(v) for k, v in block.items()})
    return fields


def _status_part_blocks(part: email.message.Message) -> list[Any]:
    payload = part.get_payload()
    blocks = payload if isinstance(payload, list) else []
    if part.get_content_type() == "message/global-delivery-status" and len(blocks) == 1:
        # The parser knows RFC 6533's type only as a message/* holding one message: the first
        # block as its headers, the rest as its body.
        first = blocks[0]
        rest = first.get_payload(decode=True) if isinstance(first, email.message.Message) else b""
        text = rest.decode("utf-8", "replace") if isinstance(rest, bytes) else ""
        return [first, *_status_blocks(text)]
    if isinstance(payload, str):
        return _status_blocks(payload)
    return blocks


def _block_matches(spec: dict[str, Any], entry: dict[str, str]) -> bool:
    if "status" in spec and entry.get("status", "").strip() != spec["status"]:
        return False
    if "action" in spec and entry.get("action", "").strip().lower() != spec["action"]:
        return False
    if "diagnostic" in spec:
        diagnostic = entry.get("diagnostic-code")
        if spec["diagnostic"] is False:
            if diagnostic is not None:
                return False
        elif diagnostic is None or not re.search(spec["diagnostic"], " ".join(diagnostic.split())):
            return False
    if "remote_mta" in spec and spec["remote_mta"].lower() not in entry.get("remote-mta", "").lower():
        return False
    return "recipient" not in spec or spec["recipient"].lower() in entry.get("final-recipient", "").lower()


def _dsn_problems(spec: dict[str, Any], message: email.message.Message) -> list[Failure]:
    if message.get_content_type() != "multipart/report":
        return [Failure(Kind.DSN, "multipart/report", message.get_content_type(), "type")]
    fields = _dsn_fields(message)
    if not fields:
        return [Failure(Kind.DSN, "per-recipient fields", "", "fields")]
    if any(_block_matches(spec, entry) for entry in fields):
        return []
    names = ("final-recipient", "action", "status", "diagnostic-code")
    shown = "; ".join(" ".join(f.get(name, "") for name in names).strip() for f in fields)
    return [Failure(Kind.DSN, str(spec), shown, "block")]


def _describe_spec(spec: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v if isinstance(v, str) and chr(10) not in v else json.dumps(v)}" for k, v in spec.items()
    )


def _check_delivered(spec: dict[str, Any], evidence: Evidence, matched: set[int]) -> Check:
    title = f"delivered: {_describe_spec(spec)}"
    near: list[Near] = []
    for index, delivery in enumerate(evidence.deliveries):
        if index in matched:
            continue
        problems = _delivery_matches(spec, delivery)
        if problems == []:
            matched.add(index)
            return Check(title, [], _describe_spec(spec), delivery.describe())
        if problems is not None:
            near.append(Near(delivery.describe(), tuple(problems)))
    actual = "\n".join([near_line(n) for n in near] or [d.describe() for d in evidence.deliveries])
    missing = Failure(Kind.DELIVERY, _describe_spec(spec), near=tuple(near))
    return Check(title, [missing], _describe_spec(spec), actual or "nothing was delivered")


def _check_not_delivered(spec: dict[str, Any], evidence: Evidence) -> Check:
    title = f"not delivered: {_describe_spec(spec)}"
    found = [d.describe() for d in evidence.deliveries if _delivery_matches(spec, d, any_rcpt=True) == []]
    records = [Failure(Kind.DELIVERED_ANYWAY, "", f) for f in found]
    return Check(title, records, "no such delivery", "\n".join(found) or "none")


def collapse(ids: Iterable[int]) -> list[int]:
    result: list[int] = []
    for event_id in ids:
        if not result or result[-1] != event_id:
            result.append(event_id)
    return result


def _check_tracking(server: str, expected: list[int] | dict[str, list[int]], evidence: Evidence) -> Check:
    events = next((v for k, v in evidence.tracking.items() if k.lower() == server.lower()), None)
    if events is None:
        missing = [Failure(Kind.TRACKING, str(expected), "", f"no log {server}")]
        return Check(f"tracking on {server}", missing, str(expected), "")
    if isinstance(expected, list):
        actual = collapse(e["event-id"] for e in events)
        failures = [] if actual == expected else [Failure(Kind.TRACKING, str(expected), str(actual), server)]
        return Check(f"tracking on {server}", failures, str(expected), str(actual))
    failures = []
    actual_text = []
    for recipient, ids in expected.items():
        actual = collapse(
            e["event-id"] for e in events if e["recipient-address"].lower() == recipient.lower()
        )
        actual_text.append(f"{recipient}: {actual}")
        if actual != ids:
            failures.append(Failure(Kind.TRACKING, str(ids), str(actual), f"{server} for {recipient}"))
    return Check(
        f"tracking on {server} per recipient", failures, json.dumps(expected), "\n".join(actual_text)
    )


def _check_hops(expected: list[str], evidence: Evidence) -> Check:
    first_seen: list[tuple[float, str]] = []
    for server, events in evidence.tracking.items():
        times = [
            e["timestamp"]
            for e in events
            if e["event-id"] == tracking.SUBMIT_TO_AQ and e["sender-address"] != "<>"
        ]
        if times:
            first_seen.append((min(times), server))
    actual = [server for _, server in sorted(first_seen)]
    failures = (
        []
        if [a.lower() for a in actual] == [e.lower() for e in expected]
        else [Failure(Kind.HOPS, " > ".join(expected), " > ".join(actual) or "none")]
    )
    return Check("hop chain", failures, " > ".join(expected), " > ".join(actual))


def _check_event(spec: dict[str, Any], evidence: Evidence) -> Check:
    """One tracking event with the given fields; `client` names the lab host whose address it shows."""
    wanted = {k: v for k, v in spec.items() if k not in ("server", "absent")}
    title = f"tracking event {spec['event']} on {spec['server']}" + "".join(
        f", {k} {v}" for k, v in wanted.items() if k != "event"
    )
    events = next((v for k, v in evidence.tracking.items() if k.lower() == spec["server"].lower()), [])

    def matches(event: dict[str, Any]) -> bool:
        fields = {
            "event": event["event-id"],
            "recipient": event["recipient-address"].lower(),
            "sender": event["sender-address"].lower(),
            "client": evidence.hosts.get(event["client-ip"], "-"),
            "client_hostname": event["client-hostname"].lower(),
            "queue": event["queue"],
        }
        for key, value in wanted.items():
            if key in ("msgid", "subject"):
                field_name = "msgid" if key == "msgid" else "message-subject"
                if not re.search(str(value), str(event[field_name])):
                    return False
            elif key == "event":
                if fields["event"] != value:
                    return False
            elif str(fields[key]).lower() != str(value).lower().strip("<>") and not (
                key == "sender" and value in ("<>", "") and fields[key] == "<>"
            ):
                return False
        return True

    found = [e for e in events if matches(e)]
    seen = (
        "\n".join(
            f"{e['event-id']} {e['recipient-address']} from {e['sender-address']} client "
            f"{evidence.hosts.get(e['client-ip'], e['client-ip'])} ({e['client-hostname']}) spec {e['spec']}"
            for e in events
        )
        or "no events"
    )
    if spec.get("absent"):
        return Check(
            f"no {title}",
            [Failure(Kind.EVENT, "absent", field=title)] if found else [],
            "no such event",
            seen,
        )
    return Check(title, [] if found else [Failure(Kind.EVENT, "present", field=title)], title, seen)


def check_queue(spec: dict[str, Any], snapshot: dict[str, dict[str, list[dict[str, Any]]]]) -> Check:
    """Messages waiting in a server's queue, against a snapshot of every server's queues (taken after
    the sessions, or by a `settle` between them)."""
    server = next((k for k in snapshot if k.lower() == spec["server"].lower()), spec["server"])
    queues = snapshot.get(server, {})
    items = next((v for k, v in queues.items() if k.lower() == spec["queue"].lower()), [])
    if "state" in spec:
        items = [i for i in items if i.get("state") == spec["state"]]
    title = f"queue {spec['queue']} on {spec['server']}" + (
        f" in state {spec['state']}" if "state" in spec else ""
    )
    seen = (
        "\n".join(
            f"{name}: {len(found)} ({', '.join(sorted({str(i.get('state')) for i in found}))})"
            for name, found in queues.items()
            if found
        )
        or "all queues empty"
    )
    if "count" in spec:
        ok = len(items) == spec["count"]
        return Check(
            title,
            [] if ok else [Failure(Kind.QUEUE, str(spec["count"]), str(len(items)), title)],
            f"{spec['count']} message(s)",
            seen,
        )
    return Check(
        title,
        [] if items else [Failure(Kind.QUEUE, "at least one", "0", title)],
        "at least one message",
        seen,
    )
