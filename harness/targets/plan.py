"""The server under test, translated once from the lab file and the directory into what every real MTA's
configuration needs: which domains it accepts, which mailboxes it holds, where the rest goes, which
clients may relay or connect. Each adapter (postfix, exim, opensmtpd) only writes this plan in its own
syntax, so a rule such as "the organization's servers may relay" or "next hops come from the reference
routing engine" lives here and nowhere else.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from harness.lab.config import LabConfig
from harness.lab.recipients import Contact, Mailbox, RecipientTable
from reference_mta.linkstate import LinkState
from reference_mta.mailmsg import MailMsg, ResolvedSender, encapsulate
from reference_mta.queue_contract import Hop, HopKind
from reference_mta.routing import RoutingEngine
from reference_mta.topology import Organization, Server, VirtualServer

EVERYONE = ipaddress.IPv4Network("0.0.0.0/0")


@dataclass(frozen=True)
class NextHop:
    """A host mail is handed to without an MX look-up (Postfix's `[host]:port`)."""

    host: str
    port: int = 25


@dataclass(frozen=True)
class Route:
    """Mail for `domain` goes to `hop`, or by DNS (MX) when `hop` is None. `domain` is a domain, a
    domain with a leading dot for its subdomains (from a `*.example` address space), or `*`."""

    domain: str
    hop: NextHop | None

    @property
    def subdomains(self) -> bool:
        return self.domain.startswith(".")


@dataclass(frozen=True)
class ClientRule:
    network: ipaddress.IPv4Network
    allow: bool


@dataclass(frozen=True)
class RecipientFilter:
    """A virtual server's recipient filtering as a real MTA checks it at RCPT (access_policy's
    `filtering_applies`): only for anonymous clients that are not the organization's servers, and only
    for recipients of the authoritative `domains`. There a recipient is refused when it matches one of
    `patterns` (the explicit list, `*` and `?` wildcards, case-insensitive), or, when `known` is not
    None ("filter recipients not in the directory"), when it is not one of `known`."""

    domains: tuple[str, ...]
    patterns: tuple[str, ...]
    known: tuple[str, ...] | None


@dataclass(frozen=True)
class Listener:
    """One virtual server. Both client lists are judged first match wins: relaying is refused when no
    rule allows it, a connection is accepted when no rule refuses it."""

    vs: VirtualServer
    relay_clients: tuple[ClientRule, ...]
    connection_clients: tuple[ClientRule, ...]
    recipient_filter: RecipientFilter | None = None

    @property
    def connection_open(self) -> bool:
        return not self.connection_clients


@dataclass
class ServerPlan:
    server: Server
    authoritative: list[str]  # domains whose unknown recipients are refused at RCPT
    relay_domains: list[str]  # shared namespaces and "allow relaying" connector domains (".x": subdomains)
    mailboxes: list[Mailbox]  # held on this server
    # primary address of a mailbox on another server, or a contact's IMCEA address → its way there
    mailbox_routes: dict[str, NextHop]
    aliases: dict[str, list[str]] = field(default_factory=dict)  # secondary addresses, groups, contacts
    routes: list[Route] = field(default_factory=list)  # SMTP address spaces, most specific first
    # Where a connector's delivery restrictions send some senders' mail another way than routes say:
    # each with the senders it is for, to be tried before the general route for the same domain.
    sender_routes: list[tuple[Route, tuple[str, ...]]] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)
    all_mailboxes: list[Mailbox] = field(default_factory=list)  # of every server
    organization_servers: tuple[ipaddress.IPv4Network, ...] = ()  # the other servers' addresses (/32)

    @property
    def default_route(self) -> Route | None:
        return next((route for route in self.routes if route.domain == "*"), None)

    def accepts(self, address: str) -> bool:
        """Whether `address` exists here: a mailbox (of any server) or an alias."""
        address = address.lower()
        return address in self.aliases or any(address in m.addresses for m in self.all_mailboxes)


