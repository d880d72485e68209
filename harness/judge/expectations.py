"""Outcome expectations: a trace's `outcome` checked against the evidence (`harness.judge.evidence`) — DNS and
LDAP queries, deliveries into mailboxes, sinks and gateways, tracking events per server, queues.

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

from harness.judge.evidence import Delivery, Evidence
from reference_mta import tracking


@dataclass
class Check:
    title: str
    failures: list[str] = field(default_factory=list)
    expected: str = ""
    actual: str = ""
    observed: bool = True  # False: the target cannot show this (a black box has no tracking log)

    @property
    def passed(self) -> bool:
        return not self.failures


# What each white-box expectation needs the target to show; the rest is seen from outside.
NEEDS = {"ldap": "ldap_log", "tracking": "tracking", "events": "tracking", "hops": "tracking",
         "queues": "queues", "queues_empty": "queues"}  # fmt: skip


def check_outcome(
    outcome: dict[str, Any], evidence: Evidence, observable: frozenset[str] | None = None
) -> list[Check]:
    """The trace's expected outcome against the evidence. With `observable` (a target's capabilities),
    expectations the target cannot show are reported as not observed instead of being checked."""
    if observable is not None:
        hidden = {key for key, needed in NEEDS.items() if key in outcome and needed not in observable}
        if hidden:
            visible = {key: value for key, value in outcome.items() if key not in hidden}
            unobserved = [
                Check(
                    key, [], str(outcome[key]), f"not observable on this target (needs {NEEDS[key]})", False
                )
                for key in sorted(hidden)
            ]
            return check_outcome(visible, evidence) + unobserved
    checks: list[Check] = []
    for spec in outcome.get("dns") or []:
        checks.append(_check_dns(spec, evidence))
    for spec in outcome.get("ldap") or []:
        checks.append(_check_ldap(spec, evidence))
    matched: set[int] = set()
    for spec in outcome.get("delivered") or []:
        checks.append(_check_delivered(spec, evidence, matched))
    for spec in outcome.get("not_delivered") or []:
        checks.append(_check_not_delivered(spec, evidence))
    if outcome.get("nothing_else_delivered"):
        extra = [d for i, d in enumerate(evidence.deliveries) if i not in matched]
        checks.append(_unexpected("nothing else delivered", "no other delivery", extra))
    if outcome.get("nothing_delivered"):
        checks.append(_unexpected("nothing delivered", "no delivery", evidence.deliveries))
    for server, expected in (outcome.get("tracking") or {}).items():
        checks.append(_check_tracking(server, expected, evidence))
    for spec in outcome.get("events") or []:
        checks.append(_check_event(spec, evidence))
    if "hops" in outcome:
        checks.append(_check_hops(outcome["hops"], evidence))
    for spec in outcome.get("queues") or []:
        checks.append(_check_queue(spec, evidence))
    if outcome.get("queues_empty"):
        busy = [
            f"{server}: {queue} holds {len(items)}"
            for server, queues in evidence.queues.items()
            for queue, items in queues.items()
            if items
        ]
        checks.append(Check("queues empty", busy, "all queues empty", "\n".join(busy) or "all empty"))
    return checks


def _unexpected(title: str, expected: str, deliveries: list[Delivery]) -> Check:
    found = [d.describe() for d in deliveries]
    return Check(title, [f"unexpected delivery: {f}" for f in found], expected, "\n".join(found) or "none")


def _check_dns(spec: dict[str, Any], evidence: Evidence) -> Check:
    name = spec["name"].lower().rstrip(".")
    rtype = spec["type"].upper() if spec.get("type") else None
    client = spec.get("client")
    title = f"DNS query {name} {rtype or ''}".rstrip() + (f" from {client}" if client else "")
    found = [
        q
        for q in evidence.dns
        if q["name"].lower().rstrip(".") == name
        and (rtype is None or q["type"].upper() == rtype)
        and (client is None or q["client"].lower() == client.lower())
    ]
    seen = (
        "\n".join(
            f"{q['client']} asked {q['name']} {q['type']} → {q['rcode']} {q['answers']}" for q in evidence.dns
        )
        or "no queries"
    )
    if spec.get("absent"):
        return Check(f"no {title}", [f"{title} was made"] if found else [], "no such query", seen)
    return Check(title, [] if found else [f"{title} was not made"], title, seen)


def _check_ldap(spec: dict[str, Any], evidence: Evidence) -> Check:
    exact = spec.get("filter")
    pattern = re.compile(spec["filter_regex"]) if spec.get("filter_regex") else None
    client = spec.get("client")
    described = exact or f"/{spec.get('filter_regex')}/"
    title = f"LDAP filter {described}" + (f" from {client}" if client else "")

    def matches(query: dict[str, Any]) -> bool:
        if exact is not None and query["filter"].lower() != exact.lower():
            return False
        if pattern is not None and not pattern.search(query["filter"]):
            return False
        if client is not None and query["client"].lower() != client.lower():
            return False
        return "results" not in spec or query["results"] == spec["results"]

    found = [q for q in evidence.ldap if matches(q)]
    seen = "\n".join(
        f"{q['client']}: {q['filter']} (base {q['base']}) → {q['results']}" for q in evidence.ldap
    )
    if spec.get("absent"):
        return Check(f"no {title}", [f"{title} was sent"] if found else [], "no such filter", seen or "none")
    failures = (
        []
        if found
        else [f"{title} was not sent" + (f" with {spec['results']} results" if "results" in spec else "")]
    )
    return Check(title, failures, described, seen or "no LDAP queries")


def _delivery_matches(spec: dict[str, Any], delivery: Delivery, *, any_rcpt: bool = False) -> list[str]:
    """Differences between a delivery spec and one actual delivery (empty = it matches).

    `rcpt` must equal the delivery's recipient set, unless `any_rcpt`: then one listed recipient among
    them is enough. not_delivered needs that, or a copy for [bob, eve] would not count as one for eve.
    """
    problems: list[str] = []
    if "mailbox" in spec:
        if delivery.kind != "mailbox" or delivery.where.lower() != spec["mailbox"].lower():
            return ["other destination"]
        if "server" in spec and delivery.server.lower() != spec["server"].lower():
            problems.append(f"stored on {delivery.server}, expected {spec['server']}")
    elif "sink" in spec:
        if delivery.kind != "sink" or delivery.where.lower() != spec["sink"].lower():
            return ["other destination"]
        if "peer" in spec and delivery.server.lower() != spec["peer"].lower():
            problems.append(f"handed over by {delivery.server}, expected {spec['peer']}")
    elif "foreign" in spec:
        if delivery.kind != "foreign" or delivery.where.lower() != spec["foreign"].lower():
            return ["other destination"]
    elif "gateway" in spec:
        if delivery.kind != "gateway" or delivery.where.lower() != spec["gateway"].lower():
            return ["other destination"]
        if "server" in spec and delivery.server.lower() != spec["server"].lower():
            problems.append(f"handed to the gateway on {delivery.server}, expected {spec['server']}")
    if "rcpt" in spec:
        wanted = [spec["rcpt"]] if isinstance(spec["rcpt"], str) else spec["rcpt"]
        have = {r.lower() for r in delivery.rcpt}
        if any_rcpt:
            if not any(w.lower() in have for w in wanted):
                problems.append(f"recipients {sorted(have)}, none of {sorted(w.lower() for w in wanted)}")
        elif {w.lower() for w in wanted} != have:
            problems.append(f"recipients {sorted(have)}, expected {sorted(w.lower() for w in wanted)}")
    if "sender" in spec:
        expected_sender = spec["sender"].strip("<>")
        if delivery.sender.lower() != expected_sender.lower():
            problems.append(f"sender <{delivery.sender}>, expected <{expected_sender}>")
    if {"headers", "body_contains", "body_lacks", "dsn"} & spec.keys():
        message = email.message_from_bytes(delivery.data, policy=email.policy.default)
        for name, pattern in (spec.get("headers") or {}).items():
            value = str(message.get(name, ""))
            if not re.search(pattern, value):
                problems.append(f"header {name}: {value!r} does not match /{pattern}/")
        if "body_contains" in spec and spec["body_contains"].encode() not in delivery.data:
            problems.append(f"body does not contain {spec['body_contains']!r}")
        if "body_lacks" in spec and spec["body_lacks"].encode() in delivery.data:
            problems.append(f"body contains {spec['body_lacks']!r}")
        if "dsn" in spec:
            problems.extend(_dsn_problems(spec["dsn"], message))
    return problems


def _status_blocks(text: str) -> list[email.message.Message]:
    text = text.replace("\r\n", "\n")
    return [email.message_from_string(b) for b in text.split("\n\n") if b.strip()]


def _dsn_problems(spec: dict[str, Any], message: email.message.Message) -> list[str]:
    if message.get_content_type() != "multipart/report":
        return [f"not a DSN (Content-Type {message.get_content_type()})"]
    fields: list[dict[str, str]] = []
    for part in message.walk():
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            payload = part.get_payload()
            blocks = payload if isinstance(payload, list) else []
            if part.get_content_type() == "message/global-delivery-status" and len(blocks) == 1:
                # The parser knows RFC 6533's type only as a message/* holding one message: the first
                # block as its headers, the rest as its body.
                first = blocks[0]
                rest = first.get_payload(decode=True) if isinstance(first, email.message.Message) else b""
                text = rest.decode("utf-8", "replace") if isinstance(rest, bytes) else ""
                blocks = [first, *_status_blocks(text)]
            elif isinstance(payload, str):
                blocks = _status_blocks(payload)
            for block in blocks[1:]:
                if isinstance(block, email.message.Message):
                    fields.append({k.lower(): str(v) for k, v in block.items()})
    if not fields:
        return ["DSN has no per-recipient delivery-status fields"]
    for entry in fields:
        ok = True
        if "status" in spec and entry.get("status", "").strip() != spec["status"]:
            ok = False
        if "action" in spec and entry.get("action", "").strip().lower() != spec["action"]:
            ok = False
        if "recipient" in spec and spec["recipient"].lower() not in entry.get("final-recipient", "").lower():
            ok = False
        if ok:
            return []
    shown = "; ".join(f"{f.get('final-recipient')} {f.get('action')} {f.get('status')}" for f in fields)
    return [f"no DSN recipient block matches {spec} (have: {shown})"]


def _describe_spec(spec: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v if isinstance(v, str) and chr(10) not in v else json.dumps(v)}" for k, v in spec.items()
    )


def _check_delivered(spec: dict[str, Any], evidence: Evidence, matched: set[int]) -> Check:
    title = f"delivered: {_describe_spec(spec)}"
    near: list[str] = []
    for index, delivery in enumerate(evidence.deliveries):
        if index in matched:
            continue
        problems = _delivery_matches(spec, delivery)
        if not problems:
            matched.add(index)
            return Check(title, [], _describe_spec(spec), delivery.describe())
        if problems != ["other destination"]:
            near.append(f"{delivery.describe()}: {'; '.join(problems)}")
    actual = "\n".join(near or [d.describe() for d in evidence.deliveries]) or "nothing was delivered"
    return Check(title, [f"no delivery matches {_describe_spec(spec)}", *near], _describe_spec(spec), actual)


def _check_not_delivered(spec: dict[str, Any], evidence: Evidence) -> Check:
    title = f"not delivered: {_describe_spec(spec)}"
    found = [d.describe() for d in evidence.deliveries if not _delivery_matches(spec, d, any_rcpt=True)]
    return Check(
        title, [f"delivered anyway: {f}" for f in found], "no such delivery", "\n".join(found) or "none"
    )


def collapse(ids: Iterable[int]) -> list[int]:
    result: list[int] = []
    for event_id in ids:
        if not result or result[-1] != event_id:
            result.append(event_id)
    return result


def _check_tracking(server: str, expected: list[int] | dict[str, list[int]], evidence: Evidence) -> Check:
    events = next((v for k, v in evidence.tracking.items() if k.lower() == server.lower()), None)
    if events is None:
        return Check(f"tracking on {server}", [f"no tracking log for server {server!r}"], str(expected), "")
    if isinstance(expected, list):
        actual = collapse(e["event-id"] for e in events)
        failures = [] if actual == expected else [f"tracking on {server}: expected {expected}, got {actual}"]
        return Check(f"tracking on {server}", failures, str(expected), str(actual))
    failures = []
    actual_text = []
    for recipient, ids in expected.items():
        actual = collapse(
            e["event-id"] for e in events if e["recipient-address"].lower() == recipient.lower()
        )
        actual_text.append(f"{recipient}: {actual}")
        if actual != ids:
            failures.append(f"tracking on {server} for {recipient}: expected {ids}, got {actual}")
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
        else [f"hops: expected {' > '.join(expected)}, got {' > '.join(actual) or 'none'}"]
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
            "spec": event["spec"],
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
        return Check(f"no {title}", [f"{title} was logged"] if found else [], "no such event", seen)
    return Check(title, [] if found else [f"{title} was not logged"], title, seen)


def _check_queue(spec: dict[str, Any], evidence: Evidence) -> Check:
    server = next((k for k in evidence.queues if k.lower() == spec["server"].lower()), spec["server"])
    queues = evidence.queues.get(server, {})
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
            [] if ok else [f"{title} holds {len(items)} message(s), expected {spec['count']}"],
            f"{spec['count']} message(s)",
            seen,
        )
    return Check(title, [] if items else [f"{title} holds no message"], "at least one message", seen)
