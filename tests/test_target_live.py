"""What every real MTA standing in for EX1 must do as configured from the lab, over real SMTP sessions
from the lab's clients: take mail for its own mailboxes, pass mail for a mailbox on EX2 on to the
reference server there, refuse to relay for a stranger and relay for the relay list. The per-MTA modules
test what only that MTA's configuration has."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest
from standin import delivered, netns_config, send

from harness import targets
from harness.judge.evidence import Evidence
from harness.lab.runtime import Lab
from harness.targets import Target

# Each target's labs live in their own band of the namespace network (tests/standin.py).
BANDS = {"postfix": 110, "exim": 170, "opensmtpd": 150}
# What each MTA's log says about a message received and one delivered.
LOGGED = {
    "postfix": ("postfix/smtpd", "status=sent"),
    "exim": ("<= ann@fabrikam.com", "=> alice"),
    "opensmtpd": ("smtp message msgid=", "result=Ok stat=Delivered"),
}


@pytest.fixture(
    scope="module", params=[targets.POSTFIX, targets.EXIM, targets.OPENSMTPD], ids=lambda t: t.name
)
def target(request: pytest.FixtureRequest) -> Target:
    chosen: Target = request.param
    if (why := chosen.unavailable()) is not None:
        pytest.skip(why)
    return chosen


@pytest.fixture(scope="module")
def lab(target: Target) -> Iterator[Lab]:
    with target.lab(netns_config(BANDS[target.name])) as running:
        yield running


def test_the_mta_logs_to_the_lab_folder(target: Target, lab: Lab) -> None:
    assert send(lab, "internet", "ann@fabrikam.com", ["alice@contoso.com"], "logged") == {}
    assert lab.settle(timeout=20)
    log = lab.stand_ins["EX1"].log_path.read_text(encoding="utf-8", errors="replace")
    received, delivered_locally = LOGGED[target.name]
    assert received in log and delivered_locally in log


def test_the_mta_answers_for_ex1_and_stores_local_mail(lab: Lab) -> None:
    assert "EX1" not in lab.servers and "EX1" in lab.stand_ins
    assert send(lab, "internet", "ann@fabrikam.com", ["alice.smith@contoso.com"], "to alice") == {}
    assert delivered(lab, "to alice") == [("mailbox", "alice@contoso.com", "EX1")]
    found = [d for d in Evidence.collect(lab).deliveries if b"Subject: to alice" in d.data]
    assert [d.sender for d in found] == ["ann@fabrikam.com"]


def test_the_mta_refuses_to_relay_for_a_stranger_and_relays_for_the_relay_list(lab: Lab) -> None:
    refused = send(lab, "attacker", "x@tailspin.example", ["nancy@northwind.example"], "relay probe")
    assert refused["nancy@northwind.example"][0] == 550
    assert send(lab, "relay-host", "monitor@contoso.com", ["ops@nomx.net"], "from the relay list") == {}
    assert delivered(lab, "from the relay list") == [("sink", "nomx-host", "EX1")]
    assert delivered(lab, "relay probe") == []


def test_mail_for_a_mailbox_on_ex2_goes_on_to_the_reference_server(lab: Lab) -> None:
    assert send(lab, "internet", "ann@fabrikam.com", ["bob@contoso.com"], "to bob") == {}
    assert delivered(lab, "to bob") == [("mailbox", "bob@contoso.com", "EX2")]


def test_the_mta_offers_starttls_with_the_lab_certificate_if_it_can(target: Target, lab: Lab) -> None:
    if "starttls" not in target.capabilities:
        pytest.skip(f"target {target.name} offers no STARTTLS here")
    ex1 = lab.config.organization.server("EX1").default_virtual_server
    source = (lab.config.host("internet").address, 0)
    with smtplib.SMTP(ex1.address, ex1.port, source_address=source) as smtp:
        smtp.ehlo("client.example")
        assert smtp.has_extn("starttls")
        context = lab.certificates.client_context()
        # smtplib names the server by the address it connected to; the chain is still checked.
        context.check_hostname = False
        code, _ = smtp.starttls(context=context)
        assert code == 220
        smtp.ehlo("client.example")
        assert not smtp.has_extn("starttls")  # RFC 3207: not offered again inside TLS
        assert smtp.sock is not None and smtp.sock.version() is not None
