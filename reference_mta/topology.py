"""The Exchange organization: routing groups, servers, virtual servers, connectors, recipient policies.

This is the configuration partition of the directory as the transport reads it. It is built from the
`organization` section of a lab file (already schema-checked by the loader) and checked here for the
cross-references a schema cannot express: a bridgehead that names no server, a connector into a
routing group that does not exist. Errors carry the location of the offending value so the lab loader
can point at the line.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Location = tuple[str | int, ...]


class TopologyError(ValueError):
    def __init__(self, location: Location, message: str) -> None:
        super().__init__(message)
        self.location = location
        self.message = message


@dataclass(frozen=True)
class PolicyDomain:
    domain: str
    authoritative: bool


@dataclass(frozen=True)
class RecipientPolicy:
    name: str
    priority: int
    domains: tuple[PolicyDomain, ...]


@dataclass(frozen=True)
class RelaySettings:
    """Access → Relay restrictions of a virtual server. Default: only the (empty) list, plus
    "allow all computers which successfully authenticate to relay" (see docs/decisions.md)."""

    open: bool = False
    only_list: tuple[ipaddress.IPv4Network, ...] = ()
    all_except: tuple[ipaddress.IPv4Network, ...] | None = None
    allow_authenticated: bool = True

    def permits_address(self, client_ip: str) -> bool:
        address = ipaddress.IPv4Address(client_ip)
        if self.open:
            return True
        if self.all_except is not None:
            return not any(address in network for network in self.all_except)
        return any(address in network for network in self.only_list)


@dataclass(frozen=True)
class ClientList:
    """Access → Connection control: "only the list below" or "all except the list below". The default,
    all except an empty list, lets every client connect."""

    only_list: tuple[ipaddress.IPv4Network, ...] | None = None
    all_except: tuple[ipaddress.IPv4Network, ...] = ()

    def permits(self, client_ip: str) -> bool:
        address = ipaddress.IPv4Address(client_ip)
        if self.only_list is not None:
            return any(address in network for network in self.only_list)
        return not any(address in network for network in self.all_except)


@dataclass(frozen=True)
class RecipientFiltering:
    """Recipient filtering as enabled on a virtual server: an explicit list (``*`` is a wildcard) and
    "filter recipients who are not in the directory"."""

    directory: bool = False
    addresses: tuple[str, ...] = ()

    def listed(self, address: str) -> bool:
        return any(fnmatch.fnmatchcase(address.lower(), pattern.lower()) for pattern in self.addresses)


VrfyMode = Literal["cannot_verify", "directory", "disabled"]
ExpnMode = Literal["disabled", "directory"]


@dataclass(frozen=True)
class VirtualServer:
    name: str
    server: str
    instance: int
    address: str
    port: int
    relay: RelaySettings
    smart_host: str | None = None
    max_message_kb: int = 4096
    max_recipients: int = 64000
    max_hop_count: int = 15
    tls: bool = False  # a certificate is bound: STARTTLS is offered
    auth_requires_tls: bool = False  # Basic authentication "Requires TLS encryption"
    fqdn: str | None = None  # Delivery → Advanced → FQDN; the server's when None
    connection: ClientList = ClientList()
    anonymous: bool = True
    basic_auth: bool = True
    recipient_filtering: RecipientFiltering | None = None
    max_messages_per_connection: int | None = None
    max_errors: int = 20
    connection_timeout: float = 600.0
    chunking: bool = True
    smtputf8: bool = False
    vrfy: VrfyMode = "cannot_verify"
    expn: ExpnMode = "disabled"
    pipelining_sync: Literal["enforce", "lenient"] = "enforce"
    logging: Literal["none", "w3c"] = "none"  # General → Enable logging, W3C Extended Log File Format


@dataclass(frozen=True)
class Server:
    name: str
    fqdn: str
    address: str
    routing_group: str
    stores: tuple[str, ...]
    virtual_servers: tuple[VirtualServer, ...]

    @property
    def default_virtual_server(self) -> VirtualServer:
        return self.virtual_servers[0]


@dataclass(frozen=True)
class RoutingGroup:
    name: str
    master: str | None


@dataclass(frozen=True)
class AddressSpace:
    type: str
    pattern: str
    cost: int = 1

    def specificity(self, domain: str) -> int | None:
        return domain_match(self.pattern, domain)


def domain_match(pattern: str, domain: str) -> int | None:
    """How closely an SMTP address space (or recipient-policy domain) matches `domain`: None for no
    match, higher is closer. The one place this rule lives.

    E2K3 reads an address space only up to the first wildcard (KB 244986), so `abc.*.x.com` behaves
    as `*.x.com`. An exact match beats any wildcard; among wildcards, the one with more literal
    characters wins; `*` alone matches everything with the lowest score. A plain domain covers only
    itself, not its subdomains (docs/decisions.md).
    """
    pattern = pattern.lower()
    domain = domain.lower().rstrip(".")
    if "*" not in pattern and "%" not in pattern:
        return 10_000 + len(pattern) if domain == pattern else None
    suffix = pattern[pattern.rfind("*") + 1 :]
    return len(suffix) if domain.endswith(suffix) and len(domain) > len(suffix) else None


@dataclass(frozen=True)
class Restrictions:
    max_size_kb: int | None = None
    accept_from: tuple[str, ...] = ()
    reject_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class Connector:
    kind: Literal["routing_group", "smtp", "gateway"]
    name: str
    routing_group: str
    cost: int = 1
    connects_to: str | None = None
    local_bridgeheads: tuple[str, ...] = ()
    remote_bridgeheads: tuple[str, ...] = ()
    address_spaces: tuple[AddressSpace, ...] = ()
    uses_dns: bool = False
    smart_hosts: tuple[str, ...] = ()
    allow_relay: bool = False
    restrictions: Restrictions = field(default_factory=Restrictions)
    foreign_system: str | None = None
    smtp_domain: str | None = None
    up: bool = True
    scope: str = "organization"  # or "routing_group": usable only by servers of its own routing group


@dataclass(frozen=True)
class Organization:
    name: str
    admin_group: str
    policies: tuple[RecipientPolicy, ...]
    routing_groups: tuple[RoutingGroup, ...]
    servers: tuple[Server, ...]
    connectors: tuple[Connector, ...]

    def server(self, name: str) -> Server:
        for server in self.servers:
            if server.name.lower() == name.lower():
                return server
        raise KeyError(name)

    def server_by_fqdn(self, fqdn: str) -> Server | None:
        return next((s for s in self.servers if s.fqdn.lower() == fqdn.lower().rstrip(".")), None)

    def server_by_address(self, address: str) -> Server | None:
        for server in self.servers:
            if address == server.address or any(vs.address == address for vs in server.virtual_servers):
                return server
        return None

    def is_own_address(self, address: str) -> bool:
        """Whether `address` is one of the organization's servers or virtual servers."""
        return self.server_by_address(address) is not None

    def policy_domain(self, domain: str) -> PolicyDomain | None:
        """The recipient-policy SMTP address space that covers `domain` (an inbound domain), if any."""
        best: tuple[int, PolicyDomain] | None = None
        for policy in self.policies:
            for entry in policy.domains:
                score = domain_match(entry.domain, domain)
                if score is not None and (best is None or score > best[0]):
                    best = (score, entry)
        return best[1] if best else None

    @property
    def primary_domain(self) -> str:
        """The default (lowest-priority) policy's first authoritative domain: postmaster and IMCEA
        addresses live there."""
        for policy in sorted(self.policies, key=lambda p: p.priority):
            for entry in policy.domains:
                if entry.authoritative and "*" not in entry.domain:
                    return entry.domain
        return self.servers[0].fqdn

    @property
    def literal_policy_domains(self) -> list[str]:
        return sorted({d.domain for p in self.policies for d in p.domains if "*" not in d.domain})

    def relay_connector(self, domain: str) -> Connector | None:
        """An SMTP connector that allows messages to be relayed to `domain`, if any."""
        for connector in self.connectors:
            if connector.allow_relay and any(
                space.type == "SMTP" and space.specificity(domain) is not None
                for space in connector.address_spaces
            ):
                return connector
        return None


