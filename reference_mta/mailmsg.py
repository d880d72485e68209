"""MAILMSG: the envelope AQ carries for each message — sender, recipients with per-recipient status,
and the message properties (client IP, HELO, authenticated user, size, ...).

Property names follow the IMMPID_MP_* names of MailMsgProps.h without the prefix, so a property in a
queue file reads like the SDK. The envelope is JSON so a queue directory can be read by a person and
by the harness.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reference_mta.replies import Reply

# IMMPID_RP_* recipient flags (MailMsgProps.h).
RP_HANDLED = 0x00000010
RP_GENERAL_FAILURE = 0x00000020
RP_DSN_HANDLED = 0x00000040
RP_DELIVERED = 0x00000110
RP_DSN_SENT_NDR = 0x00000450
RP_FAILED = 0x00000830
RP_UNRESOLVED = 0x00001030
RP_EXPANDED = 0x00002010
RP_ERROR_CONTEXT_STORE = 0x00100000
RP_ERROR_CONTEXT_CAT = 0x00200000
RP_ERROR_CONTEXT_MTA = 0x00400000
RP_DSN_NOTIFY_SUCCESS = 0x01000000
RP_DSN_NOTIFY_FAILURE = 0x02000000
RP_DSN_NOTIFY_DELAY = 0x04000000
RP_DSN_NOTIFY_NEVER = 0x08000000

# MSGCLASS values.
MSGCLASS_NORMAL = 0
MSGCLASS_NDR = 4


@dataclass(frozen=True)
class ResolvedSender:
    """The sender's directory object: its DN, and the SMTP addresses of itself and of every group it
    is a member of (through nested groups), lower case: what a restriction list can name."""

    dn: str
    addresses: frozenset[str]

    def to_property(self) -> dict[str, Any]:
        return {"dn": self.dn, "addresses": sorted(self.addresses)}

    @classmethod
    def from_property(cls, value: Mapping[str, Any]) -> ResolvedSender:
        return cls(str(value["dn"]), frozenset(str(a).lower() for a in value["addresses"]))


@dataclass
class Recipient:
    address: str
    original: str  # DSN_PRE_CAT_ADDRESS
    address_type: str = "SMTP"
    flags: int = 0
    # pending → local | remote | gateway | failed | expanded, then delivered / relayed / failed
    status: str = "pending"
    home_server: str | None = None  # FQDN stamped by the categorizer
    home_mdb: str | None = None
    user_dn: str | None = None
    display_name: str | None = None
    status_text: str | None = None  # SMTP_STATUS_STRING, "550 5.1.1 ..."
    enhanced: str | None = None
    next_hop: str | None = None
    orcpt: str | None = None
    notify: str | None = None
    # The categorizer of a server of the organization has applied forwarding and expansion to this
    # recipient; it came with the message in XEXCH50, and no categorizer applies them again.
    categorized: bool = False
    # The next hop's own reply about this recipient in the latest delivery attempt, and the host that
    # gave it: a DSN's Diagnostic-Code and Remote-MTA. None when no next hop answered (DNS, no connection).
    remote_reply: str | None = None
    remote_mta: str | None = None

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower() if self.address_type == "SMTP" else ""

    def fail(self, status_text: str, enhanced: str, context: int) -> None:
        self.status = "failed"
        self.status_text = status_text
        self.enhanced = enhanced
        self.flags |= RP_FAILED | context

    def fail_with(self, reply: Reply, context: int) -> None:
        """Fail with a reply from the catalogue: the status text and the enhanced code are one record's."""
        self.fail(str(reply), reply.enhanced, context)


@dataclass
class MailMsg:
    sender: str  # "" is the null reverse-path <>
    recipients: list[Recipient]
    properties: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def new(cls, sender: str, recipients: list[str], **properties: Any) -> MailMsg:
        msg = cls(sender=sender, recipients=[Recipient(address=r, original=r) for r in recipients])
        msg.properties.update(properties)
        msg.properties.setdefault("ARRIVAL_TIME", time.time())
        msg.properties["NUM_RECIPIENTS"] = len(recipients)
        return msg

    @property
    def message_id(self) -> str:
        value: str = self.properties.get("RFC822_MSG_ID", "")
        return value

    @property
    def size(self) -> int:
        value: int = self.properties.get("MSG_SIZE_HINT", 0)
        return value

    @property
    def resolved_sender(self) -> ResolvedSender | None:
        """The sender as the categorizer resolved it in the directory (RESOLVED_SENDER), or None: not
        resolved, because nobody has the address or because its origin does not vouch for it."""
        value = self.properties.get("RESOLVED_SENDER")
        return ResolvedSender.from_property(value) if value else None

    @resolved_sender.setter
    def resolved_sender(self, sender: ResolvedSender | None) -> None:
        self.properties["RESOLVED_SENDER"] = sender.to_property() if sender is not None else None

    def pending(self, status: str = "pending") -> list[Recipient]:
        return [r for r in self.recipients if r.status == status]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MailMsg:
        raw = json.loads(text)
        return cls(
            sender=raw["sender"],
            recipients=[Recipient(**r) for r in raw["recipients"]],
            properties=raw["properties"],
            id=raw["id"],
        )

    def copy_for(self, recipients: list[Recipient]) -> MailMsg:
        """Bifurcate: a new envelope over the same content for a subset of recipients."""
        return MailMsg(sender=self.sender, recipients=recipients, properties=dict(self.properties))


