"""Evidence: what the lab saw after the sessions — the DNS and LDAP queries it answered, the SMTP sessions
its virtual servers logged, every message that left the system under test (into a mailbox, an Internet
sink or a gateway folder), each server's tracking log and queues.

It is read once from a running lab (`Evidence.collect`) into plain values, so the checks in
`harness.judge.expectations` judge it without touching the lab, and unit tests can build it by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reference_mta import gateway, store, tracking

if TYPE_CHECKING:
    from harness.lab.runtime import Lab
    from harness.lab.standin import StandIn


class DeliveryKind(StrEnum):
    """Where a message that left the system under test went."""

    MAILBOX = "mailbox"
    SINK = "sink"  # an Internet host of the lab
    GATEWAY = "gateway"  # a gateway connector's folder
    FOREIGN = "foreign"  # a mailbox of the foreign system behind a gateway


@dataclass(frozen=True)
class Delivery:
    """A message that left the system under test: into a mailbox, a sink, or a gateway folder."""

    kind: DeliveryKind
    where: str  # mailbox address, sink host name, or gateway connector
    server: str  # server holding the mailbox / gateway; the peer that handed it to a sink
    sender: str
    rcpt: tuple[str, ...]
    data: bytes
    greeting: str = ""  # a sink's: the command the sender greeted it with, HELO or EHLO

    def describe(self) -> str:
        rcpt = ", ".join(self.rcpt)
        sender = self.sender or "<>"
        if self.kind == DeliveryKind.MAILBOX:
            return f"mailbox {self.where} on {self.server} (from {sender})"
        if self.kind == DeliveryKind.SINK:
            return f"sink {self.where} from {self.server}: {sender} → {rcpt}"
        if self.kind == DeliveryKind.FOREIGN:
            return f"foreign mailbox {self.where} in {self.server} (from {sender})"
        return f"gateway {self.where} on {self.server}: {sender} → {rcpt}"


@dataclass(frozen=True)
class DnsQuery:
    """A query the lab's DNS answered."""

    client: str  # the lab host that asked, or its address if no host has it
    client_ip: str
    name: str
    type: str
    rcode: str
    answers: tuple[str, ...]
    transport: str


@dataclass(frozen=True)
class Connection:
    """An SMTP session a virtual server's protocol log shows: who connected to which virtual server."""

    client: str  # the lab host that connected, or its address if no host has it
    client_ip: str
    server: str
    virtual_server: str
    address: str  # the virtual server's address (s-ip)


@dataclass(frozen=True)
class LdapQuery:
    """A search the lab's global catalog answered."""

    client: str
    base: str
    filter: str
    scope: str
    results: int


@dataclass(frozen=True)
class MtaLog:
    """What a real MTA standing in for a lab server wrote to its log while the trace's lab ran: a black
    box's own account of the sessions and deliveries, for the reader of the report."""

    server: str
    mta: str  # as its users know it: "Postfix"
    text: str


@dataclass
class Evidence:
    hosts: dict[str, str]  # address → lab host name
    dns: list[DnsQuery]
    ldap: list[LdapQuery]
    deliveries: list[Delivery]
    tracking: dict[str, list[dict[str, Any]]]
    queues: dict[str, dict[str, list[dict[str, Any]]]]
    connections: list[Connection] = field(default_factory=list)
    mta_logs: list[MtaLog] = field(default_factory=list)

    @classmethod
    def collect(cls, lab: Lab) -> Evidence:
        # Reversed so that, should two hosts share an address, the one declared first names it.
        names = {h.address: h.name for h in reversed(list(lab.config.hosts.values()))}
        dns = [
            DnsQuery(
                names.get(q.client, q.client),
                q.client,
                q.name,
                q.rtype,
                q.rcode,
                tuple(q.answers),
                q.transport,
            )
            for q in lab.dns_queries()
        ]
        ldap = [LdapQuery(q.client, q.base, q.filter, q.scope, q.results) for q in lab.ldap_queries()]
        deliveries = _mailboxes(lab) + _sinks(lab, names) + _gateways(lab)
        events = {name: tracking.read_events(lab.tracking_dir, name) for name in lab.reference_server_names}
        return cls(
            hosts=names,
            dns=dns,
            ldap=ldap,
            deliveries=deliveries,
            tracking=events,
            queues=lab.queues(),
            connections=_connections(lab, names),
            mta_logs=[_mta_log(server, stand_in) for server, stand_in in lab.stand_ins.items()],
        )