AddressOf = Callable[[int], str]


def build(
    config: Mapping[str, Any], address_of: AddressOf, host_address: Callable[[str], str], port_offset: int
) -> Organization:
    """Build the organization from a schema-valid `organization` mapping.

    `address_of(n)` turns a host number into an address; `host_address(name)` gives the address of
    any named lab host (for relay lists and bracketed smart hosts).
    """
    root: Location = ("organization",)
    groups = tuple(RoutingGroup(name=g["name"], master=g.get("master")) for g in config["routing_groups"])
    group_names = {g.name.lower() for g in groups}
    _unique([g.name for g in groups], (*root, "routing_groups"), "routing group")

    servers: list[Server] = []
    for index, raw in enumerate(config["servers"]):
        where = (*root, "servers", index)
        if raw["routing_group"].lower() not in group_names:
            raise TopologyError((*where, "routing_group"), f"no routing group named {raw['routing_group']!r}")
        address = address_of(raw["addr"])
        virtual_servers = tuple(
            _virtual_server(
                vs,
                raw["name"],
                number + 1,
                address,
                (*where, "virtual_servers", number),
                address_of,
                host_address,
                port_offset,
            )
            for number, vs in enumerate(raw["virtual_servers"])
        )
        servers.append(
            Server(
                name=raw["name"],
                fqdn=raw["fqdn"].lower(),
                address=address,
                routing_group=raw["routing_group"],
                stores=tuple(raw.get("stores") or [f"Mailbox Store ({raw['name']})"]),
                virtual_servers=virtual_servers,
            )
        )
    _unique([s.name for s in servers], (*root, "servers"), "server")
    _unique([s.fqdn for s in servers], (*root, "servers"), "server FQDN")
    # Lab files may spell a server in any case; the organization keeps the server's own spelling.
    server_names = {s.name.lower(): s.name for s in servers}
    for index, group in enumerate(groups):
        if group.master and group.master.lower() not in server_names:
            raise TopologyError(
                (*root, "routing_groups", index, "master"), f"no server named {group.master!r}"
            )

    connectors: list[Connector] = []
    for index, raw in enumerate(config.get("connectors") or []):
        connectors.extend(
            _connector(raw, (*root, "connectors", index), group_names, server_names, host_address)
        )
    _unique(
        [c.name for c in connectors if not c.name.endswith(" (reciprocal)")],
        (*root, "connectors"),
        "connector",
    )

    policies = tuple(
        RecipientPolicy(
            name=p["name"],
            priority=p.get("priority", 0),
            domains=tuple(
                PolicyDomain(a["domain"].lower(), a.get("authoritative", True)) for a in p["addresses"]
            ),
        )
        for p in config["recipient_policies"]
    )
    for index, server in enumerate(servers):
        if any(policy.domains and d.domain == server.fqdn for policy in policies for d in policy.domains):
            # KB: a recipient policy must never contain a server FQDN (it breaks intra-RG routing).
            raise TopologyError(
                (*root, "servers", index, "fqdn"), "server FQDN is also a recipient-policy domain"
            )
    return Organization(
        name=config["name"],
        admin_group=config.get("admin_group", "First Administrative Group"),
        policies=policies,
        routing_groups=groups,
        servers=tuple(servers),
        connectors=tuple(connectors),
    )


