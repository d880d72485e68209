"""The Exchange organization: routing groups, servers, virtual servers, connectors, recipient policies.

This is the configuration partition of the directory as the transport reads it. `topology_reader`
builds it from the `organization` section of a lab file.
"""

from __future__ import annotations

import datetime
import fnmatch
import ipaddress
from dataclasses import dataclass, field
from typing import Literal


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
    # Access → Authentication → "Resolve anonymous e-mail": an anonymous session's sender is resolved in
    # the directory (off by default: connector restrictions then treat it as nobody's).
    resolve_anonymous: bool = False


# What makes two deliveries to one mailbox the same, so that the store keeps one: the Internet
# Message-ID (Exchange's duplicate detection), or nothing, when every copy is kept (docs/decisions.md).
DuplicateDetection = Literal["message_id", "none"]


@dataclass(frozen=True)
class Server:
    name: str
    fqdn: str
    address: str
    routing_group: str
    stores: tuple[str, ...]
    virtual_servers: tuple[VirtualServer, ...]
    duplicate_detection: DuplicateDetection = "message_id"

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
    as `*.x.com`. `%` stands for exactly one character, where it is. An exact match beats any wildcard;
    a pattern with `%` but no `*` names domains of one length only, so it beats every `*` pattern;
    within each kind the one with more literal characters wins; `*` alone matches everything with the
    lowest score. A plain domain covers only itself, not its subdomains (docs/decisions.md).
    """
    pattern = pattern.lower()
    domain = domain.lower().rstrip(".")
    if "*" not in pattern:
        if not _same_shape(pattern, domain):
            return None
        literals = len(pattern) - pattern.count("%")
        return 10_000 + len(pattern) if literals == len(pattern) else 5_000 + literals
    suffix = pattern[pattern.rfind("*") + 1 :]
    if len(domain) <= len(suffix) or not _same_shape(suffix, domain[len(domain) - len(suffix) :]):
        return None
    return len(suffix) - suffix.count("%")


def _wild(pattern: str) -> bool:
    return "*" in pattern or "%" in pattern


def _same_shape(pattern: str, text: str) -> bool:
    """`text` is `pattern` with each `%` standing for one character. Hand-written: fnmatch would also
    read `[` and `?`, which are literal in an address space."""
    return len(pattern) == len(text) and all(p in ("%", t) for p, t in zip(pattern, text, strict=True))


@dataclass(frozen=True)
class Restrictions:
    """A connector's Delivery Restrictions (senders and groups, by SMTP address) and Content
    Restrictions; `connector_restrictions` applies them."""

    max_size_kb: int | None = None
    accept_from: tuple[str, ...] = ()
    reject_from: tuple[str, ...] = ()
    priorities: tuple[str, ...] = ("high", "normal", "low")
    message_types: tuple[str, ...] = ("system", "non_system")


@dataclass(frozen=True)
class Schedule:
    """A connector's Delivery Options schedule: Always (the default), Never (only Queue Viewer's Force
    Connection sends), or selected times: daily windows in minutes after midnight UTC, [start, end)."""

    always: bool = True
    windows: tuple[tuple[int, int], ...] = ()

    def wait(self, now: datetime.datetime) -> float | None:
        """Seconds until the schedule opens: 0 while it is open, None when it never opens by itself."""
        if self.always:
            return 0.0
        minute = now.hour * 60 + now.minute + now.second / 60 + now.microsecond / 60_000_000
        waits: list[float] = []
        for start, end in self.windows:
            if _inside(minute, start, end):
                return 0.0
            waits.append(((start - minute) % 1440) * 60)
        return min(waits) if waits else None


def _inside(minute: float, start: int, end: int) -> bool:
    # A window whose end is before its start runs over midnight.
    return start <= minute < end if start < end else minute >= start or minute < end


NEVER = Schedule(always=False)


@dataclass(frozen=True)
class Connector:
    kind: Literal["routing_group", "smtp", "gateway", "x400"]
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
    send_helo: bool = False  # Advanced → "Send HELO instead of EHLO" (route_action)
    remote_triggered: bool = False  # Delivery Options → "Queue mail for remote triggered delivery"
    schedule: Schedule = Schedule()


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
                if entry.authoritative and not _wild(entry.domain):
                    return entry.domain
        return self.servers[0].fqdn

    @property
    def literal_policy_domains(self) -> list[str]:
        return sorted({d.domain for p in self.policies for d in p.domains if not _wild(d.domain)})

    def relay_connector(self, domain: str) -> Connector | None:
        """An SMTP connector that allows messages to be relayed to `domain`, if any."""
        for connector in self.connectors:
            if connector.allow_relay and any(
                space.type == "SMTP" and space.specificity(domain) is not None
                for space in connector.address_spaces
            ):
                return connector
        return None
