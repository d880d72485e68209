"""Trace generation: scenarios sampled from the decision space of the conformance catalogue, each
written as a trace whose expected replies and outcome come from the oracle (`harness.generation.oracle`).

The decision space: who connects where (an anonymous Internet host, a host on a relay list, a LAN
client with or without authentication, another server of the organization; the default, open-relay,
restricted, filtered, strict and directory virtual servers, the secondary MX and the servers of other
routing groups), who sends (an Internet sender, an internal one, the null sender), to whom (a mailbox here, on
the other server, in another routing group, a forwarding mailbox, groups, contacts, unknown addresses
in authoritative and shared domains, Internet domains, relay domains), and which connectors an
administrator has marked down. A scenario the oracle cannot decide from the documents is left out.

Everything is drawn from one `random.Random(seed)`, and written in a fixed order, so a seed gives the
same files byte for byte.
"""

from __future__ import annotations

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
from harness.generation.oracle import PASSWORDS, Delivery, Prediction, Scenario, Unpredictable, World, predict
from harness.generation.oracle import load as load_world


@dataclass(frozen=True)
class Entry:
    """Where a session comes from and goes to, and as whom it authenticates."""

    client: str
    server: str
    virtual_server: str | None = None
    auth: str | None = None


ENTRIES = (
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
)

UNREACHABLE = "Final destination currently unreachable"

_ORACLE_REASONS = "Generated; the oracle (harness/generation/oracle) reasons:"


def sample(rng: random.Random) -> Scenario:
    entry = rng.choice(ENTRIES)
    sender = OWN_ADDRESS[entry.auth] if entry.auth else rng.choice(SENDERS)
    count = rng.choices((1, 2, 3), weights=(6, 3, 1))[0]
    recipients: list[str] = []
    for _ in range(count):
        kind = rng.choice(sorted(RECIPIENTS))
        address = rng.choice(RECIPIENTS[kind])
        if address not in recipients:
            recipients.append(address)
    down = rng.choice(DOWN) if rng.random() < 0.3 else ()
    return Scenario(
        entry.client, entry.server, entry.virtual_server, entry.auth, sender, tuple(recipients), down
    )


# Each of these addresses takes a connector and next hop of its own (OUT-8 only from EX3, for
# fourthcoffee.com): the grid sends every one from every entry point that may relay, by the rules an
# administrator sets for it (an anonymous Internet host is refused: the first grid has that already).
_ROUTED = ("Internet", "relay domain")


def _may_relay(entry: Entry) -> bool:
    vs = entry.virtual_server or ""
    return bool(entry.auth) or entry.client in ("relay-host", "EX2", "EX4") or vs.startswith("Open Relay")


def _draws(rng: random.Random) -> Iterator[Scenario]:
    """First every entry point with every kind of recipient, alone and with every connector up (so the
    corpus covers the whole grid whatever its size), then every entry point that may relay with every
    Internet and relay-domain address, then random scenarios without end."""
    for entry in ENTRIES:
        for kind in sorted(RECIPIENTS):
            sender = OWN_ADDRESS[entry.auth] if entry.auth else rng.choice(SENDERS)
            address = rng.choice(RECIPIENTS[kind])
            yield Scenario(entry.client, entry.server, entry.virtual_server, entry.auth, sender, (address,))
    for entry in filter(_may_relay, ENTRIES):
        for address in (a for kind in _ROUTED for a in RECIPIENTS[kind]):
            sender = OWN_ADDRESS[entry.auth] if entry.auth else rng.choice(SENDERS)
            yield Scenario(entry.client, entry.server, entry.virtual_server, entry.auth, sender, (address,))
    while True:
        yield sample(rng)


def known_disagreement(prediction: Prediction) -> str | None:
    """Why the reference MTA is known to contradict the oracle here (docs/decisions.md, "Generated
    traces"), or None. Such scenarios stay out of the corpus, which must pass, until it is fixed; the
    property test runs them and expects them to fail for this reason (tests/test_oracle_agreement.py,
    which keeps one scenario per reason as a strict expected failure)."""
    for server, mailbox, home, keep in prediction.forwards:
        if keep and server.upper() != home.upper():
            return (
                f"{mailbox} forwards and keeps a copy, and is categorized on {server}, not on its home "
                f"server {home}: the reference MTA applies the forwarding again on every server on the "
                "way, so the alternate recipient gets one copy per hop instead of one"
            )
    return None


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
        if known_disagreement(prediction) is not None:
            continue
        seen.add(name)
        yield scenario, prediction


