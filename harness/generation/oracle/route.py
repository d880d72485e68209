"""Where a message goes once the categorizer knows the recipient: the routing rules of the seeds.

- C-RE / IN-6b: link-state routing finds the least expensive available path between routing groups
  (routing group connectors, and SMTP and X.400 connectors with a connected routing group, that are up,
  each one way, with its own cost);
- IN-7a: mail for a mailbox on another server goes to that server, through the bridgeheads of the
  connectors on the path when the server is in another routing group;
- OUT-4 / OUT-6: a remote address takes the connector whose address space matches it most closely
  (exact domain, then the longest `*.suffix`, then `*`); among those, a connector whose delivery
  restrictions exclude the sender as resolved at the message's origin (or the message's priority or
  kind), or whose scope is another routing group, does not exist; then the
  cheapest (path cost + address space cost), then one on this server, then each in turn by name;
- docs/decisions.md: when every connector of the closest address space is down or out of reach, the
  message waits; there is no fail-over to a less specific address space;
- link state: a server that is down takes nothing (what is for it waits on the server that has it),
  and a connector whose bridgeheads are all down is down;
- OUT-5 / OUT-8 / OUT-9: the connector's smart host, else its bridgehead virtual server's smart host
  (route action), else DNS: the preferred MX that answers, or the domain's own A record without MX.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from harness.generation.oracle.relay import address_space_matches, wildcard_form
from harness.generation.oracle.world import Connector, Host, World


class Unpredictable(Exception):
    """The documented rules do not decide this scenario (or the oracle does not model it)."""


class NoConnector(Exception):
    """No connector of the organization could ever carry this address type: returned with 5.0.0."""


@dataclass(frozen=True)
class Path:
    servers: tuple[str, ...]  # every server the message passes through, the first one included
    cost: int
    # The target is down: the message goes as far as the last of `servers` and waits there.
    blocked: bool = False


def is_up(connector: Connector, down: frozenset[str]) -> bool:
    """`down` names (lower case) what an administrator marked down, connectors and servers alike. A
    connector is down when marked so, or when every one of its local bridgeheads is, or (a routing
    group connector) every one of its remote bridgeheads: the link state rule of the seeds."""
    if connector.down or connector.name.lower() in down:
        return False
    if connector.local_bridgeheads and all(b.lower() in down for b in connector.local_bridgeheads):
        return False
    return not (connector.remote_bridgeheads and all(b.lower() in down for b in connector.remote_bridgeheads))


def links_up(world: World, down: frozenset[str]) -> list[Connector]:
    """The edges between routing groups: routing group connectors, and SMTP and X.400 connectors that
    name a connected routing group (reference section 5.2), each one way."""
    return [
        c for c in world.connectors if c.kind != "gateway" and c.connects_to is not None and is_up(c, down)
    ]


def far_side(link: Connector, down: frozenset[str]) -> str:
    """The server a link hands the message to: the first of its remote bridgeheads that is up (for an
    SMTP connector that uses DNS, the servers of the connected group: world.py lists them so)."""
    if link.kind == "smtp" and link.smart_hosts:
        raise Unpredictable(f"{link.name} hands messages between routing groups to a smart host")
    return next(b for b in link.remote_bridgeheads if b.lower() not in down)


def group_path(world: World, down: frozenset[str], start: str, goal: str) -> list[Connector] | None:
    """The least-cost chain of routing group connectors from one routing group to another (Dijkstra);
    equal costs go to the chain whose connector names sort first."""
    queue: list[tuple[int, tuple[str, ...], str, tuple[Connector, ...]]] = [(0, (), start, ())]
    done: set[str] = set()
    while queue:
        cost, names, group, chain = heapq.heappop(queue)
        if group == goal:
            return list(chain)
        if group in done:
            continue
        done.add(group)
        for link in links_up(world, down):
            if link.routing_group == group and link.connects_to not in done:
                assert link.connects_to is not None
                heapq.heappush(
                    queue, (cost + link.cost, (*names, link.name), link.connects_to, (*chain, link))
                )
    return None


def path_cost(world: World, down: frozenset[str], start: str, goal: str) -> int | None:
    chain = group_path(world, down, start, goal)
    return None if chain is None else sum(link.cost for link in chain)


def server_path(world: World, down: frozenset[str], origin: str, target: str) -> Path | None:
    """The servers a message passes from `origin` to `target`: within a routing group it goes straight
    to the server; across groups it goes to each connector's local bridgehead, then its remote one.
    None when no chain of connectors that are up reaches the target's routing group. A target that is
    down takes nothing, but only its own routing group knows (link state marks connectors down, not
    servers in other groups): the message travels into that group and waits there (`blocked`)."""
    start = world.server(origin)
    goal = world.server(target)
    chain = group_path(world, down, start.routing_group, goal.routing_group)
    if chain is None:
        return None
    servers = [start.name]
    for link in chain:
        if link.kind == "x400" and all(b.lower() in down for b in link.remote_bridgeheads):
            # The local MTA cannot open an association: the message waits in its queue, for no time
            # the documents give.
            raise Unpredictable(f"the remote MTA of X.400 connector {link.name} is down")
        # Over an X.400 connector the local MTA hands the message to the remote MTA, whose server
        # submits it to its AQ: the same two servers as any connector's bridgeheads.
        for hop in (link.local_bridgeheads[0], far_side(link, down)):
            if servers[-1].upper() != hop.upper():
                servers.append(world.server(hop).name)
    cost = sum(link.cost for link in chain)
    if goal.name.lower() in down:
        return Path(tuple(servers), cost, blocked=True)
    if servers[-1].upper() != goal.name.upper():
        servers.append(goal.name)
    return Path(tuple(servers), cost)


def _specificity(pattern: str) -> tuple[int, int]:
    """Exact domains first, then `%` patterns (one length of domain only), then `*.suffix` patterns,
    each by how many characters they fix, `*` last (docs/decisions.md, "`%` in an address space")."""
    pattern = wildcard_form(pattern)
    fixed = len(pattern.replace("*", "").replace("%", ""))
    if pattern == "*":
        return (0, 0)
    if pattern.startswith("*"):
        return (1, fixed)
    return (3, fixed) if "%" not in pattern else (2, fixed)


@dataclass(frozen=True)
class Traits:
    """What a connector's restrictions look at (reference sections 5 and 7; docs/decisions.md,
    "Connector restrictions"): the SMTP addresses of the sender's directory object and of the groups
    it belongs to, empty when the sender is not resolved (an anonymous origin does not vouch for it);
    the priority; whether the message is a report (a system message)."""

    addresses: frozenset[str] = frozenset()
    priority: str = "normal"
    system: bool = False


def _exists_for(world: World, connector: Connector, origin: str, traits: Traits) -> bool:
    if connector.scope_routing_group and connector.routing_group != world.server(origin).routing_group:
        return False
    if traits.priority not in connector.priorities:
        return False
    if ("system" if traits.system else "non_system") not in connector.message_types:
        return False
    if connector.accept_from is not None and not traits.addresses & {
        a.lower() for a in connector.accept_from
    }:
        return False
    return not traits.addresses & {a.lower() for a in connector.reject_from}


@dataclass(frozen=True)
class Choice:
    connector: Connector
    bridgehead: str
    path: Path


def choose_connector(
    world: World, down: frozenset[str], origin: str, kind: str, address: str, traits: Traits
) -> Choice | None:
    """The connector a message for `address` (of address type `kind`) takes from server `origin`; None
    when the closest address space has no connector that is up and in reach (the message waits).
    Raises NoConnector when no connector matches at all."""
    domain = address.rpartition("@")[2].lower() if kind == "SMTP" else address
    candidates: list[tuple[tuple[int, int], int, Connector]] = []
    for connector in world.connectors:
        if connector.kind == "routing_group" or not _exists_for(world, connector, origin, traits):
            continue
        for space in connector.address_spaces:
            if space.kind == kind and address_space_matches(space.pattern, domain):
                candidates.append((_specificity(space.pattern.lower()), space.cost, connector))
    if not candidates:
        raise NoConnector(f"no connector has an address space for {kind}:{address}")
    closest = max(rank for rank, _, _ in candidates)
    ranked: list[tuple[int, int, str, Choice]] = []
    for rank, cost, connector in candidates:
        if rank != closest or not is_up(connector, down):
            continue
        bridgehead = world.server(next(b for b in connector.local_bridgeheads if b.lower() not in down)).name
        path = server_path(world, down, origin, bridgehead)
        if path is None or path.blocked:
            continue
        own = 0 if bridgehead.upper() == origin.upper() else 1
        ranked.append((path.cost + cost, own, connector.name, Choice(connector, bridgehead, path)))
    # What stays tied after cost and "on this server" is used in turn, one message each, in name order,
    # counted on each server (docs/decisions.md, "Equal-cost ties are spread"). A generated scenario is
    # one message in a fresh lab, so it takes the first turn: the name that sorts first.
    return min(ranked, key=lambda r: r[:3])[3] if ranked else None


def _named_host(world: World, name: str) -> Host | None:
    """A smart host: "[lab host]" (an address literal naming a lab host) or an FQDN."""
    if name.startswith("[") and name.endswith("]"):
        inner = name[1:-1]
        return next((h for h in world.internet if h.name.lower() == inner.lower()), None)
    return world.sink_for(name)


def next_hop(world: World, choice: Choice, domain: str) -> tuple[Host, str]:
    """The Internet host the bridgehead hands the message to, and the catalogue ID of how it chose."""
    connector = choice.connector
    if connector.smart_hosts:
        host, spec = _named_host(world, connector.smart_hosts[0]), "OUT-9b"
    elif (vs_smart := world.server(choice.bridgehead).default.smart_host) is not None:
        host, spec = _named_host(world, vs_smart), "OUT-8"
    elif domain in world.mx:
        spec = "OUT-9a"
        # An exchanger without a listening host refuses the connection: the next preference is tried.
        exchangers = [world.sink_for(name) for _, name in sorted(world.mx[domain])]
        host = next((h for h in exchangers if h is not None), None)
    else:
        host, spec = world.sink_for(domain), "OUT-9a"  # no MX: the domain's own A record
    if host is None:
        raise Unpredictable(f"no lab host answers for {domain}")
    return host, spec


@dataclass(frozen=True)
class Route:
    choice: Choice  # the connector that finally carries the message, chosen on its bridgehead
    hops: tuple[str, ...]  # servers the message passes, the origin first and the bridgehead last


def route_remote(
    world: World, down: frozenset[str], origin: str, kind: str, address: str, traits: Traits
) -> Route | None:
    """Routing is hop by hop (IN-6b: the routing engine "determines the next destination, or hop"):
    every server on the way chooses again, so a server that has a connector of its own as good as the
    one chosen before it uses its own. None when the message waits for an unreachable destination."""
    hops = [world.server(origin).name]
    while True:
        choice = choose_connector(world, down, hops[-1], kind, address, traits)
        if choice is None:
            return None
        if choice.bridgehead.upper() == hops[-1].upper():
            return Route(choice, tuple(hops))
        step = choice.path.servers[1]
        if step in hops:
            raise Unpredictable(f"routing for {address} loops between {hops} and {step}")
        hops.append(step)
