"""Connectors that join routing groups besides routing group connectors: X.400 connectors (and their
lab-file errors), decided by the routing engine on a copy of the contoso lab with connectors added."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.lab import config as lab_config
from harness.yamlsource import SourceError
from reference_mta.linkstate import LinkState
from reference_mta.mailmsg import MailMsg
from reference_mta.queue_contract import HopKind
from reference_mta.routing import RoutingEngine
from reference_mta.topology import Organization

ROOT = Path(__file__).resolve().parents[1]
CONTOSO = ROOT / "fixtures" / "labs" / "contoso.yaml"
LDIF = ROOT / "fixtures" / "directory" / "contoso.ldif"

# Cheaper than Seattle-Tokyo RGC (2) + Tokyo-London RGC (3): Seattle reaches London over X.400.
X400_SEATTLE_LONDON = """
    - type: x400
      name: Seattle-London X.400 Connector
      routing_group: Seattle
      connects_to: London
      cost: 1
      local_bridgeheads: [EX2]
      remote_bridgeheads: [EX3]
"""


def _lab(tmp_path: Path, connectors: str) -> Path:
    text = CONTOSO.read_text(encoding="utf-8").replace("../directory/contoso.ldif", str(LDIF))
    marker = "\ninternet:\n"
    assert text.count(marker) == 1
    path = tmp_path / "contoso.yaml"
    path.write_text(text.replace(marker, connectors.rstrip("\n") + "\n" + marker), encoding="utf-8")
    return path


def _organization(tmp_path: Path, connectors: str) -> Organization:
    return lab_config.load(_lab(tmp_path, connectors)).organization


def _error(tmp_path: Path, connectors: str) -> SourceError:
    path = _lab(tmp_path, connectors)
    with pytest.raises(SourceError) as info:
        lab_config.load(path)
    assert info.value.path == str(path)
    return info.value


def test_x400_connector_on_the_least_cost_path_is_an_x400_hop(tmp_path: Path) -> None:
    organization = _organization(tmp_path, X400_SEATTLE_LONDON)
    hop = RoutingEngine(organization, organization.server("EX2")).route_to_server("ex3.contoso.com")
    assert (hop.kind, hop.queue, hop.connector, hop.targets) == (
        HopKind.X400,
        "Seattle-London X.400 Connector",
        "Seattle-London X.400 Connector",
        ("ex3.contoso.com",),
    )
    assert "cost 1" in hop.detail


def test_a_server_that_does_not_host_the_x400_connector_sends_to_its_bridgehead(tmp_path: Path) -> None:
    organization = _organization(tmp_path, X400_SEATTLE_LONDON)
    hop = RoutingEngine(organization, organization.server("EX1")).route_to_server("ex3.contoso.com")
    assert (hop.kind, hop.queue, hop.connector) == (
        HopKind.SERVER,
        "ex2.contoso.com",
        "Seattle-London X.400 Connector",
    )


def test_x400_connector_down_falls_back_to_the_routing_group_connectors(tmp_path: Path) -> None:
    organization = _organization(tmp_path, X400_SEATTLE_LONDON)
    link_state = LinkState(organization)
    link_state.set_connector("Seattle-London X.400 Connector", up=False)
    hop = RoutingEngine(organization, organization.server("EX2"), link_state).route_to_server(
        "ex3.contoso.com"
    )
    assert (hop.kind, hop.queue) == (HopKind.CONNECTOR, "Seattle-Tokyo RGC")


def test_x400_connector_gets_no_reciprocal(tmp_path: Path) -> None:
    organization = _organization(tmp_path, X400_SEATTLE_LONDON)
    hop = RoutingEngine(organization, organization.server("EX3")).route_to_server("ex1.contoso.com")
    assert (hop.kind, hop.queue) == (HopKind.CONNECTOR, "Tokyo-London RGC (reciprocal)")


def test_x400_address_space_wins_for_an_x400_address(tmp_path: Path) -> None:
    organization = _organization(
        tmp_path,
        """
    - type: x400
      name: Fabrikam X.400 Connector
      routing_group: Tokyo
      local_bridgeheads: [EX4]
      address_spaces: [{type: X400, pattern: "c=US;a= ;p=Fabrikam*", cost: 1}]
