"""Trace generation: scenarios sampled from the decision space of the conformance catalogue, each
written as a trace whose expected replies and outcome come from the oracle (`harness.generation.oracle`).

The decision space: who connects where (an anonymous Internet host, a host on a relay list, a LAN
client with or without authentication, another server of the organization; the default, open-relay,
restricted, filtered, strict and directory virtual servers, the secondary MX and the servers of other
routing groups; STARTTLS first, where the virtual server has a certificate and where Basic
authentication requires it; the Members Only virtual server, with and without authentication), or no
SMTP at all (Outlook submitting through the store of the sender's home server, the Notes system
handing a memo to its gateway), who sends (an Internet sender, an internal one, the null sender), to
whom (a mailbox here, on the other server, in another routing group, a forwarding mailbox, groups,
contacts, unknown addresses in authoritative and shared domains, Internet domains, relay domains), and
which connectors and servers an administrator has marked down. A scenario the oracle cannot decide
from the documents is left out.

Everything is drawn from one `random.Random(seed)`, and written in a fixed order, so a seed gives the
same files byte for byte.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldap3.utils.conv import escape_filter_chars

from harness.corpus import writer
from harness.corpus.catalogue import catalogue
from harness.corpus.claims import claims
from harness.generation.oracle import (
    MEMO,
    PASSWORDS,
    SMTP,
    STORE,
    Delivery,
    Prediction,
    Scenario,
    Unpredictable,
    World,
    predict,
)
from harness.generation.oracle import load as load_world


@dataclass(frozen=True)
class Entry:
    """Where a message comes from and goes to: an SMTP session (as whom it authenticates, whether it
    starts TLS), a store submission on a home server, or a memo to the gateway's server."""

    client: str
    server: str
    virtual_server: str | None = None
    auth: str | None = None
    tls: bool = False
    kind: str = SMTP


# Who connects where over SMTP: the decision space of relaying and routing.
ROUTING_ENTRIES = (
    Entry("internet", "EX1"),
    Entry("attacker", "EX1"),
    Entry("relay-host", "EX1"),
    Entry("lan", "EX1"),
    Entry("lan", "EX1", auth="alice"),
    Entry("lan", "EX1", auth="relayuser"),
    Entry("lan", "EX1", auth="bob"),
    Entry("internet", "EX1", "Open Relay SMTP Virtual Server"),
    Entry("internet", "EX1", "Restricted SMTP Virtual Server"),
    Entry("lan", "EX1", "Restricted SMTP Virtual Server"),
    Entry("relay-host", "EX1", "Restricted SMTP Virtual Server"),
    Entry("internet", "EX1", "Directory SMTP Virtual Server"),
    Entry("lan", "EX1", "Directory SMTP Virtual Server"),
    Entry("relay-host", "EX1", "Directory SMTP Virtual Server"),
    Entry("internet", "EX1", "Filtered SMTP Virtual Server"),
    Entry("lan", "EX1", "Filtered SMTP Virtual Server", auth="alice"),
    # Its limits (size, recipients, messages per connection) are far above what these sessions send.
    Entry("internet", "EX1", "Strict SMTP Virtual Server"),
    Entry("lan", "EX1", "Strict SMTP Virtual Server", auth="alice"),
    Entry("EX2", "EX1"),
    Entry("EX4", "EX1"),
    Entry("internet", "EX2"),
    Entry("lan", "EX2", "Internal SMTP Virtual Server"),
    Entry("relay-host", "EX2", "Internal SMTP Virtual Server"),
    Entry("internet", "EX3"),
    Entry("lan", "EX3", auth="alice"),
    Entry("internet", "EX4"),
    Entry("lan", "EX4", auth="relayuser"),
)
# The other ways in: each gets the first grid of kinds of recipient, and random draws.
WAYS_IN = (
    # No anonymous access: authenticated sessions relay; an anonymous one is refused at MAIL.
    Entry("lan", "EX1", "Members Only SMTP Virtual Server", auth="alice"),
    Entry("internet", "EX1", "Members Only SMTP Virtual Server", auth="relayuser"),
    Entry("internet", "EX1", "Members Only SMTP Virtual Server"),
    # STARTTLS first: where the virtual server has a certificate, and on EX2, whose Basic
    # authentication requires TLS.
    Entry("internet", "EX1", tls=True),
    Entry("lan", "EX1", "Lenient TLS SMTP Virtual Server", auth="bob", tls=True),
    Entry("internet", "EX2", tls=True),
    Entry("lan", "EX2", auth="alice", tls=True),
    Entry("lan", "EX2", auth="relayuser", tls=True),
    # Outlook submits through the store of the sender's home server (the sender is the mailbox's owner).
    Entry("store", "EX1", kind=STORE),
    Entry("store", "EX2", kind=STORE),
    Entry("store", "EX3", kind=STORE),
    Entry("store", "EX4", kind=STORE),
    # The Notes system hands a memo to the Notes Connector on EX4.
    Entry("notes", "EX4", kind=MEMO),
)
ENTRIES = ROUTING_ENTRIES + WAYS_IN

