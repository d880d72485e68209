"""Routing engine decisions on the contoso lab: least-cost paths over routing group connectors and
address-space matching (most specific wins, then cost, then a local bridgehead)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.lab import config as lab_config
from reference_mta.mailmsg import MailMsg, Recipient
from reference_mta.routing import RoutingEngine
from reference_mta.topology import AddressSpace, Organization

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"


@pytest.fixture(scope="module")
def organization() -> Organization:
    return lab_config.load(LAB).organization


def _engine(organization: Organization, server: str) -> RoutingEngine:
    return RoutingEngine(organization, organization.server(server))


def _remote(address: str, size: int = 1000) -> tuple[MailMsg, Recipient]:
    msg = MailMsg.new("ann@fabrikam.com", [address], MSG_SIZE_HINT=size)
    return msg, msg.recipients[0]


def test_least_cost_path_beats_the_direct_connector(organization: Organization) -> None:
    paths = _engine(organization, "EX1").paths()
    assert paths["london"].cost == 5
    assert [c.name for c in paths["london"].connectors] == ["Seattle-Tokyo RGC", "Tokyo-London RGC"]
    assert paths["tokyo"].cost == 2


def test_home_server_in_same_routing_group_is_the_next_hop(organization: Organization) -> None:
    hop = _engine(organization, "EX1").route_to_server("ex2.contoso.com")
    assert (hop.kind, hop.queue, hop.targets) == ("server", "ex2.contoso.com", ("ex2.contoso.com",))


def test_remote_group_goes_first_to_the_local_bridgehead_then_over_the_connector(
    organization: Organization,
) -> None:
    from_ex1 = _engine(organization, "EX1").route_to_server("ex3.contoso.com")
    assert (from_ex1.kind, from_ex1.queue) == ("server", "ex2.contoso.com")
    from_ex2 = _engine(organization, "EX2").route_to_server("ex3.contoso.com")
    assert (from_ex2.kind, from_ex2.queue, from_ex2.targets) == (
        "connector",
        "Seattle-Tokyo RGC",
        ("ex4.contoso.com",),
    )
    assert "cost 5" in from_ex2.detail


def test_most_specific_address_space_wins_regardless_of_cost(organization: Organization) -> None:
    msg, recipient = _remote("orders@partner.example")
    hop = _engine(organization, "EX2").route(msg, recipient)
    assert (hop.kind, hop.connector) == ("dns", "Partner SMTP Connector")  # cost 5 beats `*` and `*.example`


def test_wildcard_address_space_beats_the_catch_all(organization: Organization) -> None:
    msg, recipient = _remote("ops@tailspin.example")
    hop = _engine(organization, "EX3").route(msg, recipient)
    assert (hop.kind, hop.connector, hop.targets) == (
        "smart_host",
        "Example TLD SMTP Connector",
        ("smarthost.isp.example",),
    )


def test_connector_size_restriction_makes_it_invisible(organization: Organization) -> None:
    msg, recipient = _remote("orders@partner.example", size=3 * 1024 * 1024)
    hop = _engine(organization, "EX2").route(msg, recipient)
    assert hop.connector != "Partner SMTP Connector"


def test_catch_all_on_another_server_routes_to_its_bridgehead(organization: Organization) -> None:
    msg, recipient = _remote("someone@fabrikam.com")
    hop = _engine(organization, "EX2").route(msg, recipient)
    assert (hop.kind, hop.queue, hop.connector) == (
        "server",
        "ex1.contoso.com",
        "Internet Mail SMTP Connector",
    )


@pytest.mark.parametrize(
    ("pattern", "domain", "expected"),
    [
        ("contoso.com", "contoso.com", 10_011),
        ("contoso.com", "a.contoso.com", None),
        ("*.contoso.com", "a.contoso.com", 12),
        ("*.contoso.com", "contoso.com", None),
        ("abc.*.contoso.com", "x.contoso.com", 12),
        ("*", "anything.example", 0),
        # `%` is exactly one character: above every `*` pattern, below an exact domain.
        ("ab%.com", "abc.com", 5_006),
        ("ab%.com", "ab.com", None),
        ("ab%.com", "abcd.com", None),
        ("*.ab%.com", "x.abz.com", 7),
        ("*.ab%.com", "abz.com", None),
        ("[ab]%.com", "ax.com", None),
    ],
)
def test_address_space_specificity(pattern: str, domain: str, expected: int | None) -> None:
    assert AddressSpace("SMTP", pattern).specificity(domain) == expected