def _mta_log(server: str, stand_in: StandIn) -> MtaLog:
    # Each trace starts a lab of its own in a new folder, so the whole file is this trace's.
    path = stand_in.log_path
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return MtaLog(server, stand_in.mta, text)


def _connections(lab: Lab, names: dict[str, str]) -> list[Connection]:
    """One per client address and virtual server, in order of first appearance, from the W3C protocol
    logs of the reference servers' virtual servers that keep one (reference_mta/protocol_log.py): the
    log has a line per command and no session id, so a client's sessions to one virtual server count
    once."""
    found: dict[tuple[str, str, str], Connection] = {}
    for name in lab.reference_server_names:
        server = lab.config.organization.server(name)
        for vs in server.virtual_servers:
            if vs.logging != "w3c":
                continue
            folder = lab.workdir / server.name / "LogFiles" / f"SMTPSVC{vs.instance}"
            for path in sorted(folder.glob("ex*.log")):
                for client_ip, address in _w3c_sessions(path):
                    key = (server.name, vs.name, client_ip)
                    found.setdefault(
                        key,
                        Connection(names.get(client_ip, client_ip), client_ip, server.name, vs.name, address),
                    )
    return list(found.values())


def _w3c_sessions(path: Path) -> list[tuple[str, str]]:
    """(c-ip, s-ip) of each line of a W3C extended log, as its #Fields header places them."""
    fields: list[str] = []
    rows: list[tuple[str, str]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("#Fields:"):
            fields = line.split(":", 1)[1].split()
        elif line and not line.startswith("#") and {"c-ip", "s-ip"} <= set(fields):
            values = line.split(" ")
            if len(values) == len(fields):
                rows.append((values[fields.index("c-ip")], values[fields.index("s-ip")]))
    return rows


def _mailboxes(lab: Lab) -> list[Delivery]:
    """What the reference servers' stores and the real MTAs standing in for servers delivered."""
    found = [
        Delivery(
            DeliveryKind.MAILBOX,
            str(record["recipient"]).lower(),
            str(record["server"]),
            str(record["sender"]),
            (str(record["recipient"]),),
            Path(str(record["path"])).read_bytes(),
        )
        for record in store.read_deliveries(lab.workdir)
    ]
    outside = [d for elsewhere in lab.outside.values() for d in elsewhere.deliveries()]
    for stand_in in lab.stand_ins.values():
        found += [
            Delivery(DeliveryKind.MAILBOX, d.mailbox, d.server, d.sender, (d.mailbox,), d.data)
            for d in stand_in.deliveries()
        ]
    return found + [
        Delivery(DeliveryKind.MAILBOX, d.mailbox, d.server, d.sender, (d.mailbox,), d.data) for d in outside
    ]


def _sinks(lab: Lab, names: dict[str, str]) -> list[Delivery]:
    # What an MTA outside the lab relayed reached the sink its next hop points at: handed over by the
    # server it stands in for, to the Internet host the lab's DNS names for the recipient.
    relayed = [
        Delivery(DeliveryKind.SINK, host, server, c.mail_from, tuple(c.rcpt_tos), c.data)
        for server, elsewhere in lab.outside.items()
        for host, c in elsewhere.relayed()
    ]
    return [
        Delivery(
            DeliveryKind.SINK,
            host,
            names.get(capture.peer, capture.peer),
            capture.mail_from,
            tuple(capture.rcpt_tos),
            capture.data,
            capture.greeting,
        )
        for host, capture in lab.sink_captures()
    ] + relayed


def _gateways(lab: Lab) -> list[Delivery]:
    """What went to a gateway's folder, and on through it to the foreign system's mailboxes."""
    # The store owns the gateway folder layout; we only read what it says it handed over.
    found = []
    for transfer in store.read_gateway_transfers(lab.workdir):
        recipients = transfer["recipients"]
        found.append(
            Delivery(
                DeliveryKind.GATEWAY,
                str(transfer["connector"]),
                str(transfer["server"]),
                str(transfer["sender"]),
                tuple(str(r) for r in recipients) if isinstance(recipients, list) else (),
                Path(str(transfer["path"])).read_bytes(),
            )
        )
    found += [
        Delivery(
            DeliveryKind.FOREIGN,
            str(memo["mailbox"]),
            str(memo["system"]),
            str(memo["sender"]),
            (str(memo["mailbox"]),),
            Path(str(memo["path"])).read_bytes(),
        )
        for memo in gateway.read_foreign_deliveries(lab.workdir)
    ]
    return found