# Who submits through the store of each server: a mailbox homed there.
MAILBOX_OWNER = {
    "EX1": "alice@contoso.com",
    "EX2": "bob@contoso.com",
    "EX3": "carol@contoso.com",
    "EX4": "dave@contoso.com",
}
# Notes users who write memos, and the Notes names of the organization's recipients (each has a
# NOTES proxy address in the directory).
NOTES_SENDERS = ("Ann Lee/Sales/Fabrikam", "Ken Sato/Tokyo/Fabrikam")
NOTES_RECIPIENTS = ("Alice Smith/Contoso", "Dave Ito/Contoso", "Grace Park/Contoso", "Sales/Contoso")

# The address each account sends as once authenticated (it sends as itself: whether Exchange 2003
# lets an authenticated client send as someone else is not in the documents).
OWN_ADDRESS = {
    "alice": "alice@contoso.com",
    "bob": "bob@contoso.com",
    "relayuser": "relay.user@contoso.com",
    "mailadmin": "mailadmin@contoso.com",
}
SENDERS = ("ann@fabrikam.com", "", "alice@contoso.com", "bob@contoso.com", "carol@contoso.com")

RECIPIENTS = {
    "local mailbox": ("alice@contoso.com", "alice.smith@contoso.com", "postmaster@contoso.com",
                      "erin@shared.contoso.com", "relay.user@contoso.com"),
    "mailbox on the other server": ("bob@contoso.com", "robert.jones@contoso.com", "henry@contoso.com"),
    "mailbox in another routing group": ("carol@litware.com", "carol@contoso.com", "grace@contoso.com",
                                         "lisa@litware.com", "dave@contoso.com"),
    "forwarding mailbox": ("ivan@contoso.com", "judy@contoso.com"),
    "restricted mailbox": ("ceo@contoso.com", "frank.miller@contoso.com"),
    "group": ("sales@contoso.com", "sales-managers@contoso.com", "executives@contoso.com", "all@contoso.com"),
    "contact": ("pat.partner@contoso.com", "nora.lee@contoso.com", "xavier.roth@contoso.com"),
    "unknown in an authoritative domain": ("nobody@contoso.com", "ghost@litware.com",
                                           "bulk-mail@contoso.com"),
    "unknown in a shared namespace": ("legacy-user@shared.contoso.com", "archive@shared.contoso.com"),
    "Internet": ("chris@fabrikam.com", "ops@nomx.net", "barista@fourthcoffee.com", "ops@tailspin.example",
                 "nancy@northwind.example", "info@sub.contoso.com"),
    "relay domain": ("orders@partner.example", "orders@adatum.com"),
}  # fmt: skip

# Domains whose connector's delivery options make the route action (OUT-8a: HELO instead of EHLO;
# OUT-8b: queued for remote triggered delivery). Not among RECIPIENTS: the random draws stay as they were.
ROUTE_ACTION_RECIPIENTS = ("hank@lucerne.net", "orders@proseware.net")

DOWN = (
    ("Seattle-Tokyo RGC",),
    ("Tokyo-London RGC",),
    ("Seattle-London RGC",),
    ("Seattle-Tokyo RGC", "Seattle-London RGC"),
    ("Example TLD SMTP Connector",),
    ("Example TLD SMTP Connector", "Example Backup SMTP Connector"),
    ("Internet Mail SMTP Connector",),
    ("Partner SMTP Connector",),
    ("Adatum Relay SMTP Connector",),
    ("Northwind Primary SMTP Connector",),
    # Tokyo to London over the SMTP connector between them; with EX2 down as well, Tokyo to Seattle too,
    # over that SMTP connector and then a routing group connector (a mixed path).
    ("Tokyo-London RGC", "EX2"),
    # A server down: its virtual servers stop answering and link state marks its connectors down.
    ("EX1",),
    ("EX2",),
    ("EX3",),
    ("EX4",),
)
# The servers DOWN names: a lab's server_down, the rest connector_down.
SERVERS = ("EX1", "EX2", "EX3", "EX4")