# IMCEA encapsulation: how Exchange carries a non-SMTP address (NOTES:, X400:, ...) over SMTP, e.g.
# NOTES "Nora Lee/Contoso" ⇄ IMCEANOTES-Nora+20Lee+2FContoso@contoso.com.
_IMCEA = re.compile(r"^IMCEA([A-Za-z0-9]+)-(.+)@([^@]+)$")
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*-/=?^_`{|}~.")


def encapsulate(address_type: str, address: str, domain: str) -> str:
    encoded = "".join(
        c if c in _PLAIN and c != "/" else "".join(f"+{b:02X}" for b in c.encode()) for c in address
    )
    return f"IMCEA{address_type.upper()}-{encoded}@{domain}"


def decapsulate(smtp_address: str) -> tuple[str, str] | None:
    match = _IMCEA.match(smtp_address)
    if match is None:
        return None
    decoded = re.sub(rb"\+([0-9A-Fa-f]{2})", lambda m: bytes([int(m[1], 16)]), match[2].encode())
    return match[1].upper(), decoded.decode("utf-8", "replace")


# XEXCH50: the categorizer's per-recipient state, carried from one server of the organization to the
# next (Exchange's Peexch50.dll serializes MAILMSG properties into a binary blob; ours is the same
# properties, by their IMMPID_RP_* names, as JSON, like the queue files). Version 2, as Exchange 2003
# announces it on the XEXCH50 command line.
EXCH50_VERSION = 2
EXCH50_MAX_BYTES = 1024 * 1024  # a blob beyond this is no categorizer state: the session ends


@dataclass(frozen=True)
class CarriedState:
    """What one recipient's entry in an XEXCH50 blob says."""

    address: str  # ADDRESS_SMTP: the RCPT address of this transaction
    original: str  # DSN_PRE_CAT_ADDRESS
    flags: int  # RECIPIENT_FLAGS
    categorized: bool  # forwarding and expansion applied


@dataclass(frozen=True)
class Exch50:
    """What an XEXCH50 blob says: each recipient's state by RCPT address (lower case), and whether the
    message entered the organization on a session that could not vouch for its sender."""

    recipients: dict[str, CarriedState]
    anonymous_origin: bool


def exch50_blob(
    recipients: list[Recipient], rcpt_address: Callable[[Recipient], str], *, anonymous_origin: bool
) -> bytes:
    """The blob for a transaction to another server of the organization: one entry per RCPT address,
    and the message's origin mark (docs/decisions.md, "Connector restrictions")."""
    entries = [
        {
            "ADDRESS_SMTP": rcpt_address(r),
            "DSN_PRE_CAT_ADDRESS": r.original,
            "RECIPIENT_FLAGS": r.flags,
            "CATEGORIZED": r.categorized,
        }
        for r in recipients
    ]
    return json.dumps(
        {"VERSION": EXCH50_VERSION, "RECIPIENTS": entries, "ANONYMOUS_ORIGIN": anonymous_origin},
        sort_keys=True,
    ).encode()


class UnreadableBlob(ValueError):
    """An XEXCH50 blob that is not categorizer state; the message says what is wrong with it."""


def read_exch50_blob(data: bytes) -> Exch50:
    """The recipients' carried state by RCPT address (lower case), and the origin mark."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, too deep, a number too long
        raise UnreadableBlob(f"not MAILMSG properties ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict) or raw.get("VERSION") != EXCH50_VERSION:
        raise UnreadableBlob(f"not version {EXCH50_VERSION} MAILMSG properties")
    entries = raw.get("RECIPIENTS")
    if not isinstance(entries, list):
        raise UnreadableBlob("no RECIPIENTS list")
    anonymous_origin = raw.get("ANONYMOUS_ORIGIN")
    if not isinstance(anonymous_origin, bool):
        raise UnreadableBlob("no ANONYMOUS_ORIGIN flag")
    carried: dict[str, CarriedState] = {}
    for number, entry in enumerate(entries, 1):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("ADDRESS_SMTP"), str)
            and isinstance(entry.get("DSN_PRE_CAT_ADDRESS"), str)
            and isinstance(entry.get("RECIPIENT_FLAGS"), int)
            and isinstance(entry.get("CATEGORIZED"), bool)
        ):
            raise UnreadableBlob(f"recipient {number} lacks ADDRESS_SMTP, DSN_PRE_CAT_ADDRESS, "
                                 "RECIPIENT_FLAGS or CATEGORIZED")  # fmt: skip
        state = CarriedState(
            entry["ADDRESS_SMTP"],
            entry["DSN_PRE_CAT_ADDRESS"],
            entry["RECIPIENT_FLAGS"],
            entry["CATEGORIZED"],
        )
        carried[state.address.lower()] = state
    return Exch50(carried, anonymous_origin)


def apply_exch50(msg: MailMsg, carried: Exch50) -> None:
    """Give a message received from another server its origin mark, and each recipient its carried
    state."""
    msg.properties["ANONYMOUS_ORIGIN"] = carried.anonymous_origin
    for recipient in msg.recipients:
        state = carried.recipients.get(recipient.address.lower())
        if state is not None:
            # The flags travel for a person reading the blob; what the receiving categorizer acts on is
            # whether forwarding and expansion were applied, and the address before them (for DSNs).
            recipient.original = state.original
            recipient.categorized = state.categorized
