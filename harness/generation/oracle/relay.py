"""What a virtual server answers at RCPT: the relay decision and recipient filtering.

The rules, from the seeds and docs/decisions.md:
- IN-3: the inbound server accepts a recipient whose domain is in a recipient policy, unless it is an
  open relay (RELAY-2);
- IN-7b: mail for a domain outside the organization is accepted only if the server is an open relay,
  the sender is authorised to relay (an authenticated session where the virtual server allows
  authenticated relaying, RELAY-3; a client on the relay list, RELAY-5; another server of the
  organization), or a connector allows relaying to the domain (RELAY-4);
- anything else is refused with 550 5.7.1 Unable to relay (RELAY-1);
- recipient filtering (RELAY-7) judges anonymous sessions only, and only recipients in authoritative
  domains: an address on the filter list, or not in the directory when the virtual server filters on
  it, gets 550 5.7.1 "mailbox not available".
Any one permission is enough, so the order in which they are checked does not change the answer.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass

from harness.generation.oracle.world import VirtualServer, World


@dataclass(frozen=True)
class Reply:
    code: int
    text: str  # after the code: "2.1.5 alice@contoso.com"
    why: str  # which rule decided, in words (and the catalogue ID)
    spec: str

    @property
    def accepted(self) -> bool:
        return self.code == 250


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _network(world: World, entry: str) -> ipaddress.IPv4Network:
    """A relay or connection list entry: a lab host, a "host/prefix" subnet around one, or a network."""
    name, _, prefix = entry.partition("/")
    offset = world.host_addr(name)
    if offset is None:
        return ipaddress.IPv4Network(entry, strict=False)
    return ipaddress.IPv4Network(f"{world.address(offset)}/{prefix or 32}", strict=False)


def on_list(world: World, client: str, entries: tuple[str, ...]) -> bool:
    offset = world.host_addr(client)
    if offset is None:
        raise ValueError(f"no lab host {client!r}")
    address = world.address(offset)
    return any(address in _network(world, e) for e in entries)


def is_organization_server(world: World, client: str) -> bool:
    return client.upper() in world.servers


def may_connect(world: World, vs: VirtualServer, client: str) -> bool:
    if is_organization_server(world, client):
        return True
    if vs.connection_only is not None:
        return on_list(world, client, vs.connection_only)
    if vs.connection_except is not None:
        return not on_list(world, client, vs.connection_except)
    return True


def client_may_relay(
    world: World, vs: VirtualServer, client: str, authenticated: bool
) -> tuple[str, str] | None:
    """Why this client may relay anywhere, and the catalogue ID that says so; None if it may not."""
    if vs.open_relay:
        return "the virtual server is an open relay", "RELAY-2"
    if authenticated and vs.allow_authenticated:
        return "the session is authenticated and the virtual server lets such clients relay", "RELAY-3"
    if is_organization_server(world, client):
        return "the client is a server of the organization", "IN-7b"
    if vs.relay_only is not None and on_list(world, client, vs.relay_only):
        return "the client is on the relay list", "RELAY-5"
    if vs.relay_except is not None and not on_list(world, client, vs.relay_except):
        return "the client is not on the relay exclusion list", "RELAY-5"
    return None


def wildcard_form(pattern: str) -> str:
    """An address space as E2K3 reads it: a wildcard is read only up to the `*` (KB 244986,
    docs/decisions.md), so `abc.*.x.com` is `*.x.com`. KB 244986 shows one wildcard; with several,
    the text after the last one is what is left to match."""
    pattern = pattern.lower()
    return "*" + pattern.rpartition("*")[2] if "*" in pattern else pattern


def address_space_matches(pattern: str, domain: str) -> bool:
    """`*` matches every domain, `*.example` its subdomains, anything else the exact domain; `%` is
    any one character (reference section 5.3)."""
    pattern = wildcard_form(pattern)
    if pattern == "*":
        return True
    literal = re.escape(pattern.lstrip("*")).replace("%", ".")
    return re.fullmatch((".+" if pattern.startswith("*") else "") + literal, domain) is not None


def relay_connector(world: World, domain: str) -> str | None:
    for connector in world.connectors:
        if connector.allow_relay and any(
            s.kind == "SMTP" and address_space_matches(s.pattern, domain) for s in connector.address_spaces
        ):
            return connector.name
    return None


def _filtered(world: World, vs: VirtualServer, address: str) -> bool:
    if any(fnmatch.fnmatchcase(address.lower(), p.lower()) for p in vs.filter_addresses):
        return True
    return vs.filter_directory and world.by_proxy("smtp", address) is None


def rcpt_reply(world: World, vs: VirtualServer, client: str, authenticated: bool, address: str) -> Reply:
    domain = domain_of(address)
    accepted = f"2.1.5 {address}"
    trusted = authenticated or is_organization_server(world, client)
    if world.policies.get(domain) and not trusted and _filtered(world, vs, address):
        return Reply(550, "5.7.1 Requested action not taken: mailbox not available",
                     "recipient filtering refuses it (RELAY-7)", "RELAY-7")  # fmt: skip
    if domain in world.policies:
        return Reply(250, accepted, f"{domain} is in a recipient policy (IN-3)", "IN-3")
    if (permission := client_may_relay(world, vs, client, authenticated)) is not None:
        return Reply(250, accepted, permission[0], permission[1])
    if (name := relay_connector(world, domain)) is not None:
        return Reply(250, accepted, f"{name} allows relaying to {domain} (RELAY-4)", "RELAY-4")
    return Reply(550, f"5.7.1 Unable to relay for {address}",
                 "relaying is denied by default (RELAY-1)", "RELAY-1")  # fmt: skip
