"""Routing engine: the next hop for a recipient, from link state over routing groups and connectors.

Theory of operation. The organization is a graph whose nodes are routing groups and whose edges are
the connectors that join them (routing group connectors, and SMTP and X.400 connectors that name a
connected routing group) that are up in the link state table, weighted by cost; Dijkstra gives the
least expensive path (link-state routing, as the Exchange routing engine does). A recipient whose
mailbox is on another server is sent to that server when it is in our routing group, and otherwise
along the first connector of the least-cost path to its routing group.

A recipient outside the organization is matched against connector address spaces (SMTP connectors and
gateways in scope for this server that the sender may use): the most specific match wins whatever it
costs; among equally specific ones the lowest total cost (path to the connector's routing group +
address-space cost) wins, then a connector this server is a bridgehead of; what is still tied is used
in turn, one message each, in name order (Exchange spreads equal-cost traffic, docs/decisions.md). When
every connector with the most specific match is down, the message waits: there is no fail-over to a
less specific address space. Without any matching connector the virtual server delivers itself, by
DNS or through its smart host.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import cached_property

from reference_mta import connector_restrictions
from reference_mta.linkstate import LinkState
from reference_mta.mailmsg import MailMsg, Recipient
from reference_mta.queue_contract import Hop, HopKind
from reference_mta.topology import Connector, Organization, Server, domain_match


@dataclass(frozen=True)
class Path:
    cost: int
    connectors: tuple[Connector, ...]

    @property
    def groups(self) -> list[str]:
        return [c.connects_to or "" for c in self.connectors]


class RoutingEngine:
    def __init__(
        self,
        organization: Organization,
        server: Server,
        link_state: LinkState | None = None,
        *,
        spread: bool = True,
    ) -> None:
        self.organization = organization
        self.server = server
        self.group = server.routing_group
        self.link_state = link_state or LinkState(organization)
        # Per set of tied connectors: the message that took the last turn, and which connector it took.
        # Without `spread` every message takes the first turn: one fixed answer per address space, for
        # a configuration written once (harness/targets/plan.py).
        self.spread = spread
        self._turns: dict[tuple[str, ...], tuple[str, int]] = {}

    # --- link state ------------------------------------------------------------------------------

    def paths(self) -> dict[str, Path]:
        """Least-cost path from our routing group to every reachable routing group (ties: the path
        whose connector names sort first)."""
        best: dict[str, Path] = {self.group.lower(): Path(0, ())}
        frontier: list[tuple[int, tuple[str, ...], str]] = [(0, (), self.group.lower())]
        done: set[str] = set()
        while frontier:
            cost, names, group = heapq.heappop(frontier)
            if group in done:
                continue
            done.add(group)
            for connector in self.organization.connectors:
                if (
                    not joins_groups(connector)
                    or connector.routing_group.lower() != group
                    or not self.link_state.connector_up(connector)
                ):
                    continue
                assert connector.connects_to is not None
                target = connector.connects_to.lower()
                total = cost + connector.cost
                key = (*names, connector.name)
                current = best.get(target)
                if target not in done and (current is None or (total, key) < (current.cost, _names(current))):
                    best[target] = Path(total, (*best[group].connectors, connector))
                    heapq.heappush(frontier, (total, key, target))
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
            return Hop(
                queue=fqdn, kind=HopKind.NO_ROUTE, detail=f"{fqdn} is not a server of the organization"
            )
        if target.routing_group.lower() == self.group.lower():
            if self.link_state.server_down(target.name):
                return Hop(queue=target.fqdn, kind=HopKind.UNREACHABLE, detail=f"{target.name} is down")
            return Hop(
                queue=target.fqdn,
                kind=HopKind.SERVER,
                targets=(target.fqdn,),
                spec="IN-7a",
                detail=f"same routing group {self.group}",
            )
        return self._toward_group(target.routing_group, spec="IN-7a", reason=f"home server {target.fqdn}")

    def candidates(self, msg: MailMsg, address_type: str, address: str) -> list[tuple[int, int, Connector]]:
        """(specificity, address-space cost, connector) for every connector whose address space matches
        and that this server and this message may use — up or down."""
        paths = self.paths_including_down
        found: list[tuple[int, int, Connector]] = []
        for connector in self.organization.connectors:
            if connector.kind == "routing_group" or connector.routing_group.lower() not in paths:
                continue
            if connector.scope == "routing_group" and connector.routing_group.lower() != self.group.lower():
                continue  # a routing-group-scoped connector does not exist outside its group
            if not connector_restrictions.permits(connector, msg):
                continue  # a connector the sender may not use does not exist for that sender
            for space in connector.address_spaces:
                if space.type != address_type:
                    continue
                score = (
                    domain_match(space.pattern, address)
                    if address_type == "SMTP"
                    else _other_match(space.pattern, address)
                )
                if score is not None:
                    found.append((score, space.cost, connector))
        return found

    @cached_property
    def paths_including_down(self) -> dict[str, Path]:
        """Path costs ignoring link state: which connectors could ever carry a message from here. The
        configured topology does not change while the server runs, so this is worked out once."""
        return RoutingEngine(self.organization, self.server, _AllUp(self.organization)).paths()

    def route_to_address_space(self, msg: MailMsg, address_type: str, address: str) -> Hop:
        candidates = self.candidates(msg, address_type, address)
        if candidates:
            best_score = max(score for score, _, _ in candidates)
            best = [(cost, c) for score, cost, c in candidates if score == best_score]
            live_paths = self.paths()
            usable = [
                (live_paths[c.routing_group.lower()].cost + space_cost, c)
                for space_cost, c in best
                if self.link_state.connector_up(c) and c.routing_group.lower() in live_paths
            ]
            if not usable:
                names = ", ".join(sorted(c.name for _, c in best))
                return Hop(
                    queue=address,
                    kind=HopKind.UNREACHABLE,
                    spec="OUT-6",
                    detail=f"every connector for the closest address space is down: {names}",
                )
            best_rank = min((cost, self._not_here(c)) for cost, c in usable)
            tied = sorted(
                (c for cost, c in usable if (cost, self._not_here(c)) == best_rank), key=lambda c: c.name
            )
            return self._via_connector(self._spread(msg, tied), address)
        if address_type != "SMTP":
            return Hop(
                queue=address, kind=HopKind.NO_ROUTE, detail=f"no connector for {address_type} addresses"
            )
        vs = self.server.default_virtual_server
        if vs.smart_host:
            return Hop(
                queue=address,
                kind=HopKind.SMART_HOST,
                targets=_split_hosts(vs.smart_host),
                spec="OUT-9b",
                detail="no connector: virtual server smart host",
            )
        return Hop(
            queue=address, kind=HopKind.DNS, targets=(address,), spec="OUT-9a", detail="no connector: DNS"
        )

    def _spread(self, msg: MailMsg, tied: list[Connector]) -> Connector:
        """Exchange "distributes load as equally as possible" over equally good connectors: round-robin
        per message, in name order, counted on this server for each set of tied connectors (every
        recipient of one message takes the same one). docs/decisions.md, "Equal-cost ties are spread"."""
        if len(tied) == 1 or not self.spread:
            return tied[0]
        key = tuple(c.name for c in tied)
        last = self._turns.get(key)
        if last is not None and last[0] == msg.id:
            return tied[last[1]]
        turn = 0 if last is None else (last[1] + 1) % len(tied)
        self._turns[key] = (msg.id, turn)
        return tied[turn]

    def _not_here(self, connector: Connector) -> int:
        return 0 if self.server.name in connector.local_bridgeheads else 1

    def _via_connector(self, connector: Connector, domain: str) -> Hop:
        local = not connector.local_bridgeheads or self.server.name in connector.local_bridgeheads
        if connector.kind == "gateway" and local:
            return Hop(
                queue=connector.name,
                kind=HopKind.GATEWAY,
                connector=connector.name,
                spec="IN-7c",
                detail=connector.foreign_system or "",
            )
        if connector.kind == "x400" and local:
            return self._x400_hop(connector, spec="OUT-7", reason=f"address space of {connector.name}")
        if connector.kind == "smtp" and local:
            if connector.smart_hosts:
                return Hop(
                    queue=connector.name,
                    kind=HopKind.SMART_HOST,
                    targets=connector.smart_hosts,
                    connector=connector.name,
                    spec="OUT-9b",
                    detail=f"connector {connector.name}: smart host",
                )
            vs = self.server.default_virtual_server
            if vs.smart_host:
                # "Use DNS" on the connector still goes through the bridgehead virtual server, whose own
                # smart host (its route action for remote domains) then applies.
                return Hop(
                    queue=connector.name,
                    kind=HopKind.SMART_HOST,
                    targets=_split_hosts(vs.smart_host),
                    connector=connector.name,
                    spec="OUT-8",
                    detail=f"connector {connector.name}: DNS, overridden by the virtual server smart host",
                )
            return Hop(
                queue=connector.name,
                kind=HopKind.DNS,
                targets=(domain,),
                connector=connector.name,
                spec="OUT-9a",
                detail=f"connector {connector.name}: DNS",
            )
        # The connector lives on another server: carry the message to an up bridgehead first.
        bridgeheads = self.link_state.up_bridgeheads(connector.local_bridgeheads)
        bridgehead = self.organization.server(bridgeheads[0])
        if bridgehead.routing_group.lower() == self.group.lower():
            return Hop(
                queue=bridgehead.fqdn,
                kind=HopKind.SERVER,
                targets=(bridgehead.fqdn,),
                connector=connector.name,
                spec="OUT-7",
                detail=f"bridgehead {bridgehead.name} of {connector.name}",
            )
        return self._toward_group(
            bridgehead.routing_group, spec="OUT-7", reason=f"bridgehead {bridgehead.name} of {connector.name}"
        )

    def _toward_group(self, group: str, *, spec: str, reason: str) -> Hop:
        path = self.paths().get(group.lower())
        if path is None or not path.connectors:
            return Hop(
                queue=group, kind=HopKind.UNREACHABLE, spec="C-RE", detail=f"no path to routing group {group}"
            )
        first = path.connectors[0]
        route = " > ".join([self.group, *path.groups])
        if first.local_bridgeheads and self.server.name not in first.local_bridgeheads:
            bridgehead = self.organization.server(self.link_state.up_bridgeheads(first.local_bridgeheads)[0])
            return Hop(
                queue=bridgehead.fqdn,
                kind=HopKind.SERVER,
                targets=(bridgehead.fqdn,),
                connector=first.name,
                spec=spec,
                detail=f"{reason}; via local bridgehead {bridgehead.name}; path {route} cost {path.cost}",
            )
        if first.kind == "x400":
            return self._x400_hop(first, spec=spec, reason=f"{reason}; path {route} cost {path.cost}")
        if first.kind == "smtp" and first.smart_hosts:
            # An SMTP connector between routing groups with smart hosts hands everything to them
            # (docs/decisions.md, "An SMTP connector between routing groups").
            return Hop(
                queue=first.name,
                kind=HopKind.SMART_HOST,
                targets=first.smart_hosts,
                connector=first.name,
                spec=spec,
                detail=f"{reason}; path {route} cost {path.cost}; smart host",
            )
        # "Any server" on the far side (no remote bridgeheads listed, or an SMTP connector that uses DNS):
        # every server of that group that is up, found by its FQDN's A record.
        candidates = self.link_state.far_side(first)
        remotes = [self.organization.server(n).fqdn for n in self.link_state.up_bridgeheads(candidates)]
        return Hop(
            queue=first.name,
            kind=HopKind.CONNECTOR,
            targets=tuple(remotes),
            connector=first.name,
            spec=spec,
            detail=f"{reason}; path {route} cost {path.cost}",
        )

    def _x400_hop(self, connector: Connector, *, spec: str, reason: str) -> Hop:
        """This server's MTA hosts the connector: the message goes to the X.400 connector's queue, for
        the MTA to transfer to the remote MTA (the up remote bridgeheads, when it joins groups)."""
        remotes = self.link_state.up_bridgeheads(connector.remote_bridgeheads)
        return Hop(
            queue=connector.name,
            kind=HopKind.X400,
            targets=tuple(self.organization.server(name).fqdn for name in remotes),
            connector=connector.name,
            spec=spec,
            detail=f"{reason}; X.400 connector {connector.name}",
        )


class _AllUp(LinkState):
    """A link state in which everything is up: the topology as configured."""

    def connector_up(self, connector: Connector) -> bool:
        return True

    def server_down(self, name: str) -> bool:
        return False


def joins_groups(connector: Connector) -> bool:
    """An edge of the routing graph: a routing group connector, or an SMTP or X.400 connector that
    names a connected routing group."""
    return connector.kind != "gateway" and connector.connects_to is not None


def _names(path: Path) -> tuple[str, ...]:
    return tuple(c.name for c in path.connectors)


def _other_match(pattern: str, address: str) -> int | None:
    """Non-SMTP address spaces (NOTES:, X400:): `*` matches anything, otherwise a literal prefix."""
    if pattern == "*":
        return 0
    prefix = pattern.rstrip("*")
    return len(prefix) if address.lower().startswith(prefix.lower()) else None


def _split_hosts(text: str) -> tuple[str, ...]:
    return tuple(h.strip() for h in text.replace(",", ";").split(";") if h.strip())