def plan(config: LabConfig, server: str, table: RecipientTable) -> ServerPlan:
    organization = config.organization
    me = organization.server(server)
    # One fixed route per address space: a configuration cannot take turns between tied connectors.
    engine = RoutingEngine(organization, me, LinkState(organization), spread=False)
    authoritative = [d.domain for p in organization.policies for d in p.domains if d.authoritative]
    shared = [d.domain for p in organization.policies for d in p.domains if not d.authoritative]
    result = ServerPlan(
        server=me,
        authoritative=authoritative,
        relay_domains=sorted({*shared, *_relay_connector_domains(organization)}),
        mailboxes=table.mailboxes_on(server),
        mailbox_routes={},
        all_mailboxes=list(table.mailboxes),
    )
    for mailbox in table.mailboxes:
        for address in mailbox.addresses[1:]:
            result.aliases[address] = [mailbox.primary]
        if mailbox.forward_to:
            # Forwarding (altRecipient) as the categorizer does it: instead of the mailbox, or to both.
            kept = [mailbox.primary] if mailbox.keep_copy else []
            for address in mailbox.addresses:
                result.aliases[address] = [*kept, *mailbox.forward_to]
        if mailbox.server.lower() == server.lower():
            continue
        # Toward the home server as routing does it: directly in this routing group, else through the
        # routing group connectors' bridgeheads.
        home = organization.server(mailbox.server)
        hop = _next_hop(organization, engine.route_to_server(home.fqdn))
        if hop is not None:
            result.mailbox_routes[mailbox.primary] = hop
    for group in table.groups:
        for address in group.addresses:
            result.aliases[address] = list(group.members)
    for contact in table.contacts:
        target = _contact_target(organization, engine, contact, result.mailbox_routes)
        for address in contact.addresses:
            result.aliases[address] = [target]
    result.routes = _connector_routes(organization, engine)
    result.sender_routes = _sender_routes(organization, engine, result.routes, table)
    result.organization_servers = tuple(
        ipaddress.IPv4Network(f"{address}/32") for address in _organization_addresses(me, organization)
    )
    result.listeners = [
        Listener(
            vs, _relay_clients(me, vs, organization), _connection_clients(vs), _recipient_filter(vs, result)
        )
        for vs in me.virtual_servers
    ]
    return result


def _contact_target(
    organization: Organization, engine: RoutingEngine, contact: Contact, routes: dict[str, NextHop]
) -> str:
    """Where mail for a contact goes. A foreign address (a Notes name) travels over SMTP the way
    Exchange carries it, encapsulated in an IMCEA address of the organization's domain, toward the
    gateway connector for its address space (added to `routes`); the reference servers past the next
    hop take it to the gateway. A foreign address no connector serves is left as it is."""
    if contact.target_type == "SMTP":
        return contact.target
    probe = MailMsg.new("", ["postmaster@mailflow-probe.invalid"])
    hop = _next_hop(organization, engine.route_to_address_space(probe, contact.target_type, contact.target))
    if hop is None:
        return contact.target
    address = encapsulate(contact.target_type, contact.target, organization.primary_domain)
    routes[address] = hop
    return address


def _organization_addresses(me: Server, organization: Organization) -> list[str]:
    """The addresses of the organization's other servers and of their virtual servers."""
    return sorted(
        {
            address
            for server in organization.servers
            if server.name != me.name
            for address in (server.address, *(v.address for v in server.virtual_servers))
        }
    )


def _recipient_filter(vs: VirtualServer, result: ServerPlan) -> RecipientFilter | None:
    filtering = vs.recipient_filtering
    if filtering is None:
        return None
    domains = tuple(result.authoritative)
    known: tuple[str, ...] | None = None
    if filtering.directory:
        # What the directory knows at those domains: every mailbox's addresses, groups and contacts.
        everything = {a for m in result.all_mailboxes for a in m.addresses} | set(result.aliases)
        known = tuple(sorted(a for a in everything if a.rpartition("@")[2] in domains))
    return RecipientFilter(domains, tuple(p.lower() for p in filtering.addresses), known)


def _relay_connector_domains(organization: Organization) -> list[str]:
    return [
        space.pattern.replace("*.", ".")
        for connector in organization.connectors
        if connector.allow_relay
        for space in connector.address_spaces
        if space.type == "SMTP" and space.pattern != "*"
    ]


def _relay_clients(me: Server, vs: VirtualServer, organization: Organization) -> tuple[ClientRule, ...]:
    """A virtual server's relay list; the organization's servers come first, as Exchange trusts them
    (access_policy's "organization server" rule)."""
    relay = vs.relay
    if relay.open:
        return (ClientRule(EVERYONE, True),)
    servers = _organization_addresses(me, organization)
    rules = [ClientRule(ipaddress.IPv4Network(f"{address}/32"), True) for address in servers]
    if relay.all_except is not None:
        rules += [ClientRule(network, False) for network in relay.all_except]
        rules.append(ClientRule(EVERYONE, True))
    else:
        rules += [ClientRule(network, True) for network in relay.only_list]
    return tuple(rules)


def _connection_clients(vs: VirtualServer) -> tuple[ClientRule, ...]:
    control = vs.connection
    if control.only_list is not None:
        return (*(ClientRule(network, True) for network in control.only_list), ClientRule(EVERYONE, False))
    return tuple(ClientRule(network, False) for network in control.all_except)


