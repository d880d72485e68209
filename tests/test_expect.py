"""Outcome checks over hand-built evidence: each check can fail, names compare without regard to case, and
the evidence of gateway deliveries is read through the store."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from harness.judge.evidence import Delivery, DeliveryKind, DnsQuery, Evidence, LdapQuery
from harness.judge.expectations import Check, check_outcome
from harness.lab.runtime import Lab
from reference_mta import durable, mta
from reference_mta.mailmsg import MailMsg

MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


def evidence(**fields: Any) -> Evidence:
    defaults: dict[str, Any] = {
        "hosts": {"127.77.0.11": "EX1", "127.77.0.200": "internet"},
        "dns": [],
        "ldap": [],
        "deliveries": [],
        "tracking": {},
        "queues": {},
    }
    return Evidence(**{**defaults, **fields})


def sink(where: str, rcpt: tuple[str, ...], peer: str = "EX2", sender: str = "ann@fabrikam.com") -> Delivery:
    return Delivery(DeliveryKind.SINK, where, peer, sender, rcpt, MESSAGE)


def only(outcome: dict[str, Any], seen: Evidence) -> Check:
    (check,) = check_outcome(outcome, seen)
    return check


# --- not_delivered / delivered recipients -----------------------------------------------------------

TO_BOB_AND_EVE = evidence(deliveries=[sink("partner-mx", ("bob@x", "eve@x"))])


@pytest.mark.parametrize(
    "rcpt", ["eve@x", "EVE@X", ["eve@x"], ["carol@x", "eve@x"], ["bob@x", "eve@x"]], ids=str
)
def test_not_delivered_fails_when_any_listed_recipient_got_it(rcpt: str | list[str]) -> None:
    check = only({"not_delivered": [{"sink": "partner-mx", "rcpt": rcpt}]}, TO_BOB_AND_EVE)
    assert not check.passed
    assert check.failures == ["delivered anyway: sink partner-mx from EX2: ann@fabrikam.com → bob@x, eve@x"]


@pytest.mark.parametrize("rcpt", ["carol@x", ["carol@x", "mallory@x"]], ids=str)
def test_not_delivered_passes_when_no_listed_recipient_got_it(rcpt: str | list[str]) -> None:
    assert only({"not_delivered": [{"sink": "partner-mx", "rcpt": rcpt}]}, TO_BOB_AND_EVE).passed


@pytest.mark.parametrize(
    ("rcpt", "passed"),
    [("eve@x", False), (["eve@x", "carol@x"], False), (["Eve@x", "BOB@x"], True), (["bob@x", "eve@x"], True)],
    ids=str,
)
def test_delivered_keeps_the_exact_recipient_set(rcpt: str | list[str], passed: bool) -> None:
    assert only({"delivered": [{"sink": "partner-mx", "rcpt": rcpt}]}, TO_BOB_AND_EVE).passed is passed


def test_not_delivered_without_rcpt_matches_any_delivery_there() -> None:
    assert not only({"not_delivered": [{"sink": "partner-mx"}]}, TO_BOB_AND_EVE).passed
    assert only({"not_delivered": [{"sink": "northwind-mx"}]}, TO_BOB_AND_EVE).passed


# --- DNS: type and client ignore case ---------------------------------------------------------------

MX_QUERY = evidence(
    dns=[DnsQuery("EX1", "127.77.0.11", "contoso.com", "MX", "NOERROR", ("10 mail.contoso.com.",), "udp")]
)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "contoso.com", "type": "mx"},
        {"name": "contoso.com", "client": "ex1"},
        {"name": "Contoso.COM.", "type": "Mx", "client": "Ex1"},
    ],
    ids=["type", "client", "all"],
)
def test_dns_query_made_is_found_whatever_the_case(spec: dict[str, Any]) -> None:
    assert only({"dns": [spec]}, MX_QUERY).passed
    absent = only({"dns": [{**spec, "absent": True}]}, MX_QUERY)
    assert not absent.passed
    assert absent.failures[0].endswith("was made")


@pytest.mark.parametrize(
    "spec",
    [{"name": "contoso.com", "type": "a"}, {"name": "contoso.com", "client": "internet"}],
    ids=["other-type", "other-client"],
)
def test_dns_query_not_made(spec: dict[str, Any]) -> None:
    assert not only({"dns": [spec]}, MX_QUERY).passed
    assert only({"dns": [{**spec, "absent": True}]}, MX_QUERY).passed


# --- every other name comparison ignores case too ----------------------------------------------------

EVENT = {
    "event-id": 1019,
    "recipient-address": "alice@contoso.com",
    "sender-address": "ann@fabrikam.com",
    "client-ip": "127.77.0.200",
    "client-hostname": "mail-out.fabrikam.com",
    "spec": "IN-4",
    "queue": "-",
    "msgid": "<plain-0001@fabrikam.com>",
    "message-subject": "hi",
    "timestamp": 1.0,
}
EVERYTHING = evidence(
    ldap=[LdapQuery("EX1", "DC=contoso,DC=com", "(proxyAddresses=smtp:alice@contoso.com)", "SUBTREE", 1)],
    deliveries=[
        Delivery(
            DeliveryKind.MAILBOX,
            "alice@contoso.com",
            "EX1",
            "ann@fabrikam.com",
            ("alice@contoso.com",),
            MESSAGE,
        ),
        sink("partner-mx", ("orders@partner.example",)),
        Delivery(
            DeliveryKind.GATEWAY, "Notes Connector", "EX4", "ann@fabrikam.com", ("First Last/Org",), MESSAGE
        ),
    ],
    tracking={"EX1": [EVENT], "EX2": [{**EVENT, "timestamp": 2.0}]},
)


@pytest.mark.parametrize(
    "outcome",
    [
        {"delivered": [{"mailbox": "Alice@Contoso.com", "server": "ex1"}]},
        {"delivered": [{"sink": "Partner-MX", "peer": "ex2"}]},
        {"delivered": [{"gateway": "notes connector", "server": "ex4"}]},
        {"ldap": [{"filter": "(proxyaddresses=smtp:ALICE@contoso.com)", "client": "ex1"}]},
        {"tracking": {"ex1": [1019]}},
        {"tracking": {"ex1": {"ALICE@contoso.com": [1019]}}},
        {
            "events": [
                {"server": "ex1", "event": 1019, "client": "INTERNET", "recipient": "Alice@contoso.com"}
            ]
        },
        {"hops": ["ex1", "Ex2"]},
    ],
    ids=["mailbox", "sink", "gateway", "ldap", "tracking", "tracking-rcpt", "events", "hops"],
)
def test_names_compare_without_regard_to_case(outcome: dict[str, Any]) -> None:
    check = only(outcome, EVERYTHING)
    assert check.passed, check.failures
    if "delivered" in outcome:
        negated = only({"not_delivered": outcome["delivered"]}, EVERYTHING)
        assert not negated.passed


@pytest.mark.parametrize(
    "outcome",
    [
        {"ldap": [{"filter": "(proxyaddresses=smtp:ALICE@contoso.com)", "client": "ex1", "absent": True}]},
        {"events": [{"server": "ex1", "event": 1019, "client": "INTERNET", "absent": True}]},
    ],
    ids=["ldap", "events"],
)
def test_absent_checks_fail_whatever_the_case(outcome: dict[str, Any]) -> None:
    assert not only(outcome, EVERYTHING).passed


def test_a_gateway_delivery_on_another_server_does_not_match() -> None:
    check = only({"delivered": [{"gateway": "Notes Connector", "server": "EX1"}]}, EVERYTHING)
    assert not check.passed
    assert "handed to the gateway on EX4, expected EX1" in "\n".join(check.failures)


# --- evidence -----------------------------------------------------------------------------------------


def test_evidence_reads_gateway_transfers_through_the_store(tmp_path: Path) -> None:
    msg = MailMsg.new("ann@fabrikam.com", ["First Last/Org", "Other Person/Org"])
    # What the MTA puts in the gateway's MTS-OUT folder: the content, then the envelope.
    folder = mta.gateway_outlet(tmp_path, "EX4", "Notes Connector").folder
    folder.mkdir(parents=True)
    durable.write(folder / f"{msg.id}.eml", MESSAGE)
    durable.write(folder / f"{msg.id}.json", msg.to_json().encode())
    # Only what Evidence.collect reads of a lab: no sockets needed to test the reading.
    lab = SimpleNamespace(
        config=SimpleNamespace(hosts={}),
        dns_queries=list,
        ldap_queries=list,
        sink_captures=list,
        stand_ins={},
        outside={},
        reference_server_names=[],
        workdir=tmp_path,
        tracking_dir=tmp_path / "tracking",
        queues=dict,
    )
    (delivery,) = Evidence.collect(cast(Lab, lab)).deliveries
    assert delivery == Delivery(
        "gateway",
        "Notes Connector",
        "EX4",
        "ann@fabrikam.com",
        ("First Last/Org", "Other Person/Org"),
        MESSAGE,
    )
    assert delivery.describe() == (
        "gateway Notes Connector on EX4: ann@fabrikam.com → First Last/Org, Other Person/Org"
    )
