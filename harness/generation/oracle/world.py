"""The lab as the oracle sees it: the lab file and the directory fixture read straight from disk.

Nothing here comes from the reference MTA or from the harness's lab loader (which builds the reference
MTA's topology objects): the oracle is a second opinion, so it reads the same two files on its own and
keeps only what the documented rules need — recipient policies, virtual servers' relay settings,
routing groups and connectors, the Internet hosts and MX records, and the directory's recipients.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class VirtualServer:
    server: str
    name: str
    addr: int  # offset from the lab's base address
    open_relay: bool = False
    # Relay restrictions: "only the list below" (relay_only) or "all except the list below"
    # (relay_except), of lab host names, "host/prefix" subnets or networks.
    relay_only: tuple[str, ...] | None = ()
    relay_except: tuple[str, ...] | None = None
    allow_authenticated: bool = True
    connection_only: tuple[str, ...] | None = None
    connection_except: tuple[str, ...] | None = None
    anonymous: bool = True
    basic_auth: bool = True
    auth_requires_tls: bool = False
    tls: bool = False  # has a certificate: offers STARTTLS
    filter_directory: bool = False
    filter_addresses: tuple[str, ...] = ()
    smart_host: str | None = None
    resolve_anonymous: bool = False  # Access → Authentication → "Resolve anonymous e-mail"


@dataclass(frozen=True)
class Server:
    name: str
    fqdn: str
    addr: int
    routing_group: str
    virtual_servers: tuple[VirtualServer, ...]
    # The store keeps one copy of a message per mailbox unless this is "none" (docs/decisions.md).
    duplicate_detection: str = "message_id"

    @property
    def default(self) -> VirtualServer:
        return self.virtual_servers[0]


@dataclass(frozen=True)
class AddressSpace:
    kind: str  # SMTP, NOTES, X400...
    pattern: str
    cost: int


@dataclass(frozen=True)
class Connector:
    kind: str  # routing_group | smtp | x400 | gateway
    name: str
    routing_group: str
    cost: int = 1
    connects_to: str | None = None
    local_bridgeheads: tuple[str, ...] = ()
    remote_bridgeheads: tuple[str, ...] = ()
    address_spaces: tuple[AddressSpace, ...] = ()
    smart_hosts: tuple[str, ...] = ()
    allow_relay: bool = False
    accept_from: tuple[str, ...] | None = None
    reject_from: tuple[str, ...] = ()
    # Content restrictions: the priorities and the kinds of message (system = reports) it takes.
    priorities: tuple[str, ...] = ("high", "normal", "low")
    message_types: tuple[str, ...] = ("system", "non_system")
    scope_routing_group: bool = False
    down: bool = False
    smtp_domain: str | None = None  # a gateway's: the domain of the SMTP form of foreign addresses
    send_helo: bool = False  # Advanced: "Send HELO instead of EHLO"
    remote_triggered: bool = False  # Delivery Options: "Queue mail for remote triggered delivery"
    # Delivery Options schedule: "always", "never", or "windows" (selected times: the clock decides).
    schedule: str = "always"


@dataclass(frozen=True)
class Host:
    name: str
    fqdn: str
    addr: int


@dataclass
class Entry:
    """One directory object: its DN and its attributes (names lower-cased, values as written)."""

    dn: str
    attrs: dict[str, list[str]] = field(default_factory=dict)

    def first(self, name: str) -> str | None:
        values = self.attrs.get(name.lower())
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return self.attrs.get(name.lower(), [])

    def is_a(self, object_class: str) -> bool:
        return object_class.lower() in (v.lower() for v in self.all("objectClass"))

    def flag(self, name: str) -> bool:
        return (self.first(name) or "").upper() == "TRUE"


@dataclass
class World:
    name: str
    base: ipaddress.IPv4Address
    policies: dict[str, bool]  # domain (lower case) → authoritative
    servers: dict[str, Server]
    connectors: list[Connector]
    internet: list[Host]
    clients: list[Host]
    mx: dict[str, list[tuple[int, str]]]  # domain → (preference, exchanger), as the lab's DNS has them
    a_records: dict[str, int]  # extra A records: name → address offset
    entries: dict[str, Entry]  # by DN, lower case

    def server(self, name: str) -> Server:
        return self.servers[name.upper()]

    def host_addr(self, name: str) -> int | None:
        for host in (*self.internet, *self.clients):
            if host.name.lower() == name.lower():
                return host.addr
        for server in self.servers.values():
            if server.name.lower() == name.lower():
                return server.addr
        return None

    def address(self, offset: int) -> ipaddress.IPv4Address:
        return self.base + offset

    def by_proxy(self, kind: str, address: str) -> Entry | None:
        """The object with this proxy address (case-insensitive, as the directory compares)."""
        wanted = f"{kind}:{address}".lower()
        for entry in self.entries.values():
            if wanted in (p.lower() for p in entry.all("proxyAddresses")):
                return entry
        return None

    def entry(self, dn: str) -> Entry | None:
        return self.entries.get(dn.lower())

    def all_by_proxy(self, kind: str, address: str) -> list[Entry]:
        wanted = f"{kind}:{address}".lower()
        return [e for e in self.entries.values() if wanted in (p.lower() for p in e.all("proxyAddresses"))]

    def sink_for(self, fqdn: str) -> Host | None:
        return next((h for h in self.internet if h.fqdn.lower() == fqdn.lower().rstrip(".")), None)


def read_ldif(path: Path) -> dict[str, Entry]:
    """A tiny LDIF reader: enough for the lab's fixtures (comments, folded lines, base64 values)."""
    entries: dict[str, Entry] = {}
    lines: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.startswith(" ") and lines:
            lines[-1] += raw[1:]
        else:
            lines.append(raw)
    current: Entry | None = None
    for line in lines:
        if not line.strip():
            current = None
            continue
        if line.startswith("#") or ":" not in line:
            continue
        name, _, value = line.partition(":")
        if value.startswith(":"):
            value = base64.b64decode(value[1:].strip()).decode("utf-8")
        value = value.strip()
        if name.lower() == "dn":
            current = Entry(value)
            entries[value.lower()] = current
        elif current is not None:
            current.attrs.setdefault(name.lower(), []).append(value)
    return entries