def _connector_routes(organization: Organization, engine: RoutingEngine) -> list[Route]:
    """Where mail for each SMTP address space goes from this server, as the reference MTA's routing
    engine decides it (least cost, local connector on ties, smart hosts). A domain this server
    reaches by DNS is written out too (hop None), so that a wider entry does not catch it; `*` comes
    last, and only when it is not DNS."""
    probe = MailMsg.new("", ["postmaster@mailflow-probe.invalid"])
    patterns = _smtp_patterns(organization)
    routes: list[Route] = []
    for pattern in patterns:
        hop = _next_hop(organization, engine.route_to_address_space(probe, "SMTP", _probe_domain(pattern)))
        if pattern == "*" and hop is None:
            continue
        routes.append(Route(pattern.replace("*.", ".") if pattern != "*" else "*", hop))
    return routes


def _sender_routes(
    organization: Organization, engine: RoutingEngine, routes: list[Route], table: RecipientTable
) -> list[tuple[Route, tuple[str, ...]]]:
    """The routes that differ for the senders named in connectors' delivery restrictions (accept only
    from, reject from), as the routing engine decides them for each such sender; a listed group stands
    for its members, nested groups included. A real MTA routes by the MAIL FROM text: it cannot tell a
    resolved sender from a spoofed one, which the traces that show it leave to the reference MTA."""
    listed = {
        address.lower()
        for connector in organization.connectors
        for address in (*connector.restrictions.accept_from, *connector.restrictions.reject_from)
    }
    senders = sorted(_expand_groups(listed, table))
    general = {route.domain: route.hop for route in routes}
    patterns = _smtp_patterns(organization)
    found: list[tuple[Route, tuple[str, ...]]] = []
    for pattern in patterns:
        domain = pattern.replace("*.", ".") if pattern != "*" else "*"
        by_hop: dict[NextHop | None, list[str]] = {}
        for sender in senders:
            probe = MailMsg.new(sender, ["postmaster@mailflow-probe.invalid"])
            # As the categorizer resolves the sender: its address and those of the groups it is in.
            probe.resolved_sender = ResolvedSender(sender, frozenset({sender, *_groups_of(sender, table)}))
            route = engine.route_to_address_space(probe, "SMTP", _probe_domain(pattern))
            hop = _next_hop(organization, route)
            if hop != general.get(domain):
                by_hop.setdefault(hop, []).append(sender)
        found += [(Route(domain, hop), tuple(names)) for hop, names in by_hop.items()]
    return found


def _expand_groups(addresses: set[str], table: RecipientTable) -> set[str]:
    """Listed addresses with every group among them replaced by its members, through nested groups."""
    by_address = {address: group for group in table.groups for address in group.addresses}
    result: set[str] = set()
    pending, seen = list(addresses), set()
    while pending:
        address = pending.pop()
        if address in seen:
            continue
        seen.add(address)
        if address in by_address:
            pending.extend(by_address[address].members)
        else:
            result.add(address)
    return result


def _groups_of(sender: str, table: RecipientTable) -> set[str]:
    """The addresses of every group `sender` is a member of, nested groups included."""
    found: set[str] = set()
    members = {sender}
    while True:
        more = {
            address
            for group in table.groups
            if members & set(group.members) and not set(group.addresses) <= found
            for address in group.addresses
        }
        if not more - found:
            return found
        found |= more
        members |= {group.addresses[0] for group in table.groups if set(group.addresses) & found}


def _smtp_patterns(organization: Organization) -> list[str]:
    """The SMTP address spaces of the organization's connectors, most specific first, `*` last."""
    patterns = {
        space.pattern
        for connector in organization.connectors
        if connector.kind == "smtp"
        for space in connector.address_spaces
        if space.type == "SMTP"
    }
    return sorted(patterns, key=lambda p: (p == "*", -len(p), p))


def _probe_domain(pattern: str) -> str:
    """A domain the address space covers, to ask the routing engine about."""
    return pattern.replace("*", "mailflow-probe") if pattern != "*" else "mailflow-probe.invalid"


def _next_hop(organization: Organization, hop: Hop) -> NextHop | None:
    if hop.kind == HopKind.SMART_HOST and hop.targets:
        host, _, port = hop.targets[0].strip("[]").partition("]:")
        return NextHop(host, int(port) if port else 25)
    if hop.kind == HopKind.SERVER and hop.targets:
        server = organization.server_by_fqdn(hop.targets[0])
        if server is not None:
            return NextHop(server.address, server.default_virtual_server.port)
    return None  # DNS (the MTA's own MX look-up), or nothing it could do better
