"""OpenSMTPD standing in for EX1: the configuration rendered from the lab file, and a real OpenSMTPD (the
Debian package, unpacked) started in EX1's network namespace, answering real SMTP sessions from the lab's
clients.

The rendering tests run everywhere; the live ones need root and the unpacked OpenSMTPD and are skipped
otherwise, with the reason.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
import standin
from standin import base, send

from harness import targets
from harness.judge.evidence import Evidence
from harness.lab.config import LabConfig
from harness.lab.runtime import Lab
from harness.targets import opensmtpd

BAND = 150
NET = base(BAND)[:-1]
UNAVAILABLE = targets.OPENSMTPD.unavailable()
live = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


def netns_config() -> LabConfig:
    return standin.netns_config(BAND)


TABLE = standin.TABLE


def rendered(tmp_path: Path, chain: Path | None = None) -> dict[str, str]:
    return opensmtpd.render(netns_config(), "EX1", TABLE, tmp_path, chain)


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_each_virtual_server_is_a_tagged_listener(tmp_path: Path) -> None:
    conf = lines(rendered(tmp_path, tmp_path / "etc" / "tls-chain.pem")["smtpd.conf"])
    listens = [line for line in conf if line.startswith("listen on")]
    assert listens[0] == (
        f'listen on {NET}11 port 25 hostname "ex1.contoso.com" tag vs0 tls pki "ex1.contoso.com"'
    )
    assert f'listen on {NET}15 port 25 hostname "smtp.contoso.com" tag vs4' in listens
    assert f'pki ex1.contoso.com cert "{tmp_path}/etc/tls-chain.pem"' in conf
    # Without a certificate nothing offers STARTTLS.
    assert not [line for line in lines(rendered(tmp_path)["smtpd.conf"]) if " tls " in line]


def test_mailboxes_aliases_and_other_servers(tmp_path: Path) -> None:
    files = rendered(tmp_path)
    # Mailboxes of EX1 go to the one delivery user; secondary addresses, groups, contacts are aliases.
    assert lines(files["addresses"]) == [
        "alice@contoso.com opensmtpd",
        "alice.smith@contoso.com alice@contoso.com",
        "sales@contoso.com alice@contoso.com, bob@contoso.com",
        "pat@contoso.com pat@partner.example",
    ]
    conf = lines(files["smtpd.conf"])
    assert f'action "hop_0" relay host "smtp://{NET}21:25" helo "ex1.contoso.com" src "{NET}11"' in conf
    assert lines(files["mailboxes_hop_0"]) == ["bob@contoso.com"]
    assert f'action "mailbox" maildir "{tmp_path}/mail/%{{dest:lowercase}}" virtual <addresses>' in conf
    rules = [line for line in conf if line.startswith("match")]
    # First match wins: mailboxes elsewhere, then here, then unknown users of authoritative domains.
    assert rules[:3] == [
        'match from any for rcpt-to <mailboxes_hop_0> action "hop_0"',
        'match from any for rcpt-to <mailboxes> action "mailbox"',
        "match from any for domain <authoritative> reject",
    ]
    assert lines(files["authoritative"]) == ["contoso.com", "litware.com"]


def test_relay_domains_and_connectors_route_as_the_reference_mta(tmp_path: Path) -> None:
    files = rendered(tmp_path)
    conf = lines(files["smtpd.conf"])
    # partner.example's connector allows relaying and its bridgehead is EX2; the shared namespace and
    # adatum.com are reached by DNS.
    assert lines(files["relay_domains_hop_0"]) == ["partner.example"]
    assert lines(files["relay_domains_dns"]) == ["adatum.com", "shared.contoso.com"]
    # *.example is cheapest through EX2; northwind.example has a DNS connector on EX1 itself.
    routes = {
        lines(text)[0]: name[len("route_") :]
        for name, text in files.items()
        if re.fullmatch(r"route_\d+", name)
    }
    assert f'match from local for domain <route_{routes["*.example"]}> action "hop_0"' in conf
    assert f'match from local for domain <route_{routes["northwind.example"]}> action "dns"' in conf
    assert 'match from local for any action "dns"' in conf


def test_relay_lists_keep_their_order(tmp_path: Path) -> None:
    files = rendered(tmp_path)
    conf = lines(files["smtpd.conf"])
    assert f"{NET}202/32" in lines(files["relay_0_0"])
    assert 'match tag vs0 from src <relay_0_0> for any action "dns"' in conf
    assert lines(files["relay_1_0"]) == ["0.0.0.0/0"]
    # "All except": the organization's servers, then the refused ones, then everyone.
    vs3 = [line for line in conf if line.startswith("match tag vs3 ")]
    refused = vs3.index("match tag vs3 from src <relay_3_1> for any reject")
    assert refused > 0
    assert all("<relay_3_0>" in line for line in vs3[:refused])
    assert all("<relay_3_2>" in line for line in vs3[refused + 1 :])
    assert lines(files["relay_3_1"]) == [f"{NET}203/32", f"{NET}200/32"]
    assert lines(files["relay_3_2"]) == ["0.0.0.0/0"]


def test_connection_control_anonymous_access_and_recipient_filtering_are_filters(tmp_path: Path) -> None:
    files = rendered(tmp_path)
    conf = lines(files["smtpd.conf"])
    assert (
        'filter "connect_3" phase connect match src <connection_3> '
        'reject "554 5.7.1 Access denied: this computer may not connect"'
    ) in conf
    assert lines(files["connection_3"]) == [f"{NET}203/32"]
    assert f'listen on {NET}14 port 25 hostname "ex1.contoso.com" tag vs3 filter "connect_3"' in conf
    assert any(
        line.startswith('filter "anonymous_6" phase mail-from match !auth reject "530') for line in conf
    )
    # The shared namespace's entry is never applied: it is not authoritative.
    assert lines(files["filtered_2"]) == [
        "(?i)^bulk.*@contoso\\.com$",
        "(?i)^noreply@litware\\.com$",
        "(?i)^henry@contoso\\.com$",
    ]
    assert f"{NET}21/32" in lines(files["organization_servers"])
    assert (
        f'listen on {NET}13 port 25 hostname "ex1.contoso.com" tag vs2 filter "vs2"' in conf
        and 'filter "vs2" chain { "organization_2", "listed_2", "known_2", "unknown_2" }' in conf
    )
    # Directory filtering: what the directory knows passes, other addresses of contoso.com do not.
    assert {"bob@contoso.com", "sales@contoso.com"} <= set(lines(files["directory"]))
    assert lines(files["authoritative_addresses"]) == ["(?i)@contoso\\.com$", "(?i)@litware\\.com$"]


def test_the_lab_timers_and_limits(tmp_path: Path) -> None:
    conf = lines(rendered(tmp_path)["smtpd.conf"])
    assert "queue ttl 120s" in conf and "bounce warn-interval 2s" in conf
    assert "smtp max-message-size 4194304" in conf


def test_opensmtpd_is_a_target() -> None:
    target = targets.get("opensmtpd:EX2")
    assert target.stands_in_for == "EX2"
    assert "auth" not in target.capabilities and "starttls" not in target.capabilities


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with targets.OPENSMTPD.lab(netns_config()) as running:
        yield running


@live
def test_a_group_expands_to_its_members_here_and_on_ex2(lab: Lab) -> None:
    # Sales: Bob (on EX2), Carol, and the nested Sales Managers group; each goes where its mailbox is.
    assert send(lab, "internet", "ann@fabrikam.com", ["sales@contoso.com"], "to sales") == {}
    assert lab.settle(timeout=20)
    found = [d for d in Evidence.collect(lab).deliveries if b"Subject: to sales" in d.data]
    assert ("bob@contoso.com", "EX2") in [(d.where, d.server) for d in found]


@live
def test_opensmtpd_offers_no_starttls(lab: Lab) -> None:
    # Debian bookworm's OpenSMTPD fails every server-side TLS handshake against OpenSSL 3.
    ex1 = lab.config.organization.server("EX1").default_virtual_server
    with smtplib.SMTP(ex1.address, ex1.port, source_address=(lab.config.host("internet").address, 0)) as smtp:
        smtp.ehlo("client.example")
        assert not smtp.has_extn("starttls")
