"""The route action of a remote domain: what the IIS metabase holds for it (RouteAction), as an SMTP
connector writes it for its address spaces and its bridgehead virtual server applies it.

An SMTP connector's property pages end up in the metabase of each local bridgehead's virtual server,
one route domain per address space: the smart host or DNS (routing decides that part, `routing`), and
the connector's delivery options, which decide how the bridgehead talks to the next hop:

- Advanced → "Send HELO instead of EHLO": the session greets with HELO, so the next hop is asked for no
  ESMTP extension (old MTAs that answer EHLO wrongly);
- Delivery Options → "Queue mail for remote triggered delivery": the link queue holds its messages in
  state Remote until the remote host connects and asks for them (ETRN, RFC 1985); only then does the
  bridgehead open a session to the next hop.

One place for which connector's options apply where: the delivery component, AQ and the virtual servers
of a server all take theirs from `RouteActions.of`.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_mta.topology import Connector, Organization, Server


@dataclass(frozen=True)
class RouteAction:
    send_helo: bool = False
    remote_triggered: bool = False


@dataclass(frozen=True)
class RouteActions:
    """The route actions a server's virtual servers hold: one per SMTP connector it is a bridgehead of
    whose options differ from the defaults, by the connector's name (the link queue's name)."""

    by_link: dict[str, RouteAction]
    connectors: tuple[Connector, ...]

    @classmethod
    def of(cls, organization: Organization, server: Server) -> RouteActions:
        connectors = tuple(
            c
            for c in organization.connectors
            if c.kind == "smtp" and server.name in c.local_bridgeheads and (c.send_helo or c.remote_triggered)
        )
        return cls(
            {c.name.lower(): RouteAction(c.send_helo, c.remote_triggered) for c in connectors}, connectors
        )

    def for_link(self, queue: str | None) -> RouteAction:
        return self.by_link.get((queue or "").lower(), RouteAction())

    @property
    def remote_links(self) -> frozenset[str]:
        """The link queues (lower case) that wait for the remote host to trigger delivery."""
        return frozenset(name for name, action in self.by_link.items() if action.remote_triggered)

    @property
    def offers_etrn(self) -> bool:
        """ETRN is offered where some link queue waits for it."""
        return bool(self.remote_links)

    def etrn_link(self, domain: str) -> str | None:
        """The link queue an ETRN for `domain` releases: a remote-triggered connector of this server
        whose SMTP address space is that domain exactly (RFC 1985 names one node; a wildcard address
        space would let any ETRN name any domain), or None."""
        # "@domain" asks for the domain's subdomains as well (RFC 1985 5.2); the domain itself is one.
        domain = domain.lower().lstrip("@").rstrip(".")
        for connector in self.connectors:
            if connector.remote_triggered and any(
                space.type == "SMTP" and space.pattern.lower() == domain for space in connector.address_spaces
            ):
                return connector.name
        return None
