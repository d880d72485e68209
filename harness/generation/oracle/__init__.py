"""The oracle: what the seeds and docs/decisions.md say a scenario must produce, worked out from the lab
file and the directory alone.

It is the second opinion on the reference MTA, so it shares none of its code (nor the harness's lab
loader, which builds the reference MTA's topology): `world` reads the two files, `relay` decides the
RCPT replies, `categorize` and `route` follow each accepted recipient to a mailbox, an Internet host, a
foreign system, an NDR or a wait. Where the documents do not decide, it raises `Unpredictable` instead
of guessing, and the generator leaves that scenario out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from harness.generation.oracle import world as world_module
from harness.generation.oracle.categorize import Categorizer, Delivery, Failure, Fate, Message
from harness.generation.oracle.relay import Reply, is_organization_server, may_connect, rcpt_reply
from harness.generation.oracle.route import Unpredictable
from harness.generation.oracle.world import World

__all__ = [
    "MEMO",
    "SMTP",
    "STORE",
    "Delivery",
    "Ndr",
    "Prediction",
    "Reply",
    "Scenario",
    "Unpredictable",
    "World",
    "predict",
]

# The lab's directory accounts that can authenticate (Basic authentication binds with these).
PASSWORDS = {
    "alice": "Alice-P@ss1",
    "bob": "Bob-P@ss1",
    "relayuser": "Relay-P@ss1",
    "mailadmin": "Admin-P@ss1",
}


# How a message enters the organization: an SMTP session, an Outlook (MAPI) submission through the
# store of the sender's home server, or a memo the foreign (Notes) system hands to its gateway.
SMTP = "smtp"
STORE = "store"
MEMO = "memo"


@dataclass(frozen=True)
class Scenario:
    client: str  # the lab host the session comes from ("store" / "notes" for the other kinds)
    server: str  # where the message enters: the SMTP server, the home server, the gateway's server
    virtual_server: str | None  # None: the server's default virtual server
    auth: str | None  # the account that authenticates first, or None for an anonymous session
    sender: str  # "" for the null sender; a Notes name for a memo
    recipients: tuple[str, ...]  # SMTP addresses; Notes names for a memo
    # Connectors and servers an administrator marks down before the session, by name.
    down: tuple[str, ...] = ()
    tls: bool = False  # the session starts TLS (STARTTLS) before anything else
    kind: str = SMTP
    priority: str = "normal"  # the message's Importance: high, normal or low


@dataclass(frozen=True)
class Ndr:
    delivery: Delivery  # where the NDR lands (sender "")
    status: str
    recipient: str
    origin: str  # the server that failed the recipient and made the NDR


@dataclass
class Prediction:
    replies: list[Reply]
    # A refusal before any recipient: 530 at MAIL on a virtual server without anonymous access.
    mail_reply: Reply | None = None
    # For a memo: each Notes recipient's SMTP address once the gateway has mapped it.
    mapped: list[str] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    ndrs: list[Ndr] = field(default_factory=list)
    waiting: list[tuple[str, str]] = field(default_factory=list)  # (server, recipient) that wait
    held: list[tuple[str, str, str]] = field(default_factory=list)  # see Fate.held
    scheduled: list[tuple[str, str, str]] = field(default_factory=list)  # see Fate.scheduled
    forwards: list[tuple[str, str, str, bool]] = field(default_factory=list)  # see Fate.forwards
    lookups: list[tuple[str, str, bool]] = field(default_factory=list)  # see Fate.lookups
    mx_lookups: list[tuple[str, str]] = field(default_factory=list)  # see Fate.mx_lookups
    spec: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> list[str]:
        return [r.text.split(" ", 1)[1] for r in self.replies if r.accepted]


@cache
def load(lab_file: Path) -> World:
    return world_module.load(lab_file)


def predict(world: World, scenario: Scenario) -> Prediction:
    servers_down = {name.upper() for name in scenario.down} & set(world.servers)
    if scenario.server.upper() in servers_down:
        raise Unpredictable("the server the message enters by is down")
    if scenario.kind == STORE:
        return _store(world, scenario)
    if scenario.kind == MEMO:
        return _memo(world, scenario)
    return _smtp(world, scenario)


def _smtp(world: World, scenario: Scenario) -> Prediction:
    server = world.server(scenario.server)
    vs = next((v for v in server.virtual_servers if v.name == scenario.virtual_server), server.default)
    if not may_connect(world, vs, scenario.client):
        raise Unpredictable("a refused connection: not a routing scenario")
    if scenario.tls and not vs.tls:
        raise Unpredictable("STARTTLS where the virtual server has no certificate")
    if scenario.auth is not None and (not vs.basic_auth or (vs.auth_requires_tls and not scenario.tls)):
        raise Unpredictable("authentication is not offered there")
    authenticated = scenario.auth is not None
    if not vs.anonymous and not authenticated:
        # PROTO-16: every transaction command waits for AUTH; a RCPT after the refused MAIL is out of
        # sequence (PROTO-2).
        refused = Reply(530, "5.7.3 Client was not authenticated", "anonymous access is off (PROTO-16)",
                        "PROTO-16")  # fmt: skip
        out_of_sequence = [
            Reply(503, "5.5.2 Need mail command", "no sender was accepted (PROTO-2)", "PROTO-2")
            for _ in scenario.recipients
        ]
        prediction = Prediction(out_of_sequence, mail_reply=refused, spec={"PROTO-16", "PROTO-2"})
        prediction.notes.append(f"MAIL: 530 — {refused.why}")
        prediction.notes += [f"RCPT {a}: 503 — no sender was accepted (PROTO-2)" for a in scenario.recipients]
        return prediction
    replies = [rcpt_reply(world, vs, scenario.client, authenticated, r) for r in scenario.recipients]
    prediction = Prediction(replies)
    if scenario.tls:
        prediction.spec.add("PROTO-7")
        prediction.notes.append("STARTTLS: the session starts over encrypted (PROTO-7)")
    if authenticated:
        prediction.spec |= {"PROTO-8", "OUT-2b"}
    for address, reply in zip(scenario.recipients, replies, strict=True):
        prediction.notes.append(f"RCPT {address}: {reply.code} — {reply.why}")
        prediction.spec.add(reply.spec)
        if reply.code == 550 and reply.spec == "RELAY-1":
            prediction.spec.add("IN-7b")
    accepted = [a for a, r in zip(scenario.recipients, replies, strict=True) if r.accepted]
    if not accepted:
        return prediction
    prediction.spec |= {"IN-4", "C-AQ"}
    from_server = is_organization_server(world, scenario.client)
    message = Message(
        scenario.sender,
        authenticated,
        from_server,
        frozenset(d.lower() for d in scenario.down),
        vouched=authenticated or from_server or vs.resolve_anonymous,
        priority=scenario.priority,
    )
    _categorize(world, server.name, message, accepted, prediction)
    return prediction


def _store(world: World, scenario: Scenario) -> Prediction:
    """OUT-1 / OUT-2a: Outlook submits through the store of the sender's home server; the store takes
    every recipient (no relay decision: the user is authenticated), the categorizer judges them."""
    entry = world.by_proxy("smtp", scenario.sender)
    if entry is None or not entry.first("homeMDB"):
        raise Unpredictable(f"{scenario.sender} has no mailbox to submit from")
    prediction = Prediction([], spec={"OUT-1", "OUT-2a", "C-AQ"})
    prediction.notes.append(f"{scenario.sender} submits through the store of {scenario.server} (OUT-2a)")
    message = Message(
        scenario.sender,
        True,
        False,
        frozenset(d.lower() for d in scenario.down),
        vouched=True,
        priority=scenario.priority,
    )
    _categorize(world, world.server(scenario.server).name, message, list(scenario.recipients), prediction)
    return prediction


def _memo(world: World, scenario: Scenario) -> Prediction:
    """GW-1 .. GW-9: the gateway takes the memo into its IN folder, maps each Notes name to the SMTP
    address of the object with that NOTES proxy address, and the store driver hands it to AQ on the
    gateway's server; the memo's sender becomes an IMCEANOTES address in the gateway's SMTP domain."""
    gateway = next((c for c in world.connectors if c.kind == "gateway"), None)
    if gateway is None or gateway.local_bridgeheads[0].upper() != scenario.server.upper():
        raise Unpredictable("no gateway connector on that server")
    prediction = Prediction([], spec={"GW-1", "GW-2", "GW-4", "GW-5", "GW-6", "C-AQ"})
    mapped: list[str] = []
    for name in scenario.recipients:
        entry = world.by_proxy("notes", name)
        prediction.lookups.append((scenario.server, f"notes:{name}", entry is not None))
        if entry is None or not entry.first("mail"):
            # The gateway returns such a memo itself (a report, not an NDR of the transport): the
            # documents do not give its form.
            raise Unpredictable(f"{name} maps to no SMTP address")
        if entry.is_a("contact"):
            raise Unpredictable(f"{name} is a contact that points back into the foreign system")
        mapped.append(entry.first("mail") or "")
        prediction.notes.append(f"the gateway maps {name} to {mapped[-1]} (GW-2)")
    prediction.mapped = mapped
    if gateway.smtp_domain is None:
        raise Unpredictable(f"{gateway.name} has no SMTP domain for the foreign senders")
    sender = imcea("NOTES", scenario.sender, gateway.smtp_domain)
    # The gateway is the organization's own: it vouches for the memo's sender (who, as an IMCEA
    # address, resolves to no one).
    message = Message(sender, False, False, frozenset(d.lower() for d in scenario.down), vouched=True)
    _categorize(world, world.server(scenario.server).name, message, mapped, prediction)
    if prediction.ndrs:
        # The NDR goes back to an IMCEANOTES address, through the gateway, as a memo: its form is
        # the gateway's and not in the documents the oracle follows.
        raise Unpredictable("a recipient of a memo fails")
    prediction.spec.add("GW-7")
    if any(d.server.upper() != scenario.server.upper() for d in prediction.deliveries):
        prediction.spec |= {"GW-8", "GW-9"}  # a link queue, then a connector to another server
    return prediction