""",
    )
    msg = MailMsg.new("ann@contoso.com", ["c=US;a= ;p=Fabrikam;s=Ray"])
    recipient = msg.recipients[0]
    recipient.address_type = "X400"
    here = RoutingEngine(organization, organization.server("EX4")).route(msg, recipient)
    assert (here.kind, here.queue, here.targets) == (HopKind.X400, "Fabrikam X.400 Connector", ())
    elsewhere = RoutingEngine(organization, organization.server("EX2")).route(msg, recipient)
    assert (elsewhere.kind, elsewhere.queue) == (HopKind.CONNECTOR, "Seattle-Tokyo RGC")


@pytest.mark.parametrize(
    ("connector", "field", "message"),
    [
        (
            "      connects_to: Paris\n      local_bridgeheads: [EX2]\n      remote_bridgeheads: [EX3]\n",
            "connects_to",
            "no routing group named 'Paris'",
        ),
        (
            "      connects_to: London\n      local_bridgeheads: [EX2]\n",
            "connects_to",
            "needs remote_bridgeheads",
        ),
        (
            "      connects_to: London\n      local_bridgeheads: [EX2]\n      remote_bridgeheads: [EX4]\n",
            "remote_bridgeheads[0]",
            "EX4 is in routing group 'Tokyo', not 'London'",
        ),
        (
            "      connects_to: London\n      local_bridgeheads: [EX3]\n      remote_bridgeheads: [EX3]\n",
            "local_bridgeheads[0]",
            "EX3 is in routing group 'London', not 'Seattle'",
        ),
        ("      local_bridgeheads: [EX2]\n", "organization.connectors[", "needs connects_to"),
        (
            "      connects_to: London\n      local_bridgeheads: [EX1, EX2]\n"
            "      remote_bridgeheads: [EX3]\n",
            "local_bridgeheads",
            "",
        ),
    ],
)
def test_x400_connector_errors_name_the_line(
    tmp_path: Path, connector: str, field: str, message: str
) -> None:
    head = "\n    - type: x400\n      name: Broken X.400 Connector\n      routing_group: Seattle\n"
    error = _error(tmp_path, head + connector)
    assert field in error.field, error
    assert message in error.message, error
    assert error.line is not None


# --- the default lab: SMTP and X.400 connectors from Tokyo to London ---------------------------------


def _contoso() -> Organization:
    return lab_config.load(CONTOSO).organization


def _route(organization: Organization, server: str, *down: str) -> RoutingEngine:
    link_state = LinkState(organization)
    for name in down:
        if any(s.name == name for s in organization.servers):
            link_state.set_server(name, up=False)
        else:
            link_state.set_connector(name, up=False)
    return RoutingEngine(organization, organization.server(server), link_state)


def test_smtp_connector_between_groups_is_taken_when_the_rgc_is_down() -> None:
    organization = _contoso()
    engine = _route(organization, "EX4", "Tokyo-London RGC")
    hop = engine.route_to_server("ex3.contoso.com")
    assert (hop.kind, hop.queue, hop.targets) == (
        HopKind.CONNECTOR,
        "Tokyo-London SMTP Connector",
        ("ex3.contoso.com",),
    )
    assert "cost 9" in hop.detail
    # With the RGC up it is dearer than the RGC, so unused.
    plain = _route(organization, "EX4").route_to_server("ex3.contoso.com")
    assert plain.queue == "Tokyo-London RGC"


def test_seattle_keeps_its_direct_connector_when_tokyo_london_is_down() -> None:
    hop = _route(_contoso(), "EX1", "Tokyo-London RGC").route_to_server("ex3.contoso.com")
    assert (hop.kind, hop.queue) == (HopKind.CONNECTOR, "Seattle-London RGC")  # 10 < 2 + 9


def test_a_mixed_path_smtp_then_routing_group_connector() -> None:
    # EX2 down takes both Seattle-Tokyo connectors with it: Tokyo reaches Seattle through London,
    # over the SMTP connector (9) and then the Seattle-London RGC's reciprocal (10).
    engine = _route(_contoso(), "EX4", "Tokyo-London RGC", "EX2")
    hop = engine.route_to_server("ex1.contoso.com")
    assert (hop.kind, hop.queue, hop.targets) == (
        HopKind.CONNECTOR,
        "Tokyo-London SMTP Connector",
        ("ex3.contoso.com",),
    )
    assert "path Tokyo > London > Seattle cost 19" in hop.detail
    paths = engine.paths()
    assert [c.name for c in paths["seattle"].connectors] == [
        "Tokyo-London SMTP Connector",
        "Seattle-London RGC (reciprocal)",
    ]


def test_x400_connector_is_taken_when_the_cheaper_connectors_are_down() -> None:
    engine = _route(_contoso(), "EX4", "Tokyo-London RGC", "Tokyo-London SMTP Connector")
    hop = engine.route_to_server("ex3.contoso.com")
    assert (hop.kind, hop.queue, hop.targets) == (
        HopKind.X400,
        "Tokyo-London X.400 Connector",
        ("ex3.contoso.com",),
    )


def test_smtp_connector_into_a_group_whose_servers_are_all_down_is_down() -> None:
    organization = _contoso()
    link_state = LinkState(organization)
    link_state.set_server("EX3", up=False)
    smtp = next(c for c in organization.connectors if c.name == "Tokyo-London SMTP Connector")
    assert not link_state.connector_up(smtp)
    hop = RoutingEngine(organization, organization.server("EX4"), link_state).route_to_server(
        "ex3.contoso.com"
    )
    assert hop.kind == HopKind.UNREACHABLE


def test_smtp_connector_between_groups_with_a_smart_host(tmp_path: Path) -> None:
    organization = _organization(
        tmp_path,
        """
    - type: smtp
      name: Seattle-London SMTP Connector
      routing_group: Seattle
      connects_to: London
      cost: 1
      bridgeheads: [EX1]
      delivery: {smart_hosts: [ex3.contoso.com]}