UNREACHABLE = "Final destination currently unreachable"

_ORACLE_REASONS = "Generated; the oracle (harness/generation/oracle) reasons:"


def sender_of(entry: Entry, rng: random.Random) -> str:
    """Who sends: an authenticated account and a store's mailbox send as themselves (whether Exchange
    2003 lets them send as someone else is not in the documents)."""
    if entry.kind == STORE:
        return MAILBOX_OWNER[entry.server]
    if entry.kind == MEMO:
        return rng.choice(NOTES_SENDERS)
    return OWN_ADDRESS[entry.auth] if entry.auth else rng.choice(SENDERS)


def recipient_choices(entry: Entry) -> dict[str, tuple[str, ...]]:
    return {"Notes name": NOTES_RECIPIENTS} if entry.kind == MEMO else RECIPIENTS


def scenario_of(
    entry: Entry, sender: str, recipients: tuple[str, ...], down: tuple[str, ...] = ()
) -> Scenario:
    return Scenario(
        entry.client,
        entry.server,
        entry.virtual_server,
        entry.auth,
        sender,
        recipients,
        down,
        entry.tls,
        entry.kind,
    )


def sample(rng: random.Random) -> Scenario:
    entry = rng.choice(ENTRIES)
    sender = sender_of(entry, rng)
    # A memo has one recipient here: one Notes name, mapped by the gateway.
    count = 1 if entry.kind == MEMO else rng.choices((1, 2, 3), weights=(6, 3, 1))[0]
    choices = recipient_choices(entry)
    recipients: list[str] = []
    for _ in range(count):
        kind = rng.choice(sorted(choices))
        address = rng.choice(choices[kind])
        if address not in recipients:
            recipients.append(address)
    down = rng.choice(DOWN) if rng.random() < 0.3 else ()
    return scenario_of(entry, sender, tuple(recipients), down)


# Each of these addresses takes a connector and next hop of its own (OUT-8 only from EX3, for
# fourthcoffee.com): the grid sends every one from every entry point that may relay, by the rules an
# administrator sets for it (an anonymous Internet host is refused: the first grid has that already).
_ROUTED = ("Internet", "relay domain")


def _may_relay(entry: Entry) -> bool:
    vs = entry.virtual_server or ""
    return (
        bool(entry.auth)
        or entry.kind == STORE
        or entry.client in ("relay-host", "EX2", "EX4")
        or vs.startswith("Open Relay")
    )


# Where a server down is tried in the grid: a client that may relay anything, and the Notes gateway.
_OUTAGE_ENTRIES = (Entry("relay-host", "EX1"), Entry("notes", "EX4", kind=MEMO))
# Outages that make Tokyo leave over a connector other than a routing group connector (the SMTP
# connector to London, alone or followed by a routing group connector; with both down, the X.400
# connector, the MTA transferring to the remote MTA), tried from Tokyo.
_PATH_OUTAGES = (
    ("Tokyo-London RGC",),
    ("Tokyo-London RGC", "EX2"),
    ("Tokyo-London RGC", "Tokyo-London SMTP Connector"),
)
_TOKYO_ENTRIES = (Entry("store", "EX4", kind=STORE), Entry("notes", "EX4", kind=MEMO))
# The domain of the connector scheduled Never: mail for it waits, Scheduled, on the connector's bridgehead
# (EX1), sent there from its own routing group and from another one. Not among RECIPIENTS: a message
# that never leaves is worth a few scenarios, not a share of every random draw.
SCHEDULED_RECIPIENT = "ops@proseware.example"
_SCHEDULED_ENTRIES = (Entry("store", "EX1", kind=STORE), Entry("store", "EX3", kind=STORE))


def _grid(entry: Entry, rng: random.Random, down: tuple[str, ...] = ()) -> Iterator[Scenario]:
    """One scenario for each kind of recipient (for a memo, each Notes name: there are few)."""
    choices = recipient_choices(entry)
    for kind in sorted(choices):
        sender = sender_of(entry, rng)
        addresses = choices[kind] if entry.kind == MEMO else (rng.choice(choices[kind]),)
        for address in addresses:
            yield scenario_of(entry, sender, (address,), down)


