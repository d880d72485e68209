"""What the advanced queuing engine and the transport components agree on: the names and states of the
queues, the next hop routing chooses, the result a delivery gives back and the callables AQ is wired
with. Components import this module, never the engine (`queuing`), so none of them can reach another
through it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final, Literal, Protocol

from reference_mta.mailmsg import MailMsg, Recipient

# The system queues, as Queue Viewer names them. Queue names stay plain strings: a link queue is named
# at run time after its next hop (a connector, a server's FQDN, a remote domain).
PENDING_SUBMISSION: Final = "Messages pending submission"
DIRECTORY_LOOKUP: Final = "Messages awaiting directory lookup"
TO_BE_ROUTED: Final = "Messages waiting to be routed"
LOCAL_DELIVERY: Final = "Local delivery"
UNREACHABLE: Final = "Final destination currently unreachable"
DSN_PENDING: Final = "DSN messages pending submission"
RETRY: Final = "Failed message retry queue"
# Messages whose client set a deferred delivery time (DEFERRED_DELIVERY_FILETIME) wait here until it.
DEFERRED_DELIVERY: Final = "Messages queued for deferred delivery"
SYSTEM_QUEUES: Final = (
    PENDING_SUBMISSION,
    DIRECTORY_LOOKUP,
    TO_BE_ROUTED,
    LOCAL_DELIVERY,
    UNREACHABLE,
    DSN_PENDING,
    RETRY,
    DEFERRED_DELIVERY,
)
# The X.400 queues a server with a gateway connector shows (Queue Viewer lists them under the server's
# X.400 node): on the inbound gateway path the store driver moves a message from the gateway's MTS-IN
# folder into the MTA's queue (GW-3), then from there into the SMTP service's MTS-OUT queue (GW-4), then
# gives it to AQ. Like link queues, an administrator can freeze them.
X400_MTA: Final = "X.400: MTA queue"
X400_MTS_OUT: Final = "X.400: MTS-OUT"
X400_QUEUES: Final = (X400_MTA, X400_MTS_OUT)
# On the way out, the MTA keeps one queue for each connector it transfers over (a gateway connector's,
# and later an X.400 connector's), shown under the same node and frozen the same way.
X400_PREFIX: Final = "X.400: "


def mta_queue(connector: str) -> str:
    """The name Queue Viewer shows for the MTA's queue toward `connector`."""
    return f"{X400_PREFIX}{connector}"


# A gateway connector's own folders, listed as "<connector> <folder>"; folders, not queues: never frozen.
GATEWAY_FOLDERS: Final = ("IN", "MTS-IN", "MTS-OUT")
# Messages parked here wait for something to change (link state, the directory), not for time.
WAITS_FOR_AN_EVENT: Final = frozenset({UNREACHABLE, DIRECTORY_LOOKUP})
# The MAILMSG property that holds a deferred delivery time (a time.time() value; Exchange's is a FILETIME).
DEFERRED_DELIVERY_TIME: Final = "DEFERRED_DELIVERY_FILETIME"
# Where a message that not even an NDR can be made for ends: a folder, not a queue AQ holds; message
# tracking names it as the queue.
BADMAIL: Final = "BadMail"


class QueueState(StrEnum):
    """A queue's or an envelope's state as Queue Viewer shows it (KB 264054)."""

    READY = "Ready"
    ACTIVE = "Active"
    RETRY = "Retry"  # waiting for its next attempt (or for link state, when unreachable)
    FROZEN = "Frozen"  # waits for an administrator to unfreeze its link queue
    REMOTE = "Remote"  # waits for the remote host to ask for it (ETRN; remote triggered delivery)
    SCHEDULED = "Scheduled"  # its connector's schedule is closed: waits for it to open, or Force Connection