""",
    )
    hop = RoutingEngine(organization, organization.server("EX1")).route_to_server("ex3.contoso.com")
    assert (hop.kind, hop.queue, hop.targets) == (
        HopKind.SMART_HOST,
        "Seattle-London SMTP Connector",
        ("ex3.contoso.com",),
    )


@pytest.mark.parametrize(
    ("connector", "field", "message"),
    [
        (
            "      bridgeheads: [EX1]\n      delivery: {dns: true}\n",
            "organization.connectors[",
            "needs address_spaces",
        ),
        (
            "      connects_to: Seattle\n      bridgeheads: [EX1]\n      delivery: {dns: true}\n",
            "connects_to",
            "must join two routing groups",
        ),
        (
            "      cost: 3\n      bridgeheads: [EX1]\n      delivery: {dns: true}\n"
            "      address_spaces: [{type: SMTP, pattern: x.example}]\n",
            "cost",
            "set connects_to",
        ),
    ],
)
def test_smtp_connector_errors_name_the_line(
    tmp_path: Path, connector: str, field: str, message: str
) -> None:
    head = "\n    - type: smtp\n      name: Broken SMTP Connector\n      routing_group: Seattle\n"
    error = _error(tmp_path, head + connector)
    assert field in error.field, error
    assert message in error.message, error


# --- equal-cost ties are spread ----------------------------------------------------------------------


def test_equal_cost_connectors_take_turns_one_message_each() -> None:
    organization = lab_config.load(ROOT / "fixtures" / "labs" / "route-choices.yaml").organization
    engine = RoutingEngine(organization, organization.server("EX1"))
    chosen = []
    for _ in range(3):
        msg = MailMsg.new("alice@contoso.com", ["ops@tie.example", "dev@tie.example"])
        hops = {engine.route(msg, recipient).connector for recipient in msg.recipients}
        assert len(hops) == 1  # every recipient of one message takes the same connector
        chosen.append(hops.pop())
    assert chosen == ["Tie Alpha SMTP Connector", "Tie Beta SMTP Connector", "Tie Alpha SMTP Connector"]


def test_a_connector_on_this_server_still_comes_before_the_turns() -> None:
    organization = lab_config.load(ROOT / "fixtures" / "labs" / "route-choices.yaml").organization
    engine = RoutingEngine(organization, organization.server("EX1"))
    for _ in range(3):
        msg = MailMsg.new("alice@contoso.com", ["ops@local.example"])
        assert engine.route(msg, msg.recipients[0]).connector == "Local Z SMTP Connector"
