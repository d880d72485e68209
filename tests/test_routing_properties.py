"""Routing engine over topologies built in code: least-cost paths checked against brute force, link
state, scope, restrictions and ties."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from reference_mta.linkstate import LinkState
from reference_mta.mailmsg import MailMsg, ResolvedSender
from reference_mta.routing import RoutingEngine
from reference_mta.topology import (
    AddressSpace,
    Connector,
    Organization,
    PolicyDomain,
    RecipientPolicy,
    RelaySettings,
    Restrictions,
    RoutingGroup,
    Server,
    VirtualServer,
)


def _server(name: str, group: str) -> Server:
    vs = VirtualServer("Default SMTP Virtual Server", name, 1, f"127.9.0.{len(name)}", 25, RelaySettings())
    return Server(
        name, f"{name.lower()}.example.org", "127.9.0.1", group, (f"Mailbox Store ({name})",), (vs,)
    )


def organization(
    groups: list[str], links: list[tuple[str, str, int, bool]], extra: tuple[Connector, ...] = ()
) -> Organization:
    """One server per routing group (named after it); each link is a one-way routing group connector."""
    connectors = tuple(
        Connector(
            kind="routing_group",
            name=f"{a}-{b}#{n}",
            routing_group=a,
            connects_to=b,
            cost=cost,
            local_bridgeheads=(f"S{a}",),
            remote_bridgeheads=(f"S{b}",),
            up=up,
        )
        for n, (a, b, cost, up) in enumerate(links)
    )
    return Organization(
        name="Org",
        admin_group="AG",
        policies=(RecipientPolicy("Default", 0, (PolicyDomain("example.org", True),)),),
        routing_groups=tuple(RoutingGroup(g, f"S{g}") for g in groups),
        servers=tuple(_server(f"S{g}", g) for g in groups),
        connectors=connectors + extra,
    )


def brute_force(org: Organization, source: str, target: str, state: LinkState) -> int | None:
    """The cheapest cost over every simple path of up connectors, by enumeration."""
    up = [c for c in org.connectors if c.kind == "routing_group" and state.connector_up(c)]
    best: int | None = None
    groups = [g.name for g in org.routing_groups if g.name not in (source, target)]
    for size in range(len(groups) + 1):
        for middle in itertools.permutations(groups, size):
            hops = [source, *middle, target]
            cost = 0
            for a, b in itertools.pairwise(hops):
                costs = [c.cost for c in up if c.routing_group == a and c.connects_to == b]
                if not costs:
                    break
                cost += min(costs)
            else:
                best = cost if best is None else min(best, cost)
    return best


GROUPS = ["A", "B", "C", "D", "E"]
links = st.lists(
    st.tuples(st.sampled_from(GROUPS), st.sampled_from(GROUPS), st.integers(1, 100), st.booleans()).filter(
        lambda link: link[0] != link[1]
    ),
    max_size=14,
)


@settings(max_examples=300, deadline=None)
@given(links=links, target=st.sampled_from(GROUPS[1:]))
def test_the_chosen_path_is_never_more_expensive_than_any_path_of_up_connectors(
    links: list[tuple[str, str, int, bool]], target: str
) -> None:
    org = organization(GROUPS, links)
    state = LinkState(org)
    engine = RoutingEngine(org, org.server("SA"), state)
    path = engine.paths().get(target.lower())
    expected = brute_force(org, "A", target, state)
    if expected is None:
        assert path is None
        return
    assert path is not None and path.cost == expected
    assert all(state.connector_up(c) for c in path.connectors)
    # The path is connected: each connector starts where the previous one ended.
    where = "A"
    for connector in path.connectors:
        assert connector.routing_group == where
        where = connector.connects_to or ""
    assert where == target


@settings(max_examples=100, deadline=None)
@given(links=links, down=st.integers(0, 13))
def test_marking_a_connector_down_never_leaves_it_on_a_path(
    links: list[tuple[str, str, int, bool]], down: int
) -> None:
    org = organization(GROUPS, links)
    state = LinkState(org)
    if links:
        state.set_connector(org.connectors[down % len(links)].name, False)
    for path in RoutingEngine(org, org.server("SA"), state).paths().values():
        assert all(state.connector_up(c) for c in path.connectors)


def test_a_connector_is_down_when_all_its_remote_or_all_its_local_bridgeheads_are() -> None:
    org = organization(["A", "B"], [("A", "B", 1, True)])
    state = LinkState(org)
    engine = RoutingEngine(org, org.server("SA"), state)
    assert engine.paths()["b"].cost == 1
    state.set_server("SB", False)  # the remote bridgehead
    assert "b" not in engine.paths()
    state.set_server("SB", True)
    assert state.minor == 2 and engine.paths()["b"].cost == 1
    state.set_server("SA", False)  # the local bridgehead
    assert "b" not in engine.paths()


def _smtp(name: str, group: str, pattern: str, cost: int, **kwargs: object) -> Connector:
    return Connector(
        kind="smtp",
        name=name,
        routing_group=group,
        local_bridgeheads=(f"S{group}",),
        address_spaces=(AddressSpace("SMTP", pattern, cost),),
        **kwargs,
    )  # type: ignore[arg-type]


def _route(
    org: Organization,
    server: str,
    address: str,
    sender: str = "a@example.org",
    size: int = 100,
    state: LinkState | None = None,
    resolved: bool = True,
) -> tuple[str, str | None]:
    msg = MailMsg.new(sender, [address], MSG_SIZE_HINT=size)
    # As the categorizer resolves a sender its origin vouches for (connector_restrictions).
    msg.resolved_sender = ResolvedSender(f"CN={sender}", frozenset({sender})) if resolved else None
    hop = RoutingEngine(org, org.server(server), state).route(msg, msg.recipients[0])
    return hop.kind, hop.connector


def test_equal_cost_ties_are_broken_by_connector_name() -> None:
    org = organization(["A"], [], (_smtp("Zulu", "A", "*", 5), _smtp("Alpha", "A", "*", 5)))
    assert _route(org, "SA", "x@far.test") == ("dns", "Alpha")


def test_cost_breaks_ties_between_equally_specific_address_spaces_only() -> None:
    org = organization(
        ["A"],
        [],
        (
            _smtp("Cheap wildcard", "A", "*", 1),
            _smtp("Exact", "A", "far.test", 99),
            _smtp("Cheap exact", "A", "far.test", 2),
        ),
    )
    assert _route(org, "SA", "x@far.test") == ("dns", "Cheap exact")
    assert _route(org, "SA", "x@other.test") == ("dns", "Cheap wildcard")


def test_a_routing_group_scoped_connector_does_not_exist_outside_its_group() -> None:
    org = organization(
        ["A", "B"],
        [("A", "B", 1, True), ("B", "A", 1, True)],
        (_smtp("Scoped", "B", "far.test", 1, scope="routing_group"), _smtp("All", "A", "*", 1)),
    )
    assert _route(org, "SB", "x@far.test") == ("dns", "Scoped")
    assert _route(org, "SA", "x@far.test") == ("dns", "All")


def test_a_connector_the_sender_may_not_use_does_not_exist_for_that_sender() -> None:
    limited = _smtp(
        "Partners only", "A", "far.test", 1, restrictions=Restrictions(accept_from=("boss@example.org",))
    )
    org = organization(["A"], [], (limited, _smtp("All", "A", "*", 1)))
    assert _route(org, "SA", "x@far.test", sender="boss@example.org") == ("dns", "Partners only")
    assert _route(org, "SA", "x@far.test", sender="intern@example.org") == ("dns", "All")
    # The MAIL FROM text alone, unresolved, is nobody's.
    assert _route(org, "SA", "x@far.test", sender="boss@example.org", resolved=False) == ("dns", "All")
    small = _smtp("Small", "A", "far.test", 1, restrictions=Restrictions(max_size_kb=1))
    org = organization(["A"], [], (small, _smtp("All", "A", "*", 1)))
    assert _route(org, "SA", "x@far.test", size=5000) == ("dns", "All")


def test_no_fail_over_to_a_less_specific_address_space() -> None:
    org = organization(["A"], [], (_smtp("Exact", "A", "far.test", 1), _smtp("All", "A", "*", 1)))
    state = LinkState(org)
    state.set_connector("Exact", False)
    assert _route(org, "SA", "x@far.test", state=state) == ("unreachable", None)
    state.set_connector("Exact", True)
    assert _route(org, "SA", "x@far.test", state=state) == ("dns", "Exact")


def test_a_connector_in_another_group_is_reached_through_its_bridgehead() -> None:
    org = organization(
        ["A", "B"],
        [("A", "B", 3, True), ("B", "A", 3, True)],
        (_smtp("Far smart host", "B", "*", 1, smart_hosts=("relay.test",)),),
    )
    msg = MailMsg.new("a@example.org", ["x@far.test"])
    hop = RoutingEngine(org, org.server("SA")).route(msg, msg.recipients[0])
    assert (hop.kind, hop.queue, hop.targets) == ("connector", "A-B#0", ("sb.example.org",))
    hop = RoutingEngine(org, org.server("SB")).route(msg, msg.recipients[0])
    assert (hop.kind, hop.targets) == ("smart_host", ("relay.test",))


def test_bridgeheads_are_matched_whatever_their_case_and_any_remote_server_will_do() -> None:
    from harness.lab import config as lab_config

    text = (Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml").read_text()
    text = text.replace(
        "      local_bridgeheads: [EX2]\n      remote_bridgeheads: [EX4]\n",
        "      local_bridgeheads: [ex2]\n",
    )  # Seattle-Tokyo: lower case, any remote server
    ldif = Path(__file__).resolve().parents[1] / "fixtures" / "directory" / "contoso.ldif"
    text = text.replace("../directory/contoso.ldif", str(ldif))
    path = Path(tempfile.mkdtemp()) / "contoso.yaml"
    path.write_text(text)
    org = lab_config.load(path).organization
    seattle_tokyo = next(c for c in org.connectors if c.name == "Seattle-Tokyo RGC")
    assert seattle_tokyo.local_bridgeheads == ("EX2",)
    from_ex2 = RoutingEngine(org, org.server("EX2")).route_to_server("ex4.contoso.com")
    assert (from_ex2.kind, from_ex2.targets) == ("connector", ("ex4.contoso.com",))
    back = RoutingEngine(org, org.server("EX4")).route_to_server("ex2.contoso.com")
    assert (back.kind, back.queue, back.targets) == (
        "connector",
        "Seattle-Tokyo RGC (reciprocal)",
        ("ex2.contoso.com",),
    )