def _short(address: str) -> str:
    return address.replace("@", "-at-").replace(".", "-") if address else "null"


def slug(scenario: Scenario) -> str:
    vs = (scenario.virtual_server or "default").split(" SMTP")[0]
    parts = [
        scenario.client,
        scenario.server,
        vs,
        f"auth-{scenario.auth}" if scenario.auth else "anon",
        "from",
        _short(scenario.sender),
        "to",
        *(_short(r) for r in scenario.recipients),
    ]
    if scenario.down:
        parts += ["down", *(d.replace(" SMTP Connector", "").replace(" RGC", "") for d in scenario.down)]
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
    for index, d in enumerate(deliveries):
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
    if len(prediction.deliveries) != 1 or prediction.ndrs or prediction.waiting or not scenario.sender:
        return []
    hops = list(prediction.deliveries[0].hops)
    return hops if hops and hops[0].upper() == scenario.server.upper() else []


def _ldap(prediction: Prediction) -> list[dict[str, Any]]:
    """The categorizer's look-up of each accepted recipient by proxy address (IN-5 / C-CAT), on the
    server that categorizes it, with one entry found or none."""
    found: dict[tuple[str, str], bool] = {}
    for server, address, hit in prediction.lookups:
        found.setdefault((server, address), hit)
    return [
        {
            "filter": f"(proxyAddresses=smtp:{escape_filter_chars(address)})",
            "client": server,
            "results": int(hit),
        }
        for (server, address), hit in found.items()
    ]


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


def document(world: World, scenario: Scenario, prediction: Prediction) -> dict[str, Any]:
    """The trace of one scenario: the lab actions, the SMTP session with the oracle's replies, and the
    oracle's outcome with nothing else delivered."""
    client_fqdn = (
        next((h.fqdn for h in world.clients if h.name == scenario.client), None)
        or world.server(scenario.client).fqdn
    )
    connect: dict[str, str] = {"server": scenario.server}
    if scenario.virtual_server:
        connect["virtual_server"] = scenario.virtual_server
    script: list[dict[str, Any]] = [{"expect": 220}, {"send": f"EHLO {client_fqdn}"}, {"expect": 250}]
    if scenario.auth:
        script += [
            {"auth": {"mechanism": "PLAIN", "user": scenario.auth, "password": PASSWORDS[scenario.auth]}},
            {"expect": {"code": 235, "enhanced": "2.7.0"}},
        ]
    script += [
        {"send": f"MAIL FROM:<{scenario.sender}>"},
        {"expect": {"code": 250, "enhanced": "2.1.0"}},
    ]
    for address, reply in zip(scenario.recipients, prediction.replies, strict=True):
        script += [{"send": f"RCPT TO:<{address}>"}, {"expect": {"code": reply.code, "text": reply.text}}]
    if prediction.accepted:
        # The content plays no part in these decisions: one small fixture message for all.
        script += [{"data": "plain.eml"}, {"expect": {"code": 250, "enhanced": "2.6.0"}}]
    script += [{"send": "QUIT"}, {"expect": 221}]
    sessions: list[dict[str, Any]] = [{"lab": {"connector_down": c}} for c in scenario.down]
    sessions.append({"client": scenario.client, "connect": connect, "script": script})
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
    if delivered:
        outcome["delivered"] = delivered
    hops = _hops(scenario, prediction)
    if hops:
        outcome["hops"] = hops
    waiting = sorted({server for server, _ in prediction.waiting})
    if waiting:
        outcome["queues"] = [{"server": s, "queue": UNREACHABLE} for s in waiting]
    # With nothing expected anywhere the stronger form says so (it is what shows a refusal held).
    outcome["nothing_else_delivered" if delivered else "nothing_delivered"] = True
    who = f"{scenario.client} ({'as ' + scenario.auth if scenario.auth else 'anonymous'})"
    title = (
        f"{who} to {scenario.server} {scenario.virtual_server or 'Default SMTP Virtual Server'}: "
        f"<{scenario.sender}> to {', '.join(scenario.recipients)}"
        + (f", with {', '.join(scenario.down)} down" if scenario.down else "")
    )
    doc: dict[str, Any] = {
        "id": f"generated/{slug(scenario)}",
        "title": title,
        "description": "\n".join([_ORACLE_REASONS, *prediction.notes]),
        "spec": _spec(prediction),
        "lab": "contoso",
    }
    requires = (["queues"] if waiting else []) + (["ldap_log"] if ldap else [])
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
