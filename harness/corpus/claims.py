"""The evidence rule: a trace claims only the catalogue steps its assertions show.

A trace's `spec:` IDs say which steps of the transport it checks; its `boundary:` IDs, which steps it
shows must NOT happen. The catalogue (harness/corpus/catalogue.yaml, `shown_by`) declares for each ID the
assertions that show it — a white-box form (tracking events, LDAP and DNS logs, queues), a black-box form
(reply codes, what reached a mailbox or a sink) and a negative form for boundary claims — in a small
vocabulary its schema (harness/schemas/catalogue.schema.json) defines. `claims` holds a loaded trace
against it and says, for each claim, whether it is shown and, if not, what is missing.

The rule reads what the trace asserts, not what a run observed: a claim is backed when passing the trace
would show the step. Of the trace's lab it reads only what the trace's words need to mean something
(harness/corpus/lab_view.py): the routing group of a server the trace names, and which mailbox an
address it sends to reaches.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from harness import yamlsource
from harness.corpus.catalogue import Entry, Form, Requirement, catalogue, describe, listed
from harness.corpus.lab_view import LabView, lab_view, proxy_filter
from harness.corpus.script import Auth, Bdat, Data, Expect, Pipeline, Send, SendRaw, StartTls
from harness.corpus.trace import ForeignMemo, LabAction, LabVerb, Session, Submission, Trace, ViaMta
from harness.smtp import syntax


@dataclass(frozen=True)
class Claim:
    """One `spec:` or `boundary:` ID of a trace, and whether the trace's assertions show it."""

    id: str
    boundary: bool
    line: int
    """Line of the ID in the trace's `spec:` (or `boundary:`) list."""
    missing: str = ""
    """Empty when shown; else what the trace would have to assert, in the trace's own terms."""

    @property
    def shown(self) -> bool:
        return not self.missing


# What a trace asserts that only a white box shows: a black box (a real MTA standing in for a server)
# keeps no tracking log, LDAP log or queue of ours, so these assertions back no claim there.
WHITE_BOX = frozenset({"tracking", "events", "hops", "ldap", "queues", "queues_empty", "connections"})


@dataclass(frozen=True)
class _Reply:
    after: str  # the command the reply answers: EHLO, RCPT, ..., CONNECT (greeting), DATA (end of data)
    code: int | None
    reply_class: int | None


@dataclass(frozen=True)
class _Facts:
    """What a trace asserts, gathered once."""

    outcome: Mapping[str, Any]
    replies: tuple[_Reply, ...]
    sent: frozenset[str]
    refused: bool
    submitted: bool
    recipients: tuple[str, ...]
    """Addresses the trace sends a message to (RCPT TO, a submission's or a via: item's `to`), lower case,
    in order."""
    entered: frozenset[str]
    """Servers a session connects to or a submission enters."""
    memo: bool
    """A foreign memo is handed to a gateway: its recipients are foreign names, not addresses."""
    lab: LabView
    queues: tuple[Mapping[str, Any], ...] = ()
    """What the trace asserts queues hold: outcome.queues, and a `settle`'s queues between sessions."""
    senders: frozenset[str] = frozenset()  # the hosts of the trace's `via:` items, lower case


def claims(
    trace: Trace, entries: Mapping[str, Entry] | None = None, *, black_box: bool = False
) -> list[Claim]:
    """Each of the trace's claims, spec IDs first, in the trace's order. With `black_box`, as a target
    that shows no tracking, LDAP or queue of ours judges them: a spec claim only by its black-box form,
    and a boundary claim by what the trace asserts besides those."""
    entries = catalogue() if entries is None else entries
    facts = _facts(trace)
    if black_box:
        outcome = {key: value for key, value in facts.outcome.items() if key not in WHITE_BOX}
        facts = dataclasses.replace(facts, outcome=outcome)
    document = yamlsource.load(trace.path)
    boundary = list(document.data.get("boundary") or []) if isinstance(document.data, dict) else []
    found: list[Claim] = []
    for index, spec_id in enumerate(trace.spec):
        if spec_id in trace.boundary:
            continue
        line = document.line_of(("spec", index)) or 0
        found.append(Claim(spec_id, False, line, _spec_missing(entries[spec_id], facts, black_box)))
    for index, spec_id in enumerate(boundary):
        line = document.line_of(("boundary", index)) or 0
        found.append(Claim(spec_id, True, line, _boundary_missing(entries[spec_id], facts)))
    return found


