"""What becomes of each accepted recipient: the categorizer's rules of the seeds, then routing.

- IN-5 / C-CAT: the categorizer looks the recipient up by proxy address in the global catalog and finds
  the home server from msExchHomeServerName (from homeMDB's server when it is absent); a store that is
  not on that server is returned with 5.2.1 by its store driver (docs/decisions.md);
- IN-6a: a mailbox on this server is delivered here; IN-6b / IN-7a: one elsewhere is routed there;
- OUT-3: an address not in the directory, or in a domain no recipient policy lists, is remote; in an
  authoritative domain an unknown address is returned with 5.1.1 (DSN-1), in a shared namespace it goes
  on by MX or connector to the system the domain is shared with;
- GW-6: mail-enabled groups are expanded (on their expansion server, if they name one), nested groups
  too, and a mailbox reached twice gets one copy (docs/decisions.md);
- a contact's target address is routed: SMTP by address space, a foreign address to its gateway (IN-7c),
  an address type no connector serves is returned with 5.0.0;
- forwarding (altRecipient) adds the alternate recipient, and keeps the mailbox only with
  deliverAndRedirect; delivery restrictions (authOrig, msExchRequireAuthToSendTo, ...) return 5.7.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from harness.generation.oracle.route import (
    NoConnector,
    Traits,
    Unpredictable,
    next_hop,
    route_remote,
    server_path,
)
from harness.generation.oracle.world import Entry, World


@dataclass(frozen=True)
class Delivery:
    kind: str  # mailbox | sink | foreign
    where: str  # the mailbox's address, the sink's name, the foreign address
    server: str  # the mailbox's server, the sink's peer, the gateway's server
    sender: str  # "" for the null sender
    rcpt: str = ""  # envelope recipient at a sink
    scope: str = ""  # the categorizer that produced it (one message copy per categorizer)
    hops: tuple[str, ...] = ()  # the servers it passes from that categorizer on
    connector: str = ""  # the connector that carries it out of the organization (sink, foreign)
    greeting: str = ""  # a sink's: "HELO" when the connector says "Send HELO instead of EHLO"
    # A second copy of the message for a mailbox that already gets one: it travels (and is logged) like
    # any copy, and the mailbox's store drops it (docs/decisions.md).
    repeat: bool = False


@dataclass(frozen=True)
class Failure:
    server: str  # where the NDR is made
    recipient: str
    status: str
    why: str


@dataclass
class Fate:
    """Everything that happens to one message's recipients, with the rules that decided it."""

    deliveries: list[Delivery] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    waiting: list[tuple[str, str]] = field(default_factory=list)  # (server, recipient)
    # (bridgehead, link queue, recipient): held in state Remote until the remote host sends ETRN
    held: list[tuple[str, str, str]] = field(default_factory=list)
    # (bridgehead, recipient, connector): held in a connector's queue, Scheduled, until it is forced
    scheduled: list[tuple[str, str, str]] = field(default_factory=list)
    # (categorizing server, mailbox, its home server, a copy kept) for each forwarding applied
    forwards: list[tuple[str, str, str, bool]] = field(default_factory=list)
    # (categorizing server, address, found): each proxy-address look-up in the global catalog
    lookups: list[tuple[str, str, bool]] = field(default_factory=list)
    # (bridgehead, domain): each MX look-up a bridgehead makes for a domain that has MX records
    mx_lookups: list[tuple[str, str]] = field(default_factory=list)
    spec: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str, *ids: str) -> None:
        self.notes.append(text)
        self.spec.update(ids)


@dataclass(frozen=True)
class Message:
    sender: str  # "" for the null sender
    authenticated: bool
    from_server: bool  # handed over by another server of the organization
    down: frozenset[str]
    # Whether where the message entered vouches for its sender (authenticated, the store, another
    # server of the organization, or "Resolve anonymous e-mail"): only then is it resolved for
    # connector restrictions, on every server it passes.
    vouched: bool = False
    priority: str = "normal"


def traits(world: World, message: Message) -> Traits:
    """The sender's addresses and groups (nested) as a vouched-for resolution finds them, the
    priority, and whether it is a report (the null sender)."""
    found = world.all_by_proxy("smtp", message.sender) if message.sender and message.vouched else []
    addresses: set[str] = set()
    if len(found) == 1:
        sender = found[0]
        for entry in world.entries.values():
            if entry.dn.lower() == sender.dn.lower() or (
                entry.is_a("group") and _member_of(world, sender, entry.dn)
            ):
                addresses |= {p[5:].lower() for p in entry.all("proxyAddresses") if p[:5].lower() == "smtp:"}
    return Traits(frozenset(addresses), message.priority, not message.sender)


def _server_of(dn: str) -> str:
    """The server named in a homeMDB DN: the RDN just before CN=Servers."""
    parts = [p.strip() for p in dn.split(",")]
    index = next(i for i, p in enumerate(parts) if p.lower() == "cn=servers")
    return parts[index - 1].partition("=")[2]