def _draws(rng: random.Random) -> Iterator[Scenario]:
    """First every entry point with every kind of recipient, alone and with every connector up (so the
    corpus covers the whole grid whatever its size), then every SMTP entry point that may relay with
    every Internet and relay-domain address, then every kind of recipient with each other server
    down, then the Tokyo entry points with the outages that route over an SMTP connector between
    routing groups, then mail for the connector scheduled Never, then random scenarios without end."""
    for entry in ENTRIES:
        yield from _grid(entry, rng)
    for entry in filter(_may_relay, ROUTING_ENTRIES):
        for address in (a for kind in _ROUTED for a in RECIPIENTS[kind]):
            yield scenario_of(entry, sender_of(entry, rng), (address,))
    for entry in _OUTAGE_ENTRIES:
        for server in (s for s in SERVERS if s != entry.server):
            yield from _grid(entry, rng, (server,))
    # The route actions of connectors' delivery options (OUT-8a, OUT-8b), from every store: no draw
    # from rng, so the random scenarios after them stay the ones they were.
    for entry in (e for e in ENTRIES if e.kind == STORE):
        for address in ROUTE_ACTION_RECIPIENTS:
            yield scenario_of(entry, sender_of(entry, rng), (address,))
    for entry in _TOKYO_ENTRIES:
        for down in _PATH_OUTAGES:
            yield from _grid(entry, rng, down)
    for entry in _SCHEDULED_ENTRIES:
        yield scenario_of(entry, MAILBOX_OWNER[entry.server], (SCHEDULED_RECIPIENT,))
    yield from _restricted_connectors()
    while True:
        yield sample(rng)


# Connector restrictions (docs/decisions.md, "Connector restrictions judge the resolved sender"): who
# sends to the connectors restricted by sender, group and priority, and how they are vouched for.
_RESTRICTED_ADDRESSES = ("orders@adatum.com", "orders@woodgrove.com")
_RESTRICTED_SENDERS = (
    # A spoofed internal sender (a member of the group, or the one allowed sender) on anonymous
    # sessions, on the relay list of EX1 and from the Internet through EX2 (which hands it to EX1).
    (Entry("relay-host", "EX1"), "alice@contoso.com"),
    (Entry("relay-host", "EX1"), "bob@contoso.com"),
    (Entry("internet", "EX2"), "alice@contoso.com"),
    # The same senders resolved: authenticated, from the store (Dave: a member through a nested
    # group), or from another server of the organization.
    (Entry("lan", "EX1", auth="alice"), "alice@contoso.com"),
    (Entry("lan", "EX1", auth="bob"), "bob@contoso.com"),
    (Entry("store", "EX4", kind=STORE), "dave@contoso.com"),
    (Entry("store", "EX3", kind=STORE), "carol@contoso.com"),
    (Entry("EX2", "EX1"), "bob@contoso.com"),
    (Entry("relay-host", "EX1"), ""),
)


def _restricted_connectors() -> Iterator[Scenario]:
    for entry, sender in _RESTRICTED_SENDERS:
        for address in _RESTRICTED_ADDRESSES:
            for priority in ("normal", "high", "low"):
                yield dataclasses.replace(scenario_of(entry, sender, (address,)), priority=priority)


def scenarios(world: World, seed: int, count: int) -> Iterator[tuple[Scenario, Prediction]]:
    """`count` distinct scenarios the oracle can decide, in the order the seed draws them."""
    return itertools.islice(_decidable(world, seed, count), count)


def _decidable(world: World, seed: int, count: int) -> Iterator[tuple[Scenario, Prediction]]:
    """Distinct scenarios the oracle can decide, in the order the seed draws them, until `count` * 50
    draws have been made."""
    rng = random.Random(seed)
    seen: set[str] = set()
    attempts = 0
    draws = _draws(rng)
    while True:
        attempts += 1
        if attempts > count * 50:
            raise RuntimeError(f"only {len(seen)} distinct scenarios found in {attempts} draws")
        scenario = next(draws)
        name = slug(scenario)
        if name in seen:
            continue
        try:
            prediction = predict(world, scenario)
        except Unpredictable:
            continue
        seen.add(name)
        yield scenario, prediction


