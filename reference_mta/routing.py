"""Routing engine: the next hop for a recipient, from link state over routing groups and connectors.

Theory of operation. The organization is a graph whose nodes are routing groups and whose edges are
routing group connectors that are up, weighted by cost; Dijkstra gives the least expensive path
(link-state routing, as the Exchange routing engine does). A recipient whose mailbox is on another
server is sent to that server when it is in our routing group, and otherwise along the first connector
of the least-cost path to its routing group. A recipient outside the organization is matched against
connector address spaces: the most specific match wins whatever it costs; among equally specific ones
the lowest total cost (path to the connector's routing group + address-space cost) wins, and a
connector on this server wins over an equal one elsewhere. Without any matching connector the virtual
server delivers itself, by DNS or through its smart host.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from reference_mta.mailmsg import MailMsg, Recipient
from reference_mta.queuing import Hop
from reference_mta.topology import Connector, Organization, Server


@dataclass(frozen=True)
class Path:
    cost: int
    connectors: tuple[Connector, ...]


class RoutingEngine:
    def __init__(self, organization: Organization, server: Server) -> None:
        self.organization = organization
        self.server = server
        self.group = server.routing_group

    # --- link state ------------------------------------------------------------------------------

    def paths(self) -> dict[str, Path]:
        """Least-cost path from our routing group to every reachable routing group."""
        best: dict[str, Path] = {self.group.lower(): Path(0, ())}
        frontier: list[tuple[int, int, str]] = [(0, 0, self.group.lower())]
        counter = 1
        while frontier:
            cost, _, group = heapq.heappop(frontier)
            if cost > best[group].cost:
                continue
            for connector in self.organization.connectors:
                if (
                    connector.kind != "routing_group"
                    or not connector.up
                    or connector.routing_group.lower() != group
                ):
                    continue
                assert connector.connects_to is not None
                target = connector.connects_to.lower()
                total = cost + connector.cost
                if target not in best or total < best[target].cost:
                    best[target] = Path(total, (*best[group].connectors, connector))
                    heapq.heappush(frontier, (total, counter, target))
                    counter += 1
        return best

    # --- decisions -------------------------------------------------------------------------------

    def route(self, msg: MailMsg, recipient: Recipient) -> Hop:
        if recipient.home_server:
            return self.route_to_server(recipient.home_server)
        if recipient.address_type != "SMTP":
            return self.route_to_address_space(msg, recipient.address_type, recipient.address)
        return self.route_to_address_space(msg, "SMTP", recipient.domain)

    def route_to_server(self, fqdn: str) -> Hop:
        target = self.organization.server_by_fqdn(fqdn)
        if target is None:
            return Hop(queue=fqdn, kind="no_route", detail=f"{fqdn} is not a server of the organization")
        if target.routing_group.lower() == self.group.lower():
            return Hop(
                queue=target.fqdn,
                kind="server",
                targets=(target.fqdn,),
                spec="IN-7a",
                detail=f"same routing group {self.group}",
            )
        return self._toward_group(target.routing_group, spec="IN-7a", reason=f"home server {target.fqdn}")

    def route_to_address_space(self, msg: MailMsg, address_type: str, domain: str) -> Hop:
        paths = self.paths()
        candidates: list[tuple[int, int, int, Connector]] = []
        for connector in self.organization.connectors:
            if connector.kind == "routing_group" or connector.routing_group.lower() not in paths:
                continue
            if not self._restrictions_allow(connector, msg):
                continue  # a connector the message may not use does not exist for it
            for space in connector.address_spaces:
                if space.type != address_type:
                    continue
                specificity = (
                    space.specificity(domain)
                    if address_type == "SMTP"
                    else _other_match(space.pattern, domain)
                )
                if specificity is None:
                    continue
                total = paths[connector.routing_group.lower()].cost + space.cost
                here = 0 if self.server.name in connector.local_bridgeheads else 1
                candidates.append((specificity, -total, -here, connector))
        if candidates:
            best_specificity = max(c[0] for c in candidates)
            usable = [c for c in candidates if c[0] == best_specificity and c[3].up]
            if not usable:
                # No fail-over to a less specific address space when the specific connector is down.
                return Hop(queue=domain, kind="unreachable", detail="matching connector is down")
            _, _, _, connector = max(usable, key=lambda c: (c[1], c[2]))
            return self._via_connector(connector, domain)
        if address_type != "SMTP":
            return Hop(queue=domain, kind="no_route", detail=f"no connector for {address_type} addresses")
        vs = self.server.default_virtual_server
        if vs.smart_host:
            return Hop(
                queue=domain,
                kind="smart_host",
                targets=_split_hosts(vs.smart_host),
                spec="OUT-9b",
                detail="virtual server smart host",
            )
        return Hop(queue=domain, kind="dns", targets=(domain,), spec="OUT-9a", detail="no connector: DNS")

    def _via_connector(self, connector: Connector, domain: str) -> Hop:
        if connector.kind == "gateway":
            if self.server.name in connector.local_bridgeheads:
                return Hop(
                    queue=connector.name,
                    kind="gateway",
                    connector=connector.name,
                    spec="IN-7c",
                    detail=connector.foreign_system or "",
                )
        elif not connector.local_bridgeheads or self.server.name in connector.local_bridgeheads:
            if connector.smart_hosts:
                return Hop(
                    queue=connector.name,
                    kind="smart_host",
                    targets=connector.smart_hosts,
                    connector=connector.name,
                    spec="OUT-9b",
                    detail=f"connector {connector.name}",
                )
            return Hop(
                queue=connector.name,
                kind="dns",
                targets=(domain,),
                connector=connector.name,
                spec="OUT-9a",
                detail=f"connector {connector.name}",
            )
        # The connector lives on another server: carry the message to its bridgehead first.
        bridgehead = self.organization.server(connector.local_bridgeheads[0])
        if bridgehead.routing_group.lower() == self.group.lower():
            return Hop(
                queue=bridgehead.fqdn,
                kind="server",
                targets=(bridgehead.fqdn,),
                connector=connector.name,
                spec="OUT-7",
                detail=f"bridgehead of {connector.name}",
            )
        return self._toward_group(
            bridgehead.routing_group, spec="OUT-7", reason=f"bridgehead of {connector.name}"
        )

    def _toward_group(self, group: str, *, spec: str, reason: str) -> Hop:
        path = self.paths().get(group.lower())
        if path is None or not path.connectors:
            return Hop(queue=group, kind="unreachable", detail=f"no path to routing group {group}")
        first = path.connectors[0]
        route = " > ".join([self.group, *[c.connects_to or "" for c in path.connectors]])
        if first.local_bridgeheads and self.server.name not in first.local_bridgeheads:
            bridgehead = self.organization.server(first.local_bridgeheads[0])
            return Hop(
                queue=bridgehead.fqdn,
                kind="server",
                targets=(bridgehead.fqdn,),
                connector=first.name,
                spec=spec,
                detail=f"{reason}; via local bridgehead; path {route} cost {path.cost}",
            )
        remote = self.organization.server(first.remote_bridgeheads[0])
        return Hop(
            queue=first.name,
            kind="connector",
            targets=(remote.fqdn,),
            connector=first.name,
            spec=spec,
            detail=f"{reason}; path {route} cost {path.cost}",
        )

    @staticmethod
    def _restrictions_allow(connector: Connector, msg: MailMsg) -> bool:
        limits = connector.restrictions
        if limits.max_size_kb is not None and msg.size > limits.max_size_kb * 1024:
            return False
        sender = msg.sender.lower()
        if limits.accept_from and sender not in [a.lower() for a in limits.accept_from]:
            return False
        return sender not in [a.lower() for a in limits.reject_from]


def _other_match(pattern: str, address: str) -> int | None:
    """Non-SMTP address spaces (NOTES:, X400:): `*` matches anything, otherwise a literal prefix."""
    if pattern == "*":
        return 0
    prefix = pattern.rstrip("*")
    return len(prefix) if address.lower().startswith(prefix.lower()) else None


def _split_hosts(text: str) -> tuple[str, ...]:
    return tuple(h.strip() for h in text.replace(",", ";").split(";") if h.strip())
