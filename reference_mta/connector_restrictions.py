"""Connector restrictions: whether a connector exists for a message (reference sections 5 and 7).

A connector whose restrictions exclude a message is treated as non-existent for it; routing then
picks among the connectors that remain. Two kinds:

- Delivery restrictions ("accept only from" / "reject from") name senders or distribution groups and
  are held against the sender as the categorizer resolved it in the directory, never against the MAIL
  FROM text: a group lists its members, nested groups included. A sender that is not resolved (an
  anonymous session, unless its virtual server has "Resolve anonymous e-mail"; an address nobody
  has) is on no list: "accept only from" connectors do not exist for it, "reject from" ones do.
- Content restrictions: the allowed priorities (High, Normal, Low, from the Importance, X-Priority
  and Priority headers), the allowed types (system messages, i.e. reports, and non-system ones), and
  the allowed size.

The rule lives here alone: `routing` asks `permits`, the categorizer fills the MAILMSG's
`ResolvedSender` (`mailmsg`), the SMTP
virtual server works out the priority and whether the session may vouch for the sender.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from reference_mta.mailmsg import MSGCLASS_NDR, MailMsg, ResolvedSender

if TYPE_CHECKING:
    from reference_mta.topology import Connector

HIGH, NORMAL, LOW = "high", "normal", "low"
PRIORITIES = (HIGH, NORMAL, LOW)
SYSTEM, NON_SYSTEM = "system", "non_system"
MESSAGE_TYPES = (SYSTEM, NON_SYSTEM)

# Between servers of the organization, a message that entered on an anonymous session and was not
# resolved there says so, so that the next server does not resolve a sender its origin would not
# vouch for (TechNet: Exchange 2003 "marks the message as un-authenticated at its point of origin and
# transfers that information from server to server"). The mark is the MAILMSG property
# ANONYMOUS_ORIGIN, carried in XEXCH50 (`mailmsg.exch50_blob`) and over the X.400 transfer (`mta`).


class Headers(Protocol):
    """A message's header block as the email package parses it."""

    def get(self, name: str) -> Any: ...


def permits(connector: Connector, msg: MailMsg) -> bool:
    """Whether `connector` exists for `msg`: its content and delivery restrictions let it through."""
    limits = connector.restrictions
    if limits.max_size_kb is not None and msg.size > limits.max_size_kb * 1024:
        return False
    if message_priority(msg) not in limits.priorities:
        return False
    if (SYSTEM if is_system_message(msg) else NON_SYSTEM) not in limits.message_types:
        return False
    return sender_allowed(limits.accept_from, limits.reject_from, msg.resolved_sender)


def sender_allowed(
    accept_from: tuple[str, ...], reject_from: tuple[str, ...], sender: ResolvedSender | None
) -> bool:
    """Delivery restrictions against the resolved sender: an unresolved sender is on no list."""
    addresses = sender.addresses if sender is not None else frozenset()
    if accept_from and not addresses & {a.lower() for a in accept_from}:
        return False
    return not addresses & {a.lower() for a in reject_from}


def is_system_message(msg: MailMsg) -> bool:
    """Reports (NDRs, delay and delivery notices) are system messages: they have the null sender,
    which is how one still looks once it has left the server that wrote it."""
    return not msg.sender or msg.properties.get("MSGCLASS") == MSGCLASS_NDR


def message_priority(msg: MailMsg) -> str:
    value = msg.properties.get("PRIORITY")
    return value if value in PRIORITIES else NORMAL


def priority_of(headers: Headers) -> str:
    """The priority Exchange gives a MIME message: Importance first, then X-Priority (1-2 High, 3
    Normal, 4-5 Low), then Priority (urgent, normal, non-urgent); Normal when none says (decision in
    docs/decisions.md, "Connector restrictions")."""
    importance = str(headers.get("Importance") or "").strip().lower()
    if importance in PRIORITIES:
        return importance
    x_priority = str(headers.get("X-Priority") or "").strip()[:1]
    if x_priority in ("1", "2"):
        return HIGH
    if x_priority == "3":
        return NORMAL
    if x_priority in ("4", "5"):
        return LOW
    priority = str(headers.get("Priority") or "").strip().lower()
    return {"urgent": HIGH, "normal": NORMAL, "non-urgent": LOW}.get(priority, NORMAL)
