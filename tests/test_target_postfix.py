"""Postfix standing in for EX1: the configuration rendered from the lab file, and a real Postfix (the
Debian package) started in EX1's network namespace, answering real SMTP sessions from the lab's clients.

The rendering tests run everywhere; the live ones need root and Postfix and are skipped otherwise, with
the reason.
"""

from __future__ import annotations

import os
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import targets
from harness.evidence import Evidence
from harness.lab import config as lab_config
from harness.lab.config import LabConfig
from harness.lab.runtime import Lab
from harness.runner import netns_first_octet, relocation
from harness.targets import postfix
from harness.targets.recipients import Contact, Group, Mailbox, RecipientTable

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
BASE = f"198.18.{netns_first_octet() + 110 + WORKER % 10}.0"
UNAVAILABLE = targets.POSTFIX.unavailable()
live = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


def netns_config() -> LabConfig:
    return lab_config.load(LAB, base=BASE, port_offset=0)


TABLE = RecipientTable(
    mailboxes=[
        Mailbox("alice@contoso.com", ("alice@contoso.com", "alice.smith@contoso.com"), "EX1"),
        Mailbox("bob@contoso.com", ("bob@contoso.com",), "EX2"),
    ],
    groups=[Group(("sales@contoso.com",), ("alice@contoso.com", "bob@contoso.com"))],
    contacts=[Contact(("pat@contoso.com",), "pat@partner.example")],
)


def lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.strip()}


@pytest.mark.skipif(postfix.installed() is not None, reason=postfix.installed() or "")
def test_the_lab_file_becomes_postfix_tables(tmp_path: Path) -> None:
    files = postfix.render(netns_config(), "EX1", TABLE, tmp_path)
    main = lines(files["main.cf"])
    assert "myhostname = ex1.contoso.com" in main
    assert "virtual_mailbox_domains = contoso.com, litware.com" in main
    # The shared namespace and the connectors that allow relaying are relay domains.
    assert "relay_domains = adatum.com, partner.example, shared.contoso.com" in main
    assert "relay_domains_reject_code = 550" in main
    assert "message_size_limit = 4194304" in main
    assert f"inet_interfaces = {BASE[:-1]}11" in next(
        line for line in main if line.startswith("inet_interfaces")
    )
    # Mailboxes: every one is known (so RCPT can be checked); those on other servers go there by SMTP.
    assert lines(files["virtual_mailbox"]) == {
        "alice@contoso.com alice@contoso.com/",
        "bob@contoso.com bob@contoso.com/",
    }
    assert f"bob@contoso.com smtp:[{BASE[:-1]}21]:25" in lines(files["transport"])
    aliases = lines(files["virtual_alias"])
    assert "alice.smith@contoso.com alice@contoso.com" in aliases
    assert "sales@contoso.com alice@contoso.com, bob@contoso.com" in aliases
    assert "pat@contoso.com pat@partner.example" in aliases
    # The relay list: app01 (relay-host), and the organization's other servers, which Exchange trusts.
    clients = lines(files["relay_clients"])
    assert {f"{BASE[:-1]}202/32 OK", f"{BASE[:-1]}21/32 OK", f"{BASE[:-1]}31/32 OK"} <= clients
    assert not [line for line in clients if line.startswith((f"{BASE[:-1]}11/", f"{BASE[:-1]}203/"))]
    # Every other virtual server of EX1 is a listener of its own with what differs from the default one.
    master = files["master.cf"].splitlines()
    assert master[0] == f"{BASE[:-1]}11:25 inet n - n - - smtpd"
    open_relay = next(line for line in master if line.startswith(f"{BASE[:-1]}12:25 "))
    assert "relay_clients_1" in open_relay and lines(files["relay_clients_1"]) == {"0.0.0.0/0 OK"}
    strict = next(line for line in master if line.startswith(f"{BASE[:-1]}15:25 "))
    assert "-o { myhostname = smtp.contoso.com }" in strict and "-o { message_size_limit = 65536 }" in strict
    # Connection control: the Restricted virtual server refuses the attacker when it connects.
    assert lines(files["connection_clients_3"]) == {f"{BASE[:-1]}203/32 REJECT"}
    assert lines(files["connection_clients"]) == set()
    members = next(line for line in master if line.startswith(f"{BASE[:-1]}17:25 "))

    assert "-o { smtpd_sender_restrictions = permit_sasl_authenticated, reject }" in members
    # Routing decides as the reference MTA does: London's *.example connector is cheapest through Tokyo,
    # so EX1 hands such mail to EX2, the Seattle-Tokyo bridgehead; the partner connector's bridgehead is
    # EX2; northwind.example has a DNS connector on EX1 itself, so Postfix looks up its MX.
    transport = lines(files["transport"])
    assert f".example smtp:[{BASE[:-1]}21]:25" in transport
    assert f"partner.example smtp:[{BASE[:-1]}21]:25" in transport
    assert "northwind.example :" in transport