class HopKind(StrEnum):
    """How a next hop is reached. A StrEnum: envelope files on disk keep the plain words."""

    SERVER = "server"  # another server of the organization
    CONNECTOR = "connector"  # over a routing group connector, to the far side's bridgeheads
    DNS = "dns"  # the domain's MX records
    SMART_HOST = "smart_host"
    GATEWAY = "gateway"  # a foreign system's gateway connector
    X400 = "x400"  # over an X.400 connector: the local MTA transfers it to the remote MTA
    UNREACHABLE = "unreachable"  # a connector or path is down: waits for link state and retries
    NO_ROUTE = "no_route"  # nothing could ever carry it: fails at once

    @property
    def waits(self) -> bool:
        """Routing gave no link queue to send to: the recipients wait or fail, they are not sent."""
        return self in (HopKind.UNREACHABLE, HopKind.NO_ROUTE)


@dataclass(frozen=True)
class Hop:
    """Where routing sends a set of recipients: the link queue's name and how to reach it."""

    queue: str
    kind: HopKind
    targets: tuple[str, ...] = ()  # FQDNs or [a.b.c.d] literals, tried in order
    connector: str | None = None
    # Why routing chose this hop for one recipient (the catalogue ID and a sentence): recipients that
    # share a next hop share its session, whatever their reasons, so these are left out of `key`.
    spec: str = "C-RE"
    detail: str = ""

    @property
    def key(self) -> tuple[str, HopKind, tuple[str, ...], str | None]:
        """What makes two hops one link: AQ gives all of a message's recipients with the same key to
        one envelope, and so to one SMTP session. The connector counts only on its own queue (its
        schedule, its X.400 transfer); a hop toward a bridgehead names the connector the bridgehead
        will use, which does not change how this server reaches it (docs/decisions.md, "One envelope
        per next hop")."""
        own = self.connector is not None and self.connector.lower() == self.queue.lower()
        return (self.queue.lower(), self.kind, self.targets, self.connector if own else None)


class ComponentUnavailable(Exception):
    """A component cannot do its job right now (its directory or store is not answering): AQ keeps the
    message where it is and tries again, instead of failing it."""


@dataclass(frozen=True)
class DeliveryResult:
    delivered: list[Recipient]
    failed: list[Recipient]  # permanent: each carries status_text / enhanced
    deferred: list[Recipient]  # transient: retried later
    error: str = ""
    partner: str = "-"


@dataclass
class Components:
    """The work AQ dispatches. Each is given one envelope and does one job."""

    categorize: Callable[[MailMsg], Awaitable[None]]
    route: Callable[[MailMsg, Recipient], Hop]
    deliver_local: Callable[[MailMsg, bytes], Awaitable[DeliveryResult]]
    deliver_remote: Callable[[Hop, MailMsg, bytes], Awaitable[DeliveryResult]]
    make_ndr: Callable[[MailMsg, list[Recipient], bytes], tuple[MailMsg, bytes] | None]
    make_delay_notice: Callable[[MailMsg, list[Recipient], bytes], tuple[MailMsg, bytes] | None] | None = None
    # Seconds until a link queue's connector schedule opens: 0 when open, None when it never opens itself.
    schedule_wait: Callable[[Hop], float | None] | None = None


# Who hands a message to AQ: the SMTP virtual server, the store driver (a mailbox's own mail), a gateway
# connector's inbound memo, or AQ itself for a DSN. Message tracking logs each differently.
SubmissionSource = Literal["smtp", "store", "gateway", "dsn"]


class QueueFolder(Protocol):
    @property
    def path(self) -> Path: ...


class Submission(Protocol):
    """What a component that accepts mail needs of AQ: `submit`, which returns only once the message is
    durable, and the queue folder (inside the Mailroot, next to the server's logs)."""

    @property
    def directory(self) -> QueueFolder: ...

    async def submit(self, msg: MailMsg, content: bytes, *, source: SubmissionSource = "smtp") -> None: ...


@dataclass
class RetryPolicy:
    """Delivery timers of a virtual server (Delivery tab): retry intervals, delay notification, and
    expiration. Exchange 2003's defaults; labs set short ones."""

    intervals: tuple[float, ...] = (600.0, 600.0, 600.0, 900.0)
    expiration: float = 2 * 24 * 3600.0
    delay_notification: float = 12 * 3600.0

    def delay(self, attempt: int) -> float:
        return self.intervals[min(attempt, len(self.intervals)) - 1] if self.intervals else 60.0
