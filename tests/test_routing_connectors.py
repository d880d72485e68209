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