def _names(raw: Any) -> tuple[str, ...]:
    return tuple(str(x) for x in raw or ())


def _virtual_server(server: str, addr: int, raw: dict[str, Any]) -> VirtualServer:
    relay = raw.get("relay") or {}
    connection = raw.get("connection") or {}
    filtering = raw.get("recipient_filtering") or {}
    return VirtualServer(
        server=server,
        name=raw["name"],
        addr=int(raw.get("addr", addr)),
        open_relay=bool(relay.get("open", False)),
        # Exchange 2003's default: "only the list below", empty, and authenticated clients relay.
        relay_only=_names(relay.get("only_list")) if "all_except" not in relay else None,
        relay_except=_names(relay["all_except"]) if "all_except" in relay else None,
        allow_authenticated=bool(relay.get("allow_authenticated", True)),
        connection_only=_names(connection["only_list"]) if "only_list" in connection else None,
        connection_except=_names(connection["all_except"]) if "all_except" in connection else None,
        anonymous=bool(raw.get("anonymous", True)),
        basic_auth=bool(raw.get("basic_auth", True)),
        auth_requires_tls=bool(raw.get("auth_requires_tls", False)),
        tls=bool(raw.get("tls", False)),
        filter_directory=bool(filtering.get("directory", False)),
        filter_addresses=_names(filtering.get("addresses")),
        smart_host=raw.get("smart_host"),
        resolve_anonymous=bool(raw.get("resolve_anonymous", False)),
    )


