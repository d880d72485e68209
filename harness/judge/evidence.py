"""Evidence: what the lab saw after the sessions — the DNS and LDAP queries it answered, every message
that left the system under test (into a mailbox, an Internet sink or a gateway folder), each server's
tracking log and queues.

It is read once from a running lab (`Evidence.collect`) into plain values, so the checks in
`harness.judge.expectations` judge it without touching the lab, and unit tests can build it by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reference_mta import gateway, store, tracking

if TYPE_CHECKING:
    from harness.lab.runtime import Lab


@dataclass(frozen=True)
class Delivery:
    """A message that left the system under test: into a mailbox, a sink, or a gateway folder."""

    kind: str  # "mailbox" | "sink" | "gateway"
    where: str  # mailbox address, sink host name, or gateway connector
    server: str  # server holding the mailbox / gateway; the peer that handed it to a sink
    sender: str
    rcpt: tuple[str, ...]
    data: bytes

    def describe(self) -> str:
        rcpt = ", ".join(self.rcpt)
        sender = self.sender or "<>"
        if self.kind == "mailbox":
            return f"mailbox {self.where} on {self.server} (from {sender})"
        if self.kind == "sink":
            return f"sink {self.where} from {self.server}: {sender} → {rcpt}"
        if self.kind == "foreign":
            return f"foreign mailbox {self.where} in {self.server} (from {sender})"
        return f"gateway {self.where} on {self.server}: {sender} → {rcpt}"


@dataclass
class Evidence:
    hosts: dict[str, str]  # address → lab host name
    dns: list[dict[str, Any]]
    ldap: list[dict[str, Any]]
    deliveries: list[Delivery]
    tracking: dict[str, list[dict[str, Any]]]
    queues: dict[str, dict[str, list[dict[str, Any]]]]

    @classmethod
    def collect(cls, lab: Lab) -> Evidence:
        # Reversed so that, should two hosts share an address, the one declared first names it.
        names = {h.address: h.name for h in reversed(list(lab.config.hosts.values()))}
        dns = [
            {
                "client": names.get(q.client, q.client),
                "client_ip": q.client,
                "name": q.name,
                "type": q.rtype,
                "rcode": q.rcode,
                "answers": list(q.answers),
                "transport": q.transport,
            }
            for q in lab.dns.queries
        ]
        ldap = [
            {"client": q.client, "base": q.base, "filter": q.filter, "scope": q.scope, "results": q.results}
            for q in lab.gc.queries
        ]
        deliveries: list[Delivery] = []
        for record in store.read_deliveries(lab.workdir):
            deliveries.append(
                Delivery(
                    "mailbox",
                    str(record["recipient"]).lower(),
                    str(record["server"]),
                    str(record["sender"]),
                    (str(record["recipient"]),),
                    Path(str(record["path"])).read_bytes(),
                )
            )
        for stand_in in lab.stand_ins.values():
            for delivered in stand_in.deliveries():
                deliveries.append(
                    Delivery(
                        "mailbox",
                        delivered.mailbox,
                        delivered.server,
                        delivered.sender,
                        (delivered.mailbox,),
                        delivered.data,
                    )
                )
        for sink in lab.sinks.values():
            for capture in sink.captures:
                deliveries.append(
                    Delivery(
                        "sink",
                        sink.host.name,
                        names.get(capture.peer, capture.peer),
                        capture.mail_from,
                        tuple(capture.rcpt_tos),
                        capture.data,
                    )
                )
        # The store owns the gateway folder layout; we only read what it says it handed over.
        for transfer in store.read_gateway_transfers(lab.workdir):
            recipients = transfer["recipients"]
            deliveries.append(
                Delivery(
                    "gateway",
                    str(transfer["connector"]),
                    str(transfer["server"]),
                    str(transfer["sender"]),
                    tuple(str(r) for r in recipients) if isinstance(recipients, list) else (),
                    Path(str(transfer["path"])).read_bytes(),
                )
            )
        for memo in gateway.read_foreign_deliveries(lab.workdir):
            deliveries.append(
                Delivery(
                    "foreign",
                    str(memo["mailbox"]),
                    str(memo["system"]),
                    str(memo["sender"]),
                    (str(memo["mailbox"]),),
                    Path(str(memo["path"])).read_bytes(),
                )
            )
        events = {name: tracking.read_events(lab.tracking_dir, name) for name in lab.servers}
        return cls(
            hosts=names, dns=dns, ldap=ldap, deliveries=deliveries, tracking=events, queues=lab.queues()
        )