# RFC 5321 atext minus "/", which IMCEA encodes (the Exchange convention: "Nora Lee/Contoso" is
# IMCEANOTES-Nora+20Lee+2FContoso).
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*-=?^_`{|}~.")


def imcea(kind: str, address: str, domain: str) -> str:
    encoded = "".join(c if c in _PLAIN else "".join(f"+{b:02X}" for b in c.encode()) for c in address)
    return f"IMCEA{kind}-{encoded}@{domain}"


def _categorize(
    world: World, server: str, message: Message, accepted: list[str], prediction: Prediction
) -> None:
    fate = Fate()
    categorizer = Categorizer(world, message, fate)
    for address in dict.fromkeys(a.lower() for a in accepted):
        categorizer.recipient(server, address)
    if len(fate.failures) > 1:
        # One NDR for several failures, or one each, depending on where and when they fail: the
        # documents do not say how a server batches them.
        raise Unpredictable("more than one recipient fails")
    prediction.deliveries = fate.deliveries
    prediction.waiting += fate.waiting
    prediction.held += fate.held
    prediction.scheduled += fate.scheduled
    prediction.forwards = list(fate.forwards)
    prediction.lookups += fate.lookups
    prediction.mx_lookups = list(fate.mx_lookups)
    prediction.spec |= fate.spec
    prediction.notes += fate.notes
    for failure in fate.failures:
        prediction.ndrs += _ndr(world, message, failure, prediction)


def _ndr(world: World, message: Message, failure: Failure, prediction: Prediction) -> list[Ndr]:
    """The NDR is a new message from the server that failed the recipient, with the null sender, to the
    original sender; none for a null sender, and none about an NDR that cannot be delivered itself."""
    if not message.sender:
        prediction.notes.append("the sender is null: no NDR")
        return []
    fate = Fate()
    ndr_message = Message("", False, False, message.down)
    Categorizer(world, ndr_message, fate).recipient(failure.server, message.sender)
    prediction.waiting += fate.waiting
    prediction.scheduled += fate.scheduled
    prediction.notes += [f"NDR: {n}" for n in fate.notes]
    if fate.failures:
        prediction.notes.append("the NDR itself cannot be delivered: it goes to BadMail")
        return []
    prediction.mx_lookups += fate.mx_lookups
    return [Ndr(d, failure.status, failure.recipient, failure.server) for d in fate.deliveries]