def _connectors(raw: dict[str, Any]) -> list[Connector]:
    """The lab's connectors; a routing group connector also gets its reciprocal (the lab file's default),
    a connector of its own in the other direction, as Exchange creates one in the remote group."""
    spaces = tuple(
        AddressSpace(str(s.get("type", "SMTP")).upper(), str(s["pattern"]), int(s.get("cost", 1)))
        for s in raw.get("address_spaces") or ()
    )
    restrictions = raw.get("restrictions") or {}
    delivery = raw.get("delivery") or {}
    kind = raw["type"]
    bridgeheads = _names(raw.get("bridgeheads")) or ((raw["server"],) if "server" in raw else ())
    connector = Connector(
        kind=kind,
        name=raw["name"],
        routing_group=raw["routing_group"],
        cost=int(raw.get("cost", 1)),
        connects_to=raw.get("connects_to"),
        local_bridgeheads=_names(raw.get("local_bridgeheads")) or bridgeheads,
        remote_bridgeheads=_names(raw.get("remote_bridgeheads")),
        address_spaces=spaces,
        smart_hosts=_names(delivery.get("smart_hosts")),
        allow_relay=bool(raw.get("allow_relay", False)),
        accept_from=_names(restrictions.get("accept_from")) or None,
        reject_from=_names(restrictions.get("reject_from")),
        priorities=_names(restrictions.get("priorities")) or ("high", "normal", "low"),
        message_types=_names(restrictions.get("message_types")) or ("system", "non_system"),
        scope_routing_group=raw.get("scope") == "routing_group",
        down=raw.get("state") == "down",
        smtp_domain=raw.get("smtp_domain"),
        send_helo=bool((raw.get("advanced") or {}).get("send_helo", False)),
        remote_triggered=bool(delivery.get("remote_triggered", False)),
        schedule=raw.get("schedule", "always")
        if isinstance(raw.get("schedule", "always"), str)
        else "windows",
    )
    if kind != "routing_group" or not raw.get("reciprocal", True):
        return [connector]
    back = Connector(
        kind=kind,
        name=f"{raw['name']} (reciprocal)",
        routing_group=raw["connects_to"],
        cost=connector.cost,
        connects_to=raw["routing_group"],
        local_bridgeheads=connector.remote_bridgeheads,
        remote_bridgeheads=connector.local_bridgeheads,
        down=connector.down,
    )
    return [connector, back]


def _far_side(connector: Connector, servers: dict[str, Server]) -> Connector:
    """An SMTP connector between routing groups that uses DNS hands messages to the servers of the
    connected group (docs/decisions.md): they stand as its remote bridgeheads, for routing and for
    link state alike."""
    if connector.kind != "smtp" or connector.connects_to is None or connector.smart_hosts:
        return connector
    group = tuple(s.name for s in servers.values() if s.routing_group == connector.connects_to)
    return replace(connector, remote_bridgeheads=group)


def load(lab_file: Path) -> World:
    raw = yaml.safe_load(lab_file.read_text(encoding="utf-8"))
    org = raw["organization"]
    policies: dict[str, bool] = {}
    for policy in sorted(org["recipient_policies"], key=lambda p: p.get("priority", 0)):
        for entry in policy["addresses"]:
            policies[entry["domain"].lower()] = bool(entry.get("authoritative", True))
    servers = {
        s["name"].upper(): Server(
            s["name"],
            s["fqdn"],
            int(s["addr"]),
            s["routing_group"],
            tuple(_virtual_server(s["name"], int(s["addr"]), vs) for vs in s.get("virtual_servers") or ()),
            s.get("duplicate_detection", "message_id"),
        )
        for s in org["servers"]
    }
    mx: dict[str, list[tuple[int, str]]] = {}
    a_records: dict[str, int] = {}
    for record in raw.get("dns", {}).get("records") or ():
        if record.get("fault"):
            continue  # a slow or failing zone is a fault scenario, outside what the oracle predicts
        if record["type"] == "MX":
            preference, exchanger = str(record["value"]).split()
            mx.setdefault(record["name"].lower(), []).append((int(preference), exchanger.rstrip(".")))
        elif record["type"] == "A" and "addr" in record:
            a_records[record["name"].lower()] = int(record["addr"])
    directory = (lab_file.parent / raw["global_catalog"]["directory"]).resolve()
    return World(
        name=raw["name"],
        base=ipaddress.IPv4Address(raw["network"]["base"]),
        policies=policies,
        servers=servers,
        connectors=[
            _far_side(c, servers) for raw_c in org.get("connectors") or () for c in _connectors(raw_c)
        ],
        internet=[Host(h["name"], h["fqdn"], int(h["addr"])) for h in raw.get("internet") or ()],
        clients=[Host(h["name"], h["fqdn"], int(h["addr"])) for h in raw.get("clients") or ()],
        mx=mx,
        a_records=a_records,
        entries=read_ldif(directory),
    )