def _virtual_server(
    raw: Mapping[str, Any],
    server: str,
    instance: int,
    server_address: str,
    where: Location,
    address_of: AddressOf,
    host_address: Callable[[str], str],
    port_offset: int,
) -> VirtualServer:
    relay_raw = raw.get("relay") or {}
    connection_raw = raw.get("connection") or {}

    def networks(section: str, settings: Mapping[str, Any], key: str) -> tuple[ipaddress.IPv4Network, ...]:
        result = []
        for number, item in enumerate(settings.get(key) or []):
            try:
                try:
                    result.append(ipaddress.IPv4Network(item, strict=False))
                except ValueError:
                    # A lab host, or "host/prefix" for the subnet around it: lab addresses move with
                    # the lab's base, so a literal subnet would not follow them.
                    host, slash, prefix = item.partition("/")
                    result.append(ipaddress.IPv4Network(f"{host_address(host)}{slash}{prefix}", strict=False))
            except (KeyError, ValueError) as exc:
                raise TopologyError(
                    (*where, section, key, number),
                    f"{item!r} is neither a lab host (optionally host/prefix) nor an IPv4 network",
                ) from exc
        return tuple(result)

    relay = RelaySettings(
        open=relay_raw.get("open", False),
        only_list=networks("relay", relay_raw, "only_list"),
        all_except=networks("relay", relay_raw, "all_except") if "all_except" in relay_raw else None,
        allow_authenticated=relay_raw.get("allow_authenticated", True),
    )
    only = networks("connection", connection_raw, "only_list") if "only_list" in connection_raw else None
    connection = ClientList(only_list=only, all_except=networks("connection", connection_raw, "all_except"))
    if raw.get("auth_requires_tls") and not raw.get("tls"):
        raise TopologyError(
            (*where, "auth_requires_tls"),
            "Basic authentication can only require TLS on a virtual server with tls: true",
        )
    if raw.get("anonymous") is False and raw.get("basic_auth") is False:
        raise TopologyError(
            (*where, "anonymous"),
            "a virtual server that allows neither anonymous access nor Basic authentication accepts no mail",
        )
    filtering_raw = raw.get("recipient_filtering")
    filtering = (
        RecipientFiltering(
            directory=filtering_raw.get("directory", False),
            addresses=tuple(filtering_raw.get("addresses") or ()),
        )
        if filtering_raw is not None
        else None
    )
    smart_host = raw.get("smart_host")
    if smart_host:
        # Several smart hosts are separated by ";" (Exchange's syntax); each may name a lab host.
        smart_host = ";".join(
            _smart_host(part.strip(), (*where, "smart_host"), host_address)
            for part in smart_host.replace(",", ";").split(";")
            if part.strip()
        )
    return VirtualServer(
        name=raw["name"],
        server=server,
        instance=instance,
        address=address_of(raw["addr"]) if "addr" in raw else server_address,
        port=raw.get("port", 25) + port_offset,
        relay=relay,
        smart_host=smart_host,
        max_message_kb=raw.get("max_message_kb", 4096),
        max_recipients=raw.get("max_recipients", 64000),
        max_hop_count=raw.get("max_hop_count", 15),
        tls=raw.get("tls", False),
        auth_requires_tls=raw.get("auth_requires_tls", False),
        fqdn=raw.get("fqdn"),
        connection=connection,
        anonymous=raw.get("anonymous", True),
        basic_auth=raw.get("basic_auth", True),
        recipient_filtering=filtering,
        max_messages_per_connection=raw.get("max_messages_per_connection"),
        max_errors=raw.get("max_errors", 20),
        connection_timeout=float(raw.get("connection_timeout", 600)),
        chunking=raw.get("chunking", True),
        smtputf8=raw.get("smtputf8", False),
        vrfy=raw.get("vrfy", "cannot_verify"),
        expn=raw.get("expn", "disabled"),
        pipelining_sync=raw.get("pipelining_sync", "enforce"),
        logging=raw.get("logging", "none"),
    )


