"""Message tracking log: one event per recipient per step, with Exchange 2003 event IDs.

Exchange writes a tab-separated `<SERVER>.log/yyyymmdd.log`; we keep its fields (KB 246965) but write
JSON lines, one file per UTC day, and add the conformance catalogue ID of the step and the queue the
message moved into. Every write is flushed at once so that a reader in another process (the harness)
sees the event as soon as the step happened; the day's file is kept open (`appending`).
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reference_mta.appending import AppendFile
from reference_mta.mailmsg import MailMsg, Recipient
from reference_mta.replies import SERVICE_VERSION


class Source(enum.Enum):
    """Where an event ID comes from."""

    EXCHANGE = "Exchange 2003 documentation (KB 821905)"
    EXTENSION = "this project's extension"


@dataclass(frozen=True)
class EventKind:
    event_id: int
    description: str  # the "event" field of a record, as ESM's Message History shows it
    source: Source


# Every event ID the reference MTA logs, by the name its components use. IDs Exchange documents keep
# Exchange's meaning; an extension uses an ID outside the documented ranges so that no real Exchange
# event is misread (docs/decisions.md).
CATALOGUE: dict[int, EventKind] = {}


def _event(event_id: int, description: str, source: Source = Source.EXCHANGE) -> int:
    assert event_id not in CATALOGUE, event_id
    CATALOGUE[event_id] = EventKind(event_id, description, source)
    return event_id


# SMTP transport (1019-1042).
SUBMIT_TO_AQ = _event(1019, "SMTP: Message Submitted to Advanced Queuing")
BEGIN_OUTBOUND = _event(1020, "SMTP: Started Outbound Transfer of Message")
BAD_MAIL = _event(1021, "SMTP: Message moved to BadMail")
AQ_FAILURE = _event(1022, "SMTP: AQ Failure")
LOCAL_DELIVERY = _event(1023, "SMTP: Message Delivered Locally")
SUBMIT_TO_CAT = _event(1024, "SMTP: Message Submitted to Categorizer")
BEGIN_SUBMIT = _event(1025, "SMTP: Started Message Submission to Advanced Queue")
SUBMITTED_FROM_STORE = _event(1027, "SMTP Store Driver: Message Submitted From Store")
SD_LOCAL_DELIVERY = _event(1028, "SMTP Store Driver: Message Delivered Locally to Store")
SD_GATEWAY_DELIVERY = _event(1029, "SMTP Store Driver: Message Transferred to MTA")
NDR_ALL = _event(1030, "SMTP: Non-Delivered Report (NDR) Generated")
END_OUTBOUND = _event(1031, "Message transferred through SMTP")
CAT_RETRY = _event(1032, "SMTP: Message Scheduled to Retry Categorization")
CATEGORIZED = _event(1033, "SMTP: Message Categorized and Queued For Routing")
ROUTED_REMOTE = _event(1034, "SMTP: Message Routed and Queued For Remote Delivery")
ROUTING_RETRY = _event(1035, "SMTP: Message Scheduled to Retry Routing")
QUEUED_LOCAL = _event(1036, "SMTP: Message Queued for Local Delivery")
LOCAL_RETRY = _event(1037, "SMTP: Message Scheduled to Retry Local Delivery")
ROUTED_GATEWAY = _event(1038, "SMTP: Message Routed and Queued for Gateway Delivery")
REDIRECTED = _event(1042, "SMTP: Message Redirected to Alternate Recipient")
# MTA (0-52) and gateway (1000-1018): the hand-off between a foreign-system gateway and the transport.
MTA_TRANSFER_IN = _event(0, "MTA: Message Transfer In")
MTA_SUBMISSION = _event(4, "MTA: Message Submission")
MTA_TRANSFER_OUT = _event(7, "MTA: Message Transfer Out")
GATEWAY_TRANSFER_OUT = _event(1003, "Gateway: Message Transfer Out")
GATEWAY_TRANSFER_IN = _event(1004, "Gateway: Message Transfer In")
GATEWAY_REPORT = _event(1007, "Gateway: Non-Delivery Report Generated")
# Exchange logs no event for a gateway's translation step, nor for a delay DSN (a new message, sender
# <>, whose own submission events show it): the reference MTA logs none either.


@dataclass(frozen=True)
class TrackingEvent:
    time: float
    server: str
    server_ip: str
    event_id: int
    recipient: str
    msgid: str
    sender: str
    spec: str
    client_ip: str = "-"
    client_hostname: str = "-"
    partner: str = "-"
    total_bytes: int = 0
    number_recipients: int = 0
    subject: str = ""
    linked_msgid: str = "-"
    queue: str = "-"
    detail: str = ""

    def to_record(self) -> dict[str, Any]:
        stamp = time.gmtime(self.time)
        return {
            "date": f"{stamp.tm_year}-{stamp.tm_mon}-{stamp.tm_mday}",
            "time": f"{stamp.tm_hour}:{stamp.tm_min:02}:{stamp.tm_sec:02} GMT",
            "timestamp": self.time,
            "client-ip": self.client_ip,
            "client-hostname": self.client_hostname,
            "partner-name": self.partner,
            "server-hostname": self.server,
            "server-ip": self.server_ip,
            "recipient-address": self.recipient,
            "event-id": self.event_id,
            "event": CATALOGUE[self.event_id].description,
            "msgid": self.msgid,
            "priority": 0,
            "total-bytes": self.total_bytes,
            "number-recipients": self.number_recipients,
            "encryption": 0,
            "service-version": f"Version: {SERVICE_VERSION}",
            "linked-msgid": self.linked_msgid,
            "message-subject": self.subject,
            "sender-address": self.sender or "<>",
            "spec": self.spec,
            "queue": self.queue,
            "detail": self.detail,
        }


class TrackingLog:
    """Appends events for one server to `<directory>/<SERVER>.log/yyyymmdd.jsonl`."""

    def __init__(self, directory: Path, server: str, server_ip: str) -> None:
        self.directory = directory / f"{server}.log"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.server = server
        self.server_ip = server_ip
        self._file = AppendFile()

    def path_for(self, when: float) -> Path:
        return self.directory / (time.strftime("%Y%m%d", time.gmtime(when)) + ".jsonl")

    def log(
        self, event_id: int, msg: MailMsg, recipients: Iterable[Recipient] | None, spec: str, **extra: Any
    ) -> None:
        now = time.time()
        targets = list(recipients) if recipients is not None else msg.recipients
        props = msg.properties
        lines = []
        for recipient in targets:
            event = TrackingEvent(
                time=now,
                server=self.server,
                server_ip=self.server_ip,
                event_id=event_id,
                recipient=recipient.address,
                msgid=msg.message_id,
                sender=msg.sender,
                spec=spec,
                client_ip=props.get("CONNECTION_IP_ADDRESS", "-"),
                client_hostname=props.get("HELO_DOMAIN", "-"),
                total_bytes=msg.size,
                number_recipients=len(msg.recipients),
                subject=props.get("RFC822_MSG_SUBJECT", ""),
                **extra,
            )
            lines.append(json.dumps(event.to_record(), sort_keys=True) + "\n")
        self._file.append(self.path_for(now), "".join(lines).encode("utf-8"))

    def close(self) -> None:
        self._file.close()


def read_events(directory: Path, server: str) -> list[dict[str, Any]]:
    """All events a server logged, oldest first."""
    folder = directory / f"{server}.log"
    events: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            events.extend(json.loads(line) for line in handle if line.strip())
    return events