def _spec_missing(entry: Entry, facts: _Facts, black_box: bool = False) -> str:
    shown_by = entry.shown_by
    if black_box and not shown_by.black_box:
        return f"{entry.id} has no black-box evidence declared in the catalogue (shown_by.black_box)"
    forms = [] if black_box else [("white box", shown_by.white_box)]
    if shown_by.black_box and (black_box or shown_by.black_box != shown_by.white_box):
        forms.append(("black box", shown_by.black_box))
    misses = [(name, _unmet(form, facts)) for name, form in forms]
    if any(not unmet for _, unmet in misses):
        return ""
    if len(misses) == 1:
        needs = " and ".join(misses[0][1])
    else:
        needs = " — or, ".join(f"{name}: {' and '.join(unmet)}" for name, unmet in misses)
    return f"{entry.id} needs {needs}; this trace asserts {_asserted(facts)}"


def _boundary_missing(entry: Entry, facts: _Facts) -> str:
    form = entry.shown_by.boundary
    if not form:
        return f"{entry.id} has no negative evidence declared in the catalogue (shown_by.boundary)"
    unmet = _unmet(form, facts)
    if not unmet:
        return ""
    return f"boundary {entry.id} needs {' and '.join(unmet)}; this trace asserts {_asserted(facts)}"


def _unmet(form: Form, facts: _Facts) -> list[str]:
    return [describe(requirement) for requirement in form if not _holds(requirement, facts)]


def _holds(requirement: Requirement, facts: _Facts) -> bool:
    ((kind, value),) = requirement.items()
    if kind == "any_of":
        return any(_holds(choice, facts) for choice in value)
    return _HOLDS[kind](value, facts)  # the catalogue schema admits no other kind


def _any(outcome: Mapping[str, Any], key: str, matches: Callable[[Mapping[str, Any]], bool]) -> bool:
    return any(matches(spec) for spec in outcome.get(key) or [])


# How each kind of requirement is met by what a trace asserts (harness/schemas/catalogue.schema.json).
_HOLDS: dict[str, Callable[[Any, _Facts], bool]] = {
    "delivered": lambda value, facts: _any(
        facts.outcome, "delivered", lambda spec: _delivery_matches(spec, value)
    ),
    "undelivered": lambda _, facts: _undelivered(facts),
    "ldap": lambda value, facts: _any(facts.outcome, "ldap", lambda spec: _ldap_matches(spec, value, facts)),
    "dns": lambda value, facts: _any(facts.outcome, "dns", lambda spec: _dns_matches(spec, value, facts)),
    "dns_in_order": lambda _, facts: bool(facts.outcome.get("dns_in_order")),
    "connection": lambda value, facts: _any(
        facts.outcome, "connections", lambda spec: _connection_matches(spec, value, facts)
    ),
    "event": lambda value, facts: _event_holds(value, facts.outcome),
    "hops": lambda value, facts: len(facts.outcome.get("hops") or []) >= value,
    "routing_groups": lambda value, facts: len(_routing_groups(facts)) >= value,
    "queues": lambda value, facts: _queues_hold(value, facts),
    "reply": lambda value, facts: any(_reply_matches(reply, value) for reply in facts.replies),
    "sent": lambda value, facts: bool(facts.sent & set(listed(value))),
    "refused": lambda _, facts: facts.refused,
    "submitted": lambda _, facts: facts.submitted,
}


def _delivery_matches(spec: Mapping[str, Any], wanted: Any) -> bool:
    options = wanted if isinstance(wanted, dict) else {"to": wanted}
    if options["to"] != "any" and options["to"] not in spec:
        return False
    # A sink's peer: is the server that handed the copy over, as a mailbox's server: is the one storing it.
    if options.get("server") and not {"server", "peer"} & spec.keys():
        return False
    if options.get("content") and not {"headers", "body_contains", "body_lacks", "dsn"} & spec.keys():
        return False
    if options.get("greeting") and "greeting" not in spec:
        return False
    dsn = options.get("dsn")
    if dsn is not None:
        action = (spec.get("dsn") or {}).get("action")
        return "dsn" in spec and (dsn == "any" or action in (dsn, None))
    return True


def _queues_hold(wanted: Any, facts: _Facts) -> bool:
    if wanted is True:
        return bool(facts.queues or facts.outcome.get("queues_empty"))
    name = str(wanted["queue"]).lower()
    return any(spec["queue"].lower() == name and spec.get("count", 1) > 0 for spec in facts.queues)