def _smart_host(text: str, where: Location, host_address: Callable[[str], str]) -> str:
    """Exchange syntax: an FQDN, or an address in brackets. In a lab the bracketed form names a lab
    host, because the lab's addresses move with its base."""
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1]
        try:
            return f"[{ipaddress.IPv4Address(inner)}]"
        except ValueError:
            pass
        try:
            return f"[{host_address(inner)}]"
        except KeyError as exc:
            raise TopologyError(where, f"{inner!r} is not a lab host") from exc
    return text.lower()


def _connector(
    raw: Mapping[str, Any],
    where: Location,
    groups: set[str],
    servers: dict[str, str],
    host_address: Callable[[str], str],
) -> list[Connector]:
    def check_group(key: str) -> str:
        value: str = raw[key]
        if value.lower() not in groups:
            raise TopologyError((*where, key), f"no routing group named {value!r}")
        return value

    def check_servers(key: str) -> tuple[str, ...]:
        names = raw.get(key) or []
        for number, name in enumerate(names):
            if name.lower() not in servers:
                raise TopologyError((*where, key, number), f"no server named {name!r}")
        return tuple(servers[name.lower()] for name in names)

    group = check_group("routing_group")
    up = raw.get("state", "up") == "up"
    spaces = tuple(
        AddressSpace(a["type"], a["pattern"], a.get("cost", 1)) for a in raw.get("address_spaces") or []
    )
    if raw["type"] == "routing_group":
        target = check_group("connects_to")
        if target.lower() == group.lower():
            raise TopologyError(
                (*where, "connects_to"), "a routing group connector must join two routing groups"
            )
        forward = Connector(
            kind="routing_group",
            name=raw["name"],
            routing_group=group,
            connects_to=target,
            cost=raw.get("cost", 1),
            local_bridgeheads=check_servers("local_bridgeheads"),
            remote_bridgeheads=check_servers("remote_bridgeheads"),
            up=up,
        )
        if not raw.get("reciprocal", True):
            return [forward]
        # ESM offers to create the connector in the other group too; labs get it unless they opt out.
        return [
            forward,
            Connector(
                kind="routing_group",
                name=f"{raw['name']} (reciprocal)",
                routing_group=target,
                connects_to=group,
                cost=forward.cost,
                local_bridgeheads=forward.remote_bridgeheads,
                remote_bridgeheads=forward.local_bridgeheads,
                up=up,
            ),
        ]
    if raw["type"] == "smtp":
        restrictions_raw = raw.get("restrictions") or {}
        delivery = raw["delivery"]
        return [
            Connector(
                kind="smtp",
                name=raw["name"],
                routing_group=group,
                local_bridgeheads=check_servers("bridgeheads"),
                address_spaces=spaces,
                uses_dns=bool(delivery.get("dns")),
                smart_hosts=tuple(
                    _smart_host(h, (*where, "delivery", "smart_hosts", n), host_address)
                    for n, h in enumerate(delivery.get("smart_hosts") or [])
                ),
                allow_relay=raw.get("allow_relay", False),
                scope=raw.get("scope", "organization"),
                restrictions=Restrictions(
                    max_size_kb=restrictions_raw.get("max_size_kb"),
                    accept_from=tuple(restrictions_raw.get("accept_from") or []),
                    reject_from=tuple(restrictions_raw.get("reject_from") or []),
                ),
                up=up,
            )
        ]
    server = raw["server"]
    if server.lower() not in servers:
        raise TopologyError((*where, "server"), f"no server named {server!r}")
    server = servers[server.lower()]
    return [
        Connector(
            kind="gateway",
            name=raw["name"],
            routing_group=group,
            local_bridgeheads=(server,),
            address_spaces=spaces,
            foreign_system=raw["foreign_system"],
            smtp_domain=raw.get("smtp_domain"),
            up=up,
        )
    ]


def _unique(names: Sequence[str], where: Location, what: str) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name.lower() in seen:
            raise TopologyError((*where, index), f"duplicate {what} {name!r}")
        seen.add(name.lower())