def _short(address: str) -> str:
    return address.replace("@", "-at-").replace(".", "-") if address else "null"


def slug(scenario: Scenario) -> str:
    vs = (scenario.virtual_server or "default").split(" SMTP")[0]
    if scenario.kind == SMTP:
        way = [vs, *(["tls"] if scenario.tls else []), f"auth-{scenario.auth}" if scenario.auth else "anon"]
    else:
        way = []  # "store-ex1-...", "notes-ex4-...": the client says it
    parts = [
        scenario.client,
        scenario.server,
        *way,
        "from",
        _short(scenario.sender),
        "to",
        *(_short(r) for r in scenario.recipients),
    ]
    if scenario.down:
        parts += ["down", *(d.replace(" SMTP Connector", "").replace(" RGC", "") for d in scenario.down)]
    if scenario.priority != "normal":
        parts += [scenario.priority, "priority"]
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def _sender(address: str) -> str:
    return address or "<>"


def delivered_entries(prediction: Prediction) -> list[dict[str, Any]]:
    """The oracle's deliveries as a trace's `delivered` entries; one SMTP delivery per next hop
    carries every recipient of the message copy that goes there."""
    grouped: dict[tuple[str, str, str, str, str], list[str]] = {}
    items: list[dict[str, Any]] = []
    dsn: dict[int, dict[str, str]] = {}
    deliveries: list[Delivery] = list(prediction.deliveries)
    for ndr in prediction.ndrs:
        dsn[len(deliveries)] = {"status": ndr.status, "action": "failed"}
        if ndr.status == "5.1.1":
            dsn[len(deliveries)]["recipient"] = ndr.recipient
        deliveries.append(ndr.delivery)
    # A repeat is left out: the mailbox holds one copy (docs/decisions.md).
    for index, d in [(i, d) for i, d in enumerate(deliveries) if not d.repeat]:
        if d.kind == "mailbox":
            item: dict[str, Any] = {"mailbox": d.where, "server": d.server, "sender": _sender(d.sender)}
        elif d.kind == "foreign":
            item = {"foreign": d.where}
            # A memo's From is the envelope sender; for the null sender the documents do not say
            # what the gateway writes (the reference MTA takes the header From).
            if d.sender:
                item["sender"] = d.sender
        else:
            key = (d.where, d.server, d.sender, d.scope, str(index in dsn))
            if key in grouped:
                grouped[key].append(d.rcpt)
                continue
            grouped[key] = [d.rcpt]
            item = {"sink": d.where, "peer": d.server, "sender": _sender(d.sender), "rcpt": grouped[key]}
            if d.greeting:
                item["greeting"] = d.greeting
        if index in dsn:
            item["dsn"] = dsn[index]
        items.append(item)
    for item in items:
        if isinstance(item.get("rcpt"), list) and len(item["rcpt"]) == 1:
            item["rcpt"] = item["rcpt"][0]
    return items


def _hops(scenario: Scenario, prediction: Prediction) -> list[str]:
    """The servers the message passes, when one copy goes one way: with several destinations the order
    in which servers first see copies is a race, and an NDR's sender is null, which the hop chain skips."""
    held = prediction.waiting or prediction.held or prediction.scheduled
    if len(prediction.deliveries) != 1 or prediction.ndrs or held or not scenario.sender:
        return []
    hops = list(prediction.deliveries[0].hops)
    return hops if hops and hops[0].upper() == scenario.server.upper() else []


def _ldap(prediction: Prediction) -> list[dict[str, Any]]:
    """The categorizer's look-up of each accepted recipient by proxy address (IN-5 / C-CAT), on the
    server that categorizes it, with one entry found or none; for a memo, the gateway's look-up of each
    Notes name first (GW-2)."""
    found: dict[tuple[str, str], bool] = {}
    for server, address, hit in prediction.lookups:
        found.setdefault((server, address), hit)
    entries = []
    for (server, address), hit in found.items():
        kind, _, value = address.partition(":") if address.startswith("notes:") else ("smtp", "", address)
        entries.append(
            {
                "filter": f"(proxyAddresses={kind}:{escape_filter_chars(value)})",
                "client": server,
                "results": int(hit),
            }
        )
    return entries


def _event(server: str, event: int, **fields: str) -> dict[str, Any]:
    return {"server": server, "event": event, **fields}


