"""Message tracking log: one event per recipient per step, with Exchange 2003 event IDs.

Exchange writes a tab-separated `<SERVER>.log/yyyymmdd.log`; we keep its fields (KB 246965) but write
JSON lines, one file per UTC day, and add the conformance catalogue ID of the step and the queue the
message moved into. Every write is flushed at once so that a reader in another process (the harness)
sees the event as soon as the step happened.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reference_mta.mailmsg import MailMsg, Recipient
from reference_mta.replies import SERVICE_VERSION

# Event IDs (KB 821905) the transport emits.
SUBMIT_TO_AQ = 1019
BEGIN_OUTBOUND = 1020
BAD_MAIL = 1021
AQ_FAILURE = 1022
LOCAL_DELIVERY = 1023
SUBMIT_TO_CAT = 1024
BEGIN_SUBMIT = 1025
SUBMITTED_FROM_STORE = 1027
SD_LOCAL_DELIVERY = 1028
SD_GATEWAY_DELIVERY = 1029
NDR_ALL = 1030
END_OUTBOUND = 1031
CAT_RETRY = 1032
CATEGORIZED = 1033
ROUTED_REMOTE = 1034
ROUTING_RETRY = 1035
QUEUED_LOCAL = 1036
LOCAL_RETRY = 1037
ROUTED_GATEWAY = 1038
REDIRECTED = 1042
# Not in KB 821905: Exchange logs no event of its own when it sends a delay DSN. The reference MTA logs
# the delay notice under this ID so that traces can see it (docs/decisions.md).
DELAY_NOTICE = 1045

DESCRIPTIONS = {
    SUBMIT_TO_AQ: "SMTP: Message Submitted to Advanced Queuing",
    BEGIN_OUTBOUND: "SMTP: Started Outbound Transfer of Message",
    BAD_MAIL: "SMTP: Message moved to BadMail",
    AQ_FAILURE: "SMTP: AQ Failure",
    LOCAL_DELIVERY: "SMTP: Message Delivered Locally",
    SUBMIT_TO_CAT: "SMTP: Message Submitted to Categorizer",
    BEGIN_SUBMIT: "SMTP: Started Message Submission to Advanced Queue",
    SUBMITTED_FROM_STORE: "SMTP Store Driver: Message Submitted From Store",
    SD_LOCAL_DELIVERY: "SMTP Store Driver: Message Delivered Locally to Store",
    SD_GATEWAY_DELIVERY: "SMTP Store Driver: Message Transferred to MTA",
    NDR_ALL: "SMTP: Non-Delivered Report (NDR) Generated",
    END_OUTBOUND: "Message transferred through SMTP",
    CAT_RETRY: "SMTP: Message Scheduled to Retry Categorization",
    CATEGORIZED: "SMTP: Message Categorized and Queued For Routing",
    ROUTED_REMOTE: "SMTP: Message Routed and Queued For Remote Delivery",
    ROUTING_RETRY: "SMTP: Message Scheduled to Retry Routing",
    QUEUED_LOCAL: "SMTP: Message Queued for Local Delivery",
    LOCAL_RETRY: "SMTP: Message Scheduled to Retry Local Delivery",
    ROUTED_GATEWAY: "SMTP: Message Routed and Queued for Gateway Delivery",
    DELAY_NOTICE: "mailflow: Delay Delivery Status Notification Sent",
    REDIRECTED: "SMTP: Message Redirected to Alternate Recipient",
}


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
            "event": DESCRIPTIONS.get(self.event_id, ""),
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
        self._lock = threading.Lock()

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
        with self._lock, self.path_for(now).open("a", encoding="utf-8") as handle:
            handle.writelines(lines)


def read_events(directory: Path, server: str) -> list[dict[str, Any]]:
    """All events a server logged, oldest first."""
    folder = directory / f"{server}.log"
    events: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            events.extend(json.loads(line) for line in handle if line.strip())
    return events
