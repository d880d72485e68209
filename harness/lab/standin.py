"""A program of its own standing in for one server of the lab (a real MTA), in that server's network
namespace. The lab starts it once its own hosts are up, asks it whether its queue is idle when the
harness waits for the lab to settle, reads what it delivered into its mailboxes, lists and freezes its
own queues for `mailflow queues` and `mailflow lab freeze`, and stops it."""

from __future__ import annotations

import email
import email.message
import email.policy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from harness.lab.netns import Namespace
from reference_mta.queue_contract import QueueState


class NotPossible(ValueError):
    """What was asked of a stand-in names a queue it does not have, or something it cannot do; the
    message says which queues it has, or why not."""


@dataclass(frozen=True)
class MtaQueue:
    """One of a real MTA's own queues, as Queue Viewer would list it: state is one of Queue Viewer's
    (Ready, Active, Retry, Frozen); next_retry is a time.time() value, None if nothing waits for one."""

    name: str
    state: QueueState
    count: int
    recipients: tuple[str, ...] = ()
    next_retry: float | None = None


@dataclass(frozen=True)
class MailboxDelivery:
    mailbox: str
    server: str
    sender: str
    data: bytes


def from_maildir(data: bytes) -> tuple[bytes, email.message.Message, str]:
    """A message a delivery agent stored in a Maildir: as it went over the wire, its headers, and the
    envelope sender from the Return-Path the agent added ("" for the null sender, and where it adds
    none). A Maildir keeps LF line ends (maildir(5): the agent converts the wire's CRLF), SMTP carries
    CRLF, so the line ends are made CRLF again: a trace's body_contains, written as on the wire, holds
    on every MTA."""
    wire = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head = wire.split(b"\r\n\r\n", 1)[0]
    headers = email.message_from_bytes(head, policy=email.policy.compat32)
    # Read from the bytes: compat32 turns a UTF-8 sender (RFC 6531) into replacement characters.
    found = re.search(rb"^Return-Path:[ \t]*([^\r\n]*)", head, re.IGNORECASE | re.MULTILINE)
    sender = found[1].decode("utf-8", "replace") if found else ""
    return wire, headers, sender.strip().strip("<>")


class StandIn(Protocol):
    server: str
    mta: str  # the MTA's name, as its users know it: "Postfix"

    @property
    def log_path(self) -> Path: ...

    def start(self, namespace: Namespace) -> None: ...

    def stop(self) -> None: ...

    def idle(self) -> bool: ...

    def deliveries(self) -> list[MailboxDelivery]: ...

    def queues(self) -> list[MtaQueue]:
        """The MTA's own queues, every one of them, empty or not."""
        ...

    def freeze(self, queue: str, frozen: bool) -> str:
        """Hold (or release) what waits in `queue` as the MTA can; says what was done. NotPossible for
        a queue it does not have, or if it cannot."""
        ...