def _undelivered(facts: _Facts) -> bool:
    outcome = facts.outcome
    if outcome.get("not_delivered") or outcome.get("nothing_delivered"):
        return True
    if not outcome.get("nothing_else_delivered"):
        return False
    delivered = list(outcome.get("delivered") or [])
    if not delivered:
        return True  # nothing listed and nothing else: nothing delivered at all
    # With every copy listed and nothing else delivered, a recipient none of the listed copies is for
    # got no copy anywhere. A copy that does not say whom it is for could be any recipient's.
    if facts.memo or any("mailbox" not in spec and "rcpt" not in spec for spec in delivered):
        return False
    named = {str(spec["mailbox"]).lower() for spec in delivered if "mailbox" in spec}
    named |= {str(address).lower() for spec in delivered for address in listed(spec.get("rcpt") or [])}
    return any(not facts.lab.reaches(address) & named for address in facts.recipients)


def _ldap_matches(spec: Mapping[str, Any], wanted: str, facts: _Facts) -> bool:
    empty = bool(spec.get("absent")) or spec.get("results") == 0
    if wanted == "absent":
        return empty
    if spec.get("absent"):
        return False
    return wanted == "query" or _names_a_recipient(spec, facts)


# An address no lab holds: a filter_regex that matches its filter too matches any filter, not a recipient's.
_NOBODY = "nobody.at.all@mailflow.invalid"


def _names_a_recipient(spec: Mapping[str, Any], facts: _Facts) -> bool:
    """Whether an LDAP expectation's filter is the look-up of a recipient the trace addresses: by that
    address or by another proxy address of the same mailbox (the categorizer's homeMDB look-up)."""
    addresses = {a for recipient in facts.recipients for a in facts.lab.proxies(recipient)}
    addresses |= {
        a
        for item in facts.outcome.get("delivered") or []
        if "mailbox" in item
        for a in facts.lab.proxies(str(item["mailbox"]).lower())
    }
    if "filter" in spec:
        text = str(spec["filter"]).lower()
        return any(proxy_filter(address).lower() in text for address in addresses)
    try:
        pattern = re.compile(str(spec.get("filter_regex", "")))
    except re.error:
        return False  # loading the trace refuses it already
    if pattern.search(proxy_filter(_NOBODY)):
        return False
    return any(pattern.search(proxy_filter(address)) for address in addresses)


def _dns_matches(spec: Mapping[str, Any], wanted: Mapping[str, Any], facts: _Facts) -> bool:
    if bool(spec.get("absent")) != bool(wanted.get("absent")):
        return False
    if wanted.get("failed") and spec.get("rcode", "NOERROR") == "NOERROR" and spec.get("answers") != 0:
        return False
    if wanted.get("by") == "sender" and str(spec.get("client", "")).lower() not in facts.senders:
        return False
    return "type" not in wanted or str(spec.get("type", "")).upper() == wanted["type"]


def _connection_matches(spec: Mapping[str, Any], wanted: Mapping[str, Any], facts: _Facts) -> bool:
    if spec.get("absent"):
        return False
    return wanted.get("by") != "sender" or str(spec["client"]).lower() in facts.senders


def _routing_groups(facts: _Facts) -> set[str]:
    """The routing groups of the servers the trace shows the message at."""
    outcome = facts.outcome
    servers = set(facts.entered) | {str(server) for server in outcome.get("hops") or []}
    servers |= {str(server) for server, events in (outcome.get("tracking") or {}).items() if events}
    servers |= {str(spec["server"]) for spec in outcome.get("events") or [] if not spec.get("absent")}
    for spec in outcome.get("delivered") or []:
        servers |= {str(spec[key]) for key in ("server", "peer") if key in spec}
    return {group for server in servers if (group := facts.lab.routing_group(server))}


def _event_holds(wanted: Mapping[str, Any], outcome: Mapping[str, Any]) -> bool:
    ids = set(listed(wanted["id"]))
    absent = bool(wanted.get("absent"))
    servers: set[str] | None = None
    if wanted.get("where") == "mailbox_server":
        servers = {
            str(spec["server"]).lower()
            for spec in outcome.get("delivered") or []
            if "mailbox" in spec and "server" in spec
        }

    def on(server: str) -> bool:
        return servers is None or server.lower() in servers

    for server, events in _tracking_lists(outcome):
        if not on(server):
            continue
        if wanted.get("first"):
            if events and events[0] in ids:
                return True
        elif absent != bool(ids & set(events)):
            return True
    if wanted.get("first"):
        return False  # only a tracking list has an order
    return any(
        on(spec["server"]) and spec["event"] in ids and bool(spec.get("absent")) == absent
        for spec in outcome.get("events") or []
    )


def _tracking_lists(outcome: Mapping[str, Any]) -> Iterator[tuple[str, list[int]]]:
    for server, expected in (outcome.get("tracking") or {}).items():
        if isinstance(expected, dict):
            for events in expected.values():
                yield server, list(events)
        else:
            yield server, list(expected)