def _events(scenario: Scenario, prediction: Prediction) -> list[dict[str, Any]]:
    """The tracking events the oracle is certain of (reference_mta/tracking.py names them; the
    Exchange 2003 transport notes say where each is logged), each asserted by the fields it must carry,
    in no order: where several copies travel at once, the order of their events is a race."""
    events: list[dict[str, Any]] = []
    server = scenario.server
    accepted = prediction.accepted
    if scenario.kind == SMTP and accepted:
        # 1019: the virtual server submits the new MAILMSG to AQ, one event per recipient (IN-4).
        events += [
            _event(server, 1019, recipient=a, client=scenario.client, sender=_sender(scenario.sender))
            for a in accepted
        ]
    elif scenario.kind == STORE:
        events.append(_event(server, 1027, sender=scenario.sender))  # the store driver submits (OUT-2a)
    elif scenario.kind == MEMO:
        events.append(_event(server, 1004))  # the gateway takes it into its IN folder (GW-1)
        # Translated into MTS-IN (GW-2, no event of its own), then the MTA takes it in (GW-3).
        events += [_event(server, 0, recipient=a) for a in prediction.mapped]
        events.append(_event(server, 1027))  # the store driver gives it to AQ (GW-5)
    if scenario.kind != SMTP or accepted:
        events.append(_event(server, 1024))  # AQ hands it to the categorizer (C-AQ)
    deliveries = list(prediction.deliveries) + [n.delivery for n in prediction.ndrs]
    for d in deliveries:
        if d.kind == "mailbox":
            if d.scope and d.scope.upper() != d.server.upper():
                # Categorized elsewhere: routed toward its home server there (IN-6b); the queue's name
                # is the next hop's, which depends on the path.
                events.append(_event(d.scope, 1034, recipient=d.where))
            # Queued for local delivery, then the store driver delivers it (IN-6a).
            events += [_event(d.server, 1036, recipient=d.where), _event(d.server, 1028, recipient=d.where)]
        elif d.kind == "sink":
            # Routed to the connector's queue on its bridgehead, then transferred out (OUT-4, OUT-5).
            events += [
                _event(d.server, 1034, recipient=d.rcpt, queue=d.connector),
                _event(d.server, 1031, recipient=d.rcpt),
            ]
        else:
            # Queued for the gateway, handed to the MTA (IN-7c), which queues it for the connector (4)
            # and puts it in the gateway's MTS-OUT (7); the gateway delivers it as a memo (1003).
            events += [_event(d.server, event, recipient=d.where) for event in (1038, 1029, 4, 7, 1003)]
    # Routed into the remote-triggered connector's link queue, where it waits for ETRN (OUT-8b).
    events += [_event(server, 1034, recipient=rcpt, queue=queue) for server, queue, rcpt in prediction.held]
    events += [_event(n.origin, 1030) for n in prediction.ndrs]  # the NDR is made (DSN-1)
    unique: list[dict[str, Any]] = []
    for event in events:
        if event not in unique:
            unique.append(event)
    return unique


# The events a recipient gets on the server where a store submission enters, when it goes straight to
# a mailbox there, or straight out of that server (to another server or a connector's next hop).
_STORE_LOCAL = [1027, 1019, 1025, 1024, 1033, 1036, 1028, 1023]
_STORE_ROUTED = [1027, 1019, 1025, 1024, 1033, 1034, 1020, 1031]


def _tracking(scenario: Scenario, prediction: Prediction) -> dict[str, dict[str, list[int]]]:
    """For a store submission to one recipient that is neither expanded, forwarded nor renamed on the
    way, that recipient's whole sequence on the home server, 1027 first (OUT-2a); anything else may
    interleave other copies' events, so no sequence is asserted."""
    if scenario.kind != STORE or len(scenario.recipients) != 1:
        return {}
    held = prediction.waiting or prediction.held or prediction.scheduled
    if prediction.ndrs or held or prediction.forwards or len(prediction.deliveries) != 1:
        return {}
    (recipient,) = scenario.recipients
    d = prediction.deliveries[0]
    if d.kind == "mailbox" and d.where.lower() == recipient.lower():
        local = d.server.upper() == scenario.server.upper()
        return {scenario.server: {recipient: _STORE_LOCAL if local else _STORE_ROUTED}}
    if d.kind == "sink" and d.rcpt.lower() == recipient.lower():
        return {scenario.server: {recipient: _STORE_ROUTED}}
    return {}


