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

__all__ = ["Delivery", "Ndr", "Prediction", "Reply", "Scenario", "Unpredictable", "World", "predict"]

# The lab's directory accounts that can authenticate (Basic authentication binds with these).
PASSWORDS = {
    "alice": "Alice-P@ss1",
    "bob": "Bob-P@ss1",
    "relayuser": "Relay-P@ss1",
    "mailadmin": "Admin-P@ss1",
}


@dataclass(frozen=True)
class Scenario:
    client: str  # the lab host the session comes from
    server: str
    virtual_server: str | None  # None: the server's default virtual server
    auth: str | None  # the account that authenticates first, or None for an anonymous session
    sender: str  # "" for the null sender
    recipients: tuple[str, ...]
    down: tuple[str, ...] = ()  # connectors an administrator marks down before the session


@dataclass(frozen=True)
class Ndr:
    delivery: Delivery  # where the NDR lands (sender "")
    status: str
    recipient: str


@dataclass
class Prediction:
    replies: list[Reply]
    deliveries: list[Delivery] = field(default_factory=list)
    ndrs: list[Ndr] = field(default_factory=list)
    waiting: list[tuple[str, str]] = field(default_factory=list)  # (server, recipient) that wait
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
    server = world.server(scenario.server)
    vs = next((v for v in server.virtual_servers if v.name == scenario.virtual_server), server.default)
    if not may_connect(world, vs, scenario.client) or not vs.anonymous:
        raise Unpredictable("a refused connection or an anonymous-less server: not a routing scenario")
    if scenario.auth is not None and (not vs.basic_auth or vs.auth_requires_tls):
        raise Unpredictable("authentication without TLS is not offered there")
    authenticated = scenario.auth is not None
    replies = [rcpt_reply(world, vs, scenario.client, authenticated, r) for r in scenario.recipients]
    prediction = Prediction(replies)
    for address, reply in zip(scenario.recipients, replies, strict=True):
        prediction.notes.append(f"RCPT {address}: {reply.code} — {reply.why}")
        prediction.spec.add(reply.spec)
        if reply.code == 550 and reply.spec == "RELAY-1":
            prediction.spec.add("IN-7b")
    accepted = [a for a, r in zip(scenario.recipients, replies, strict=True) if r.accepted]
    if not accepted:
        return prediction
    prediction.spec.add("IN-4")
    message = Message(
        scenario.sender,
        authenticated,
        is_organization_server(world, scenario.client),
        frozenset(d.lower() for d in scenario.down),
    )
    fate = Fate()
    categorizer = Categorizer(world, message, fate)
    for address in dict.fromkeys(a.lower() for a in accepted):
        categorizer.recipient(server.name, address)
    if len(fate.failures) > 1:
        # One NDR for several failures, or one each, depending on where and when they fail: the
        # documents do not say how a server batches them.
        raise Unpredictable("more than one recipient fails")
    prediction.deliveries = fate.deliveries
    prediction.waiting = list(fate.waiting)
    prediction.forwards = list(fate.forwards)
    prediction.lookups = list(fate.lookups)
    prediction.mx_lookups = list(fate.mx_lookups)
    prediction.spec |= fate.spec
    prediction.notes += fate.notes
    for failure in fate.failures:
        prediction.ndrs += _ndr(world, message, failure, prediction)
    return prediction


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
    prediction.notes += [f"NDR: {n}" for n in fate.notes]
    if fate.failures:
        prediction.notes.append("the NDR itself cannot be delivered: it goes to BadMail")
        return []
    prediction.mx_lookups += fate.mx_lookups
    return [Ndr(d, failure.status, failure.recipient) for d in fate.deliveries]