def _member_of(world: World, entry: Entry, group_dn: str, depth: int = 0) -> bool:
    if entry.dn.lower() == group_dn.lower():
        return True
    group = world.entry(group_dn)
    if group is None or depth > 10:
        return False
    return any(_member_of(world, entry, m, depth + 1) for m in group.all("member"))


class Categorizer:
    def __init__(self, world: World, message: Message, fate: Fate) -> None:
        self.world = world
        self.message = message
        self.fate = fate

    def recipient(self, server: str, address: str) -> None:
        """One envelope recipient, categorized on `server`."""
        entry = self.world.by_proxy("smtp", address)
        domain = address.rpartition("@")[2].lower()
        self.fate.lookups.append((server, address, entry is not None))
        if entry is not None:
            self.fate.note(f"{address} is {entry.first('cn')} in the directory", "C-CAT", "IN-5")
            self._entry(server, entry, address, set())
        elif self.world.policies.get(domain):
            self._fail(
                server, address, "5.1.1", f"{address} is not in the directory of authoritative {domain}"
            )
        else:
            why = "a shared namespace" if domain in self.world.policies else "not in a recipient policy"
            self.fate.note(f"{address} is not in the directory and {domain} is {why}: remote", "OUT-3")
            self._remote(server, "SMTP", address, address, "")

    def _fail(self, server: str, recipient: str, status: str, why: str) -> None:
        self.fate.failures.append(Failure(server, recipient, status, why))
        self.fate.note(f"{why}: NDR {status}", "DSN-1")

    def _restricted(self, entry: Entry) -> bool:
        accept = [*entry.all("authOrig"), *entry.all("dLMemSubmitPerms")]
        reject = [*entry.all("unauthOrig"), *entry.all("dLMemRejectPerms")]
        needs_auth = entry.flag("msExchRequireAuthToSendTo")
        if not (accept or reject or needs_auth):
            return False
        if self.message.from_server:
            # Whether a session from another server counts as authenticated, and as which sender, for
            # a recipient's restrictions is not documented.
            raise Unpredictable(f"restrictions of {entry.first('cn')} for a message from another server")
        if needs_auth and not self.message.authenticated:
            return True
        sender = self.world.by_proxy("smtp", self.message.sender) if self.message.sender else None
        if accept and (sender is None or not any(_member_of(self.world, sender, dn) for dn in accept)):
            return True
        return sender is not None and any(_member_of(self.world, sender, dn) for dn in reject)

    def _entry(self, server: str, entry: Entry, address: str, seen: set[str]) -> None:
        if entry.dn.lower() in seen:
            return  # one copy per recipient object and categorizer
        seen.add(entry.dn.lower())
        if self._restricted(entry):
            self._fail(server, address, "5.7.1", f"{entry.first('cn')} does not accept this sender")
            return
        if entry.is_a("group"):
            self._group(server, entry, seen)
        elif entry.is_a("contact"):
            self._contact(server, entry, address)
        elif entry.first("homeMDB"):
            self._mailbox(server, entry, seen)
        else:
            raise Unpredictable(f"{entry.dn} is neither a mailbox, a group nor a contact")

    def _mailbox(self, server: str, entry: Entry, seen: set[str]) -> None:
        mail = entry.first("mail") or ""
        alternate = entry.first("altRecipient")
        # The home server is the one msExchHomeServerName names (the server's legacyExchangeDN); homeMDB
        # names the store, which only that server's store driver can deliver into.
        store_server = self.world.server(_server_of(entry.first("homeMDB") or "")).name
        named = entry.first("msExchHomeServerName")
        home = self.world.server(named.rpartition("=")[2]).name if named else store_server
        if alternate is not None:
            target = self.world.entry(alternate)
            if target is None:
                raise Unpredictable(f"{mail} forwards to {alternate}, which is not in the directory")
            keep = entry.flag("deliverAndRedirect")
            self.fate.forwards.append((server, mail, home, keep))
            self.fate.note(f"{mail} forwards to {target.first('mail')}", "C-CAT")
            self._entry(server, target, target.first("mail") or "", seen)
            if not keep:
                return
        local = home.upper() == server.upper()
        path = None if local else server_path(self.world, self.message.down, server, home)
        if not local and (path is None or path.blocked):
            stop = path.servers[-1] if path else server
            self.fate.note(f"{home} is down or out of reach from {server}: {mail} waits on {stop}", "C-RE")
            self.fate.waiting.append((stop, mail))
            return
        if store_server.upper() != home.upper():
            self._fail(home, mail, "5.2.1", f"{mail}'s store is on {store_server}, not on its home {home}")
            return
        if path is None:
            self.fate.note(f"{mail}'s mailbox is on {home}: local delivery", "IN-6a")
            self._deliver(Delivery("mailbox", mail, home, self.message.sender, scope=server, hops=(home,)))
            return
        crossing = {self.world.server(s).routing_group for s in path.servers}
        self.fate.note(f"{mail}'s mailbox is on {home}: {' > '.join(path.servers)}", "IN-6b", "IN-7a")
        if len(crossing) > 1:
            self.fate.spec.add("C-RE")
        self._deliver(Delivery("mailbox", mail, home, self.message.sender, scope=server, hops=path.servers))

    def _deliver(self, delivery: Delivery) -> None:
        if delivery.kind == "mailbox":
            mailbox = delivery.where.lower()
            same = [d for d in self.fate.deliveries if d.kind == "mailbox" and d.where.lower() == mailbox]
            if any(d.scope == delivery.scope for d in same):
                return  # one copy per mailbox from each categorizer
            if same and self.world.server(delivery.server).duplicate_detection != "none":
                self.fate.note(f"{delivery.where} already gets this message: its store keeps one copy")
                delivery = replace(delivery, repeat=True)
        self.fate.deliveries.append(delivery)

    def _group(self, server: str, entry: Entry, seen: set[str]) -> None:
        name = entry.first("cn")
        expansion = entry.first("msExchExpansionServerName")
        here = server
        if expansion is not None:
            here = self.world.server(expansion.rpartition("=")[2]).name
            if here.upper() != server.upper():
                path = server_path(self.world, self.message.down, server, here)
                if path is None or path.blocked:
                    stop = path.servers[-1] if path else server
                    self.fate.waiting.append((stop, entry.first("mail") or ""))
                    self.fate.note(f"{name} is expanded on {here}, down or out of reach: it waits on {stop}",
                                   "C-RE")  # fmt: skip
                    return
                self.fate.note(f"{name} is expanded on its expansion server {here}", "C-CAT", "IN-6b")
                seen = set()  # another categorizer: copies are counted there
        self.fate.note(f"{name} is expanded to its members", "C-CAT", "GW-6")
        for member in entry.all("member"):
            target = self.world.entry(member)
            if target is None:
                raise Unpredictable(f"member {member} of {name} is not in the directory")
            self._entry(here, target, target.first("mail") or "", seen)

    def _contact(self, server: str, entry: Entry, address: str) -> None:
        kind, _, target = (entry.first("targetAddress") or "").partition(":")
        kind = kind.upper()
        self.fate.note(f"{address} is a contact for {kind}:{target}", "C-CAT")
        if kind == "SMTP":
            self._remote(server, "SMTP", target, target, "")
            return
        try:
            self._remote(server, kind, target, target, "foreign")
        except NoConnector:
            self._fail(server, address, "5.0.0", f"no connector serves {kind} addresses")

    def _remote(self, server: str, kind: str, address: str, rcpt: str, foreign: str) -> None:
        route = route_remote(
            self.world, self.message.down, server, kind, address, traits(self.world, self.message)
        )
        if route is None:
            self.fate.note(f"every connector of the closest address space for {address} is down or out "
                           "of reach: it waits", "OUT-6", "C-RE")  # fmt: skip
            self.fate.waiting.append((server, rcpt))
            return
        connector = route.choice.connector
        hops = " > ".join(route.hops)
        self.fate.note(f"{address} takes {connector.name} ({hops})", "OUT-4", "OUT-6", "C-RE")
        if foreign:
            self.fate.note(f"{connector.name} hands it to the foreign system", "IN-7c")
            self._deliver(
                Delivery(
                    "foreign",
                    address,
                    route.choice.bridgehead,
                    self.message.sender,
                    hops=route.hops,
                    connector=connector.name,
                )
            )
            return
        if connector.remote_triggered:
            # OUT-8b: the route action queues it for remote triggered delivery; no session is opened
            # (no MX look-up either) until the remote host asks with ETRN, which no scenario does.
            self.fate.note(f"{connector.name} queues mail for remote triggered delivery: it waits on "
                           f"{route.choice.bridgehead} in state Remote for ETRN", "OUT-8b")  # fmt: skip
            self.fate.held.append((route.choice.bridgehead, connector.name, rcpt))
            return
        if connector.schedule == "windows":
            raise Unpredictable(f"{connector.name} sends at selected times: the clock decides")
        if connector.schedule == "never":
            # Queue states (reference section 3.3): Scheduled until Force Connection.
            self.fate.note(f"{connector.name} is scheduled Never: it waits in its queue, Scheduled", "C-AQ")
            self.fate.scheduled.append((route.choice.bridgehead, rcpt, connector.name))
            return
        domain = address.rpartition("@")[2].lower()
        host, spec = next_hop(self.world, route.choice, domain)
        if spec == "OUT-9a" and domain in self.world.mx:
            # Without MX records the documents do not say which look-ups come first: only this one
            # is certain.
            self.fate.mx_lookups.append((route.choice.bridgehead, domain))
        self.fate.note(f"{route.choice.bridgehead} hands it to {host.fqdn}", "OUT-5", spec)
        self._deliver(
            Delivery(
                "sink",
                host.name,
                route.choice.bridgehead,
                self.message.sender,
                rcpt,
                server,
                route.hops,
                connector.name,
                "HELO" if connector.send_helo else "",
            )
        )
        if connector.send_helo:
            self.fate.note(f"{connector.name} says \"Send HELO instead of EHLO\": "
                           f"{route.choice.bridgehead} greets {host.fqdn} with HELO", "OUT-8a")  # fmt: skip