def backed(document: dict[str, Any], path: Path) -> bool:
    """Write the trace, keeping in its `spec:` only the IDs its own assertions show (the evidence rule,
    harness/corpus/claims.py): the oracle's reasoning names steps a trace may not be able to show. A
    trace that shows none of them is not written (False)."""
    trace = writer.write(document, path)
    shown = {claim.id for claim in claims(trace) if claim.shown and not claim.boundary}
    spec = [spec_id for spec_id in document["spec"] if spec_id in shown]
    if not spec:
        path.unlink()
        return False
    if spec != document["spec"]:
        writer.write({**document, "spec": spec}, path)
    return True


def _spec(prediction: Prediction) -> list[str]:
    order = list(catalogue())
    return sorted(prediction.spec, key=order.index)


def _script(world: World, scenario: Scenario, prediction: Prediction) -> list[dict[str, Any]]:
    client_fqdn = (
        next((h.fqdn for h in world.clients if h.name == scenario.client), None)
        or world.server(scenario.client).fqdn
    )
    script: list[dict[str, Any]] = [{"expect": 220}, {"send": f"EHLO {client_fqdn}"}, {"expect": 250}]
    if scenario.tls:
        # The handshake verifies the server's certificate against the lab's CA; the session starts over.
        script += [{"starttls": True}, {"send": f"EHLO {client_fqdn}"}, {"expect": 250}]
    if scenario.auth:
        script += [
            {"auth": {"mechanism": "PLAIN", "user": scenario.auth, "password": PASSWORDS[scenario.auth]}},
            {"expect": {"code": 235, "enhanced": "2.7.0"}},
        ]
    script.append({"send": f"MAIL FROM:<{scenario.sender}>"})
    mail = prediction.mail_reply
    script.append(
        {
            "expect": {"code": 250, "enhanced": "2.1.0"}
            if mail is None
            else {"code": mail.code, "text": mail.text}
        }
    )
    for address, reply in zip(scenario.recipients, prediction.replies, strict=True):
        script += [{"send": f"RCPT TO:<{address}>"}, {"expect": {"code": reply.code, "text": reply.text}}]
    if prediction.accepted:
        # The content plays no part in these decisions but for its priority (connector content
        # restrictions): one small fixture message for all, or one that says its Importance.
        data: str | dict[str, str] = "plain.eml"
        if scenario.priority != "normal":
            data = {"inline": f"From: {scenario.sender or 'MAILER-DAEMON@fabrikam.com'}\n"
                    f"Subject: generated\nImportance: {scenario.priority}\n\nplain text\n"}  # fmt: skip
        script += [{"data": data}, {"expect": {"code": 250, "enhanced": "2.6.0"}}]
    script += [{"send": "QUIT"}, {"expect": 221}]
    return script


_MEMO_SUBJECT = "Generated memo"


def _entry_session(world: World, scenario: Scenario, prediction: Prediction) -> dict[str, Any]:
    if scenario.kind == STORE:
        importance = f"Importance: {scenario.priority}\n" if scenario.priority != "normal" else ""
        data = {
            "inline": f"From: {scenario.sender}\nSubject: generated submission\n{importance}\nplain text\n"
        }
        return {
            "submit": {
                "server": scenario.server,
                "mailbox": scenario.sender,
                "to": list(scenario.recipients),
                "data": data,
            }
        }
    if scenario.kind == MEMO:
        gateway = next(c.name for c in world.connectors if c.kind == "gateway")
        memo = (
            f"From: {scenario.sender}\nSendTo: {', '.join(scenario.recipients)}\n"
            f"Subject: {_MEMO_SUBJECT}\nBody:\nplain text\n"
        )
        return {"foreign": {"gateway": gateway, "data": {"inline": memo}}}
    connect: dict[str, str] = {"server": scenario.server}
    if scenario.virtual_server:
        connect["virtual_server"] = scenario.virtual_server
    return {"client": scenario.client, "connect": connect, "script": _script(world, scenario, prediction)}


def _title(scenario: Scenario) -> str:
    if scenario.kind == STORE:
        who = f"Outlook ({scenario.sender}) through the store of {scenario.server}"
    elif scenario.kind == MEMO:
        who = f"Notes memo from {scenario.sender} to the gateway on {scenario.server}"
    else:
        how = "as " + scenario.auth if scenario.auth else "anonymous"
        who = (
            f"{scenario.client} ({how}{', over TLS' if scenario.tls else ''}) to {scenario.server} "
            f"{scenario.virtual_server or 'Default SMTP Virtual Server'}: <{scenario.sender}>"
        )
    return (
        f"{who} to {', '.join(scenario.recipients)}"
        + (f", with {', '.join(scenario.down)} down" if scenario.down else "")
        + (f", Importance {scenario.priority}" if scenario.priority != "normal" else "")
    )


