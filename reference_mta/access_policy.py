"""Access policy of an SMTP virtual server: who may connect, to whom a session may relay, and which
recipients recipient filtering refuses. One place for each of these rules; the SMTP front end asks
and replies.

Relay decision for a recipient (the model of KB 260973; docs/decisions.md), first rule that grants
wins, otherwise 550 5.7.1 Unable to relay:

    open relay                the virtual server relays for everyone
    authenticated             the session authenticated and authenticated clients may relay
    organization server       the client is another Exchange server of the organization (X-EXPS,
                              modelled by its address)
    relay list                the client address passes the relay list
    inbound domain            the domain is in a recipient policy, authoritative or not
    relay connector           an SMTP connector "allows messages to be relayed" to the domain

Recipient filtering applies to anonymous sessions only (authenticated clients and the organization's
servers bypass it) and only to domains the organization is authoritative for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reference_mta.topology import Organization, VirtualServer


@dataclass(frozen=True)
class Client:
    """What the relay decision knows of the session."""

    address: str
    authenticated: bool


RelayRule = Callable[[Organization, VirtualServer, Client, str], bool]

# One row per rule, in order; kept one line each so the table reads as the model above.
RELAY_RULES: tuple[tuple[str, RelayRule], ...] = (
    ("open relay", lambda org, vs, client, domain: vs.relay.open),
    ("authenticated", lambda org, vs, client, domain: client.authenticated and vs.relay.allow_authenticated),
    ("organization server", lambda org, vs, client, domain: org.is_own_address(client.address)),
    ("relay list", lambda org, vs, client, domain: vs.relay.permits_address(client.address)),
    ("inbound domain", lambda org, vs, client, domain: org.policy_domain(domain) is not None),
    ("relay connector", lambda org, vs, client, domain: org.relay_connector(domain) is not None),
)  # fmt: skip


def relay_grant(organization: Organization, vs: VirtualServer, client: Client, address: str) -> str | None:
    """The name of the rule that lets this session send to `address`, or None: unable to relay."""
    domain = _domain(address)
    for name, rule in RELAY_RULES:
        if rule(organization, vs, client, domain):
            return name
    return None


def may_connect(vs: VirtualServer, client_address: str) -> bool:
    return vs.connection.permits(client_address)


def filtering_applies(organization: Organization, vs: VirtualServer, client: Client, address: str) -> bool:
    """Whether recipient filtering judges this recipient at all."""
    if vs.recipient_filtering is None or client.authenticated:
        return False
    if organization.is_own_address(client.address):
        return False
    policy = organization.policy_domain(_domain(address))
    return policy is not None and policy.authoritative


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")