def test_a_target_can_stand_in_for_another_server() -> None:
    assert targets.get("postfix").stands_in_for == "EX1"
    assert targets.get("postfix:EX2").stands_in_for == "EX2"
    with pytest.raises(ValueError, match="runs every lab server"):
        targets.get("reference:EX2")
    with pytest.raises(ValueError, match="unknown target"):
        targets.get("sendmail")


def test_a_lab_with_namespaces_uses_the_benchmarking_range_and_standard_ports() -> None:
    base, offset = relocation(netns=True)
    assert base is not None and base.startswith("198.18.") and offset == 0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with targets.POSTFIX.lab(netns_config()) as running:
        yield running


def send(
    lab: Lab, client: str, sender: str, recipients: list[str], subject: str
) -> dict[str, tuple[int, bytes]]:
    ex1 = lab.config.organization.server("EX1").default_virtual_server
    with smtplib.SMTP(ex1.address, ex1.port, source_address=(lab.config.host(client).address, 0)) as smtp:
        smtp.ehlo("client.example")
        refused: dict[str, tuple[int, bytes]] = {}
        try:
            refused = smtp.sendmail(sender, recipients, f"Subject: {subject}\r\n\r\nhello\r\n")
        except smtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients
        return refused


@live
def test_postfix_answers_for_ex1_and_stores_local_mail(lab: Lab) -> None:
    assert "EX1" not in lab.servers and "EX1" in lab.stand_ins
    assert send(lab, "internet", "ann@fabrikam.com", ["alice.smith@contoso.com"], "to alice") == {}
    assert lab.settle(timeout=20)
    found = [d for d in Evidence.collect(lab).deliveries if b"Subject: to alice" in d.data]
    assert [(d.kind, d.where, d.server, d.sender) for d in found] == [
        ("mailbox", "alice@contoso.com", "EX1", "ann@fabrikam.com")
    ]


@live
def test_postfix_refuses_to_relay_for_a_stranger_and_relays_for_the_relay_list(lab: Lab) -> None:
    refused = send(lab, "attacker", "x@tailspin.example", ["nancy@northwind.example"], "relay probe")
    assert refused["nancy@northwind.example"][0] == 550
    assert send(lab, "relay-host", "monitor@contoso.com", ["ops@nomx.net"], "from the relay list") == {}
    assert lab.settle(timeout=20)
    sinks = [d for d in Evidence.collect(lab).deliveries if d.kind == "sink"]
    assert [(d.where, d.rcpt) for d in sinks if b"from the relay list" in d.data] == [
        ("nomx-host", ("ops@nomx.net",))
    ]
    assert not [d for d in sinks if b"relay probe" in d.data]


@live
def test_mail_for_a_mailbox_on_ex2_goes_on_to_the_reference_server(lab: Lab) -> None:
    assert send(lab, "internet", "ann@fabrikam.com", ["bob@contoso.com"], "to bob") == {}
    assert lab.settle(timeout=20)
    found = [d for d in Evidence.collect(lab).deliveries if b"Subject: to bob" in d.data]
    assert [(d.kind, d.where, d.server) for d in found] == [("mailbox", "bob@contoso.com", "EX2")]


@live
def test_postfix_logs_to_the_lab_folder(lab: Lab) -> None:
    assert send(lab, "internet", "ann@fabrikam.com", ["alice@contoso.com"], "logged") == {}
    assert lab.settle(timeout=20)
    log = lab.stand_ins["EX1"].log_path.read_text(encoding="utf-8", errors="replace")
    assert "postfix/smtpd" in log and "status=sent" in log


@live
def test_postfix_offers_starttls_with_the_lab_certificate(lab: Lab) -> None:
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


@live
def test_an_account_of_the_directory_authenticates_and_may_relay(lab: Lab) -> None:
    ex1 = lab.config.organization.server("EX1").default_virtual_server
    source = (lab.config.host("lan").address, 0)
    with smtplib.SMTP(ex1.address, ex1.port, source_address=source) as smtp:
        smtp.ehlo("wks01.contoso.com")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("alice", "not-her-password")
        smtp.login("alice@contoso.com", "Alice-P@ss1")  # Dovecot checks it against the directory's accounts
        refused = smtp.sendmail(
            "alice@contoso.com", ["chris@fabrikam.com"], "Subject: authenticated relay\r\n\r\nx\r\n"
        )
    assert refused == {}
    assert lab.settle(timeout=20)
    sinks = [d for d in Evidence.collect(lab).deliveries if b"authenticated relay" in d.data]
    assert [(d.kind, d.where, d.rcpt) for d in sinks] == [("sink", "fabrikam-mx", ("chris@fabrikam.com",))]