def _reply_matches(reply: _Reply, wanted: Mapping[str, Any]) -> bool:
    if "after" in wanted and reply.after not in listed(wanted["after"]):
        return False
    if "code" in wanted and reply.code not in listed(wanted["code"]):
        return False
    if "class" in wanted:
        reply_class = reply.reply_class if reply.code is None else reply.code // 100
        return reply_class in listed(wanted["class"])
    return True


def _asserted(facts: _Facts) -> str:
    """What the trace asserts, in the same words, so the gap is plain."""
    outcome = facts.outcome
    parts = [key for key in ("delivered", "not_delivered", "ldap", "dns", "connections", "tracking", "events",
                             "hops", "queues") if outcome.get(key)]  # fmt: skip
    parts += [key for key in ("nothing_delivered", "queues_empty") if outcome.get(key)]
    codes = sorted({str(r.code) for r in facts.replies if r.code is not None})
    shown = ", ".join(f"outcome.{part}" for part in parts)
    if codes:
        shown += (", " if shown else "") + f"reply codes {'/'.join(codes)}"
    return f"only {shown}" if shown else "nothing"


def _facts(trace: Trace) -> _Facts:
    replies: list[_Reply] = []
    sent: set[str] = set()
    recipients: list[str] = []
    entered: set[str] = set()
    refused = False
    submitted = False
    memo = False
    queues = list(trace.outcome.get("queues") or [])
    senders = frozenset(item.host.lower() for item in trace.sessions if isinstance(item, ViaMta))
    for item in trace.sessions:
        if isinstance(item, LabAction) and item.rule and item.action is LabVerb.SETTLE:
            queues += item.rule.get("queues") or []
        elif isinstance(item, Submission):
            submitted = True
            refused = refused or item.refused
            recipients += [address.lower() for address in item.to]
            entered.add(item.server)
        elif isinstance(item, Session):
            refused = refused or item.refused
            _script(item, replies, sent, recipients)
            if item.connect.server:
                entered.add(item.connect.server)
        elif isinstance(item, ForeignMemo):
            memo = True
        elif isinstance(item, ViaMta):
            recipients += [address.lower() for address in item.to]
    return _Facts(
        trace.outcome,
        tuple(replies),
        frozenset(sent),
        refused,
        submitted,
        tuple(dict.fromkeys(recipients)),
        frozenset(entered),
        memo,
        lab_view(trace.lab),
        tuple(queues),
        senders,
    )


_RCPT = re.compile(r"^RCPT\s+TO:\s*<([^>]*)>", re.IGNORECASE)


def _script(session: Session, replies: list[_Reply], sent: set[str], recipients: list[str]) -> None:
    """The replies a session's expect steps check, each with the command it answers, and the addresses
    its RCPT commands name."""
    pending: list[str] = ["CONNECT"]  # commands whose replies are still to be read, oldest first
    for step in session.steps:
        commands = _commands(step)
        sent.update(commands)
        recipients += [found[1].lower() for line in _lines(step) if (found := _RCPT.match(line))]
        if isinstance(step, StartTls):
            sent.add("STARTTLS")  # the step reads its 220 itself
        if commands:
            pending += commands
        elif isinstance(step, Expect):
            after = pending.pop(0) if pending else "OTHER"
            # The behaviour layer: what every target is judged on, whatever its wording.
            matcher = step.matcher.behaviour()
            replies.append(_Reply(after, matcher.code, matcher.reply_class))


_VERBS = frozenset({"EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "AUTH", "STARTTLS", "VRFY", "EXPN",
                    "RSET", "NOOP", "QUIT", "HELP", "ETRN"})  # fmt: skip


def _verb(line: str) -> str:
    word = syntax.verb(line)
    return word if word in _VERBS else "OTHER"


def _lines(step: object) -> list[str]:
    """The command lines a step sends."""
    if isinstance(step, Send):
        return [step.line]
    if isinstance(step, Pipeline):
        return list(step.lines)
    if isinstance(step, SendRaw):
        # Only whole lines are commands; bytes smuggled inside a message are not.
        return [line for line in step.data.decode("latin-1").split("\r\n")[:-1] if line]
    return []


def _commands(step: object) -> list[str]:
    if isinstance(step, Data):
        return ["DATA"]  # the step reads the 354 itself; the next expect is the end-of-data reply
    if isinstance(step, Bdat):
        return ["BDAT"]
    if isinstance(step, Auth):
        return ["AUTH"]
    return [_verb(line) for line in _lines(step)]