def document(world: World, scenario: Scenario, prediction: Prediction) -> dict[str, Any]:
    """The trace of one scenario: the lab actions, the way the message enters (an SMTP session with
    the oracle's replies, a store submission, a memo), and the oracle's outcome with nothing else
    delivered."""
    sessions: list[dict[str, Any]] = [
        {"lab": {"server_down" if d in SERVERS else "connector_down": d}} for d in scenario.down
    ]
    sessions.append(_entry_session(world, scenario, prediction))
    outcome: dict[str, Any] = {}
    ldap = _ldap(prediction)
    if ldap:
        outcome["ldap"] = ldap
    dns = [
        {"name": domain, "type": "MX", "client": server}
        for server, domain in dict.fromkeys(prediction.mx_lookups)
    ]
    if dns:
        outcome["dns"] = dns
    delivered = delivered_entries(prediction)
    if scenario.kind == MEMO:
        # The gateway's translation keeps the subject (GW-2).
        for item in delivered:
            item["headers"] = {"Subject": f"^{_MEMO_SUBJECT}$"}
    if delivered:
        outcome["delivered"] = delivered
    hops = _hops(scenario, prediction)
    if hops:
        outcome["hops"] = hops
    tracking = _tracking(scenario, prediction)
    if tracking:
        outcome["tracking"] = tracking
    events = _events(scenario, prediction)
    if events:
        outcome["events"] = events
    waiting = sorted({server for server, _ in prediction.waiting})
    held = sorted({(server, queue) for server, queue, _ in prediction.held})
    scheduled = sorted({(server, queue) for server, _, queue in prediction.scheduled})
    if waiting or held or scheduled:
        outcome["queues"] = (
            [{"server": s, "queue": UNREACHABLE} for s in waiting]
            + [{"server": s, "queue": q, "state": "Remote"} for s, q in held]
            + [{"server": s, "queue": q, "state": "Scheduled"} for s, q in scheduled]
        )
    elif scenario.kind == MEMO:
        # The memo went through the gateway's folders and the transport's queues, and all of them
        # are empty once it is delivered (GW-4).
        outcome["queues_empty"] = True
    # With nothing expected anywhere the stronger form says so (it is what shows a refusal held).
    outcome["nothing_else_delivered" if delivered else "nothing_delivered"] = True
    doc: dict[str, Any] = {
        "id": f"generated/{slug(scenario)}",
        "title": _title(scenario),
        "description": "\n".join([_ORACLE_REASONS, *prediction.notes]),
        "spec": _spec(prediction),
        "lab": "contoso",
    }
    requires = (
        (["queues"] if "queues" in outcome or "queues_empty" in outcome else [])
        + (["ldap_log"] if ldap else [])
        + (["tracking"] if events or tracking else [])
    )
    if requires:
        doc["requires"] = requires
    # Short: every delivery in these scenarios is immediate; nothing waits for a retry.
    doc["timeout"] = 10
    doc["sessions"] = sessions
    doc["outcome"] = outcome
    return doc


def generate(lab_file: Path, seed: int, count: int, out: Path) -> list[Path]:
    """Write `count` traces into `out`, replacing the traces a previous run wrote there (and only
    those: a hand-written trace in the same folder stays)."""
    world = load_world(lab_file.resolve())
    out.mkdir(parents=True, exist_ok=True)
    stale = [
        old for old in out.glob("*.yaml") if old.read_text(encoding="utf-8").startswith("id: generated/")
    ]
    written: list[Path] = []
    # The new traces are all written (each checked as it is) before the old ones go: a run that fails
    # half-way leaves the previous corpus whole, beside what it managed.
    for scenario, prediction in _decidable(world, seed, count):
        if len(written) == count:
            break
        path = out / f"{slug(scenario)}.yaml"
        if backed(document(world, scenario, prediction), path):
            written.append(path)
    for old in set(stale) - set(written):
        old.unlink(missing_ok=True)  # a scenario drawn again that shows nothing is gone already
    return written
