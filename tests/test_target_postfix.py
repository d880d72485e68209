"""Postfix standing in for EX1: the configuration rendered from the lab file, and a real Postfix (the
Debian package) started in EX1's network namespace, answering real SMTP sessions from the lab's clients.

The rendering tests run everywhere; the live ones need root and Postfix and are skipped otherwise, with
the reason.
"""

from __future__ import annotations

import json
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import standin
from mailflow_cli import mailflow
from standin import base

from harness import targets
from harness.corpus.trace import load
from harness.judge.evidence import DeliveryKind, Evidence
from harness.lab.config import LabConfig
from harness.lab.placement import relocation
from harness.lab.recipients import Login, RecipientTable
from harness.lab.runtime import Lab
from harness.run.runner import run_trace
from harness.targets import postfix
from reference_mta import replies

ROOT = Path(__file__).resolve().parents[1]
BAND = 110
BASE = base(BAND)
UNAVAILABLE = targets.POSTFIX.unavailable()
live = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


def netns_config() -> LabConfig:
    return standin.netns_config(BAND)


TABLE = standin.TABLE


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
    # Only CRLF.CRLF ends DATA, for every client (SEC-2): Postfix's default lets a bare LF end it.
    assert {"smtpd_forbid_bare_newline = normalize", "smtpd_forbid_bare_newline_exclusions ="} <= main
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

    assert (
        "-o { smtpd_sender_restrictions = permit_sasl_authenticated, "
        f"check_client_access cidr:{tmp_path / 'etc' / 'not_authenticated'} }}"
    ) in members
    # Routing decides as the reference MTA does: London's *.example connector is cheapest through Tokyo,
    # so EX1 hands such mail to EX2, the Seattle-Tokyo bridgehead; the partner connector's bridgehead is
    # EX2; northwind.example has a DNS connector on EX1 itself, so Postfix looks up its MX (pinned to
    # "smtp:", since the lab's sender-dependent relay host must not apply there).
    transport = lines(files["transport"])
    assert f".example smtp:[{BASE[:-1]}21]:25" in transport
    assert f"partner.example smtp:[{BASE[:-1]}21]:25" in transport
    assert "northwind.example smtp:" in transport


@pytest.mark.skipif(postfix.installed() is not None, reason=postfix.installed() or "")
def test_recipient_filtering_and_anonymous_access_become_smtpd_restrictions(tmp_path: Path) -> None:
    table = RecipientTable(
        mailboxes=TABLE.mailboxes,
        groups=TABLE.groups,
        contacts=TABLE.contacts,
        logins=[Login(("alice", "alice@contoso.com"), "Alice-P@ss1")],
    )
    files = postfix.render(netns_config(), "EX1", table, tmp_path)
    main = lines(files["main.cf"])
    # Unfiltered virtual servers accept unknown users of authoritative domains; the NDR follows.
    assert "smtpd_reject_unlisted_recipient = no" in main
    assert "allow_untrusted_routing = yes" in main
    master = files["master.cf"].splitlines()
    filtered = next(line for line in master if line.startswith(f"{BASE[:-1]}13:25 "))
    etc = tmp_path / "etc"
    assert (
        f"-o {{ smtpd_recipient_restrictions = reject_non_fqdn_recipient, permit_sasl_authenticated, "
        f"check_client_access cidr:{etc / 'organization'}, check_recipient_access "
        f"regexp:{etc / 'recipient_filter_2'} }}"
    ) in filtered
    # The Strict virtual server's time-out, error limit and missing CHUNKING; SMTPUTF8 only where offered.
    strict = next(line for line in master if line.startswith(f"{BASE[:-1]}15:25 "))
    for setting in (
        "smtpd_timeout = 2s",
        "smtpd_hard_error_limit = 5",
        "smtpd_discard_ehlo_keywords = chunking, smtputf8",
    ):
        assert f"-o {{ {setting} }}" in strict
    directory = next(line for line in master if line.startswith(f"{BASE[:-1]}16:25 "))
    assert "-o { smtpd_discard_ehlo_keywords =  }" in directory  # offers both
    assert "smtpd_discard_ehlo_keywords = smtputf8" in main
    assert f"{BASE[:-1]}21/32 OK" in lines(files["organization"])
    # The list first (wildcards), then what the directory knows, then the rest of those domains; the
    # shared namespace is not authoritative, so nothing there is filtered.
    assert files["recipient_filter_2"].splitlines() == [
        "if /@(contoso[.]com|litware[.]com)$/",
        f"/^bulk.*@contoso[.]com$/ {replies.MAILBOX_NOT_AVAILABLE}",
        f"/^noreply@litware[.]com$/ {replies.MAILBOX_NOT_AVAILABLE}",
        f"/^henry@contoso[.]com$/ {replies.MAILBOX_NOT_AVAILABLE}",
        f"/^archive@shared[.]contoso[.]com$/ {replies.MAILBOX_NOT_AVAILABLE}",
        "/^alice[.]smith@contoso[.]com$/ DUNNO",
        "/^alice@contoso[.]com$/ DUNNO",
        "/^bob@contoso[.]com$/ DUNNO",
        "/^pat@contoso[.]com$/ DUNNO",
        "/^sales@contoso[.]com$/ DUNNO",
        f"/./ {replies.MAILBOX_NOT_AVAILABLE}",
        "endif",
    ]
    filters = [name for name in files if name.startswith("recipient_filter_")]
    assert filters == ["recipient_filter_2"]
    # Members Only: 530 for MAIL, and for VRFY before the relay decision, until the client authenticates.
    members = next(line for line in master if line.startswith(f"{BASE[:-1]}17:25 "))
    refused = f"permit_sasl_authenticated, check_client_access cidr:{etc / 'not_authenticated'}"
    assert f"-o {{ smtpd_sender_restrictions = {refused} }}" in members
    assert f"-o {{ smtpd_relay_restrictions = {refused}, permit_sasl_authenticated, " in members
    assert lines(files["not_authenticated"]) == {f"0.0.0.0/0 {replies.NOT_AUTHENTICATED}"}
    # The Adatum connector accepts only Alice's mail: her mail for adatum.com goes toward its bridgehead
    # (EX4, through EX2), everyone else's by DNS; every other domain is pinned to its own route.
    assert lines(files["sender_relay"]) == {f"alice@contoso.com [{BASE[:-1]}21]:25"}
    transport = lines(files["transport"])
    pinned = {"adatum.com :", "northwind.example smtp:", "contoso.com :", "litware.com :", "* smtp:"}
    assert pinned <= transport
    assert f"bob@contoso.com smtp:[{BASE[:-1]}21]:25" in transport
    assert "Subject: Delivery Status Notification (Failure)" in files["bounce.cf"]


def test_a_filter_list_entry_is_a_posix_regular_expression() -> None:
    assert postfix._regexp("bulk*@contoso.com", wildcards=True) == "bulk.*@contoso[.]com"
    assert postfix._regexp("st*r@contoso.com") == "st[*]r@contoso[.]com"
    assert postfix._regexp("a/b\\c^d]e[f$g+h") == "a\\/b\\\\c\\^d[]]e[[]f[$]g[+]h"


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


# The corpus's smuggling traces whose first message ends with a bare LF around the dot: Postfix's default
# (smtpd_forbid_bare_newline = no) ended the message there and ran the smuggled transaction for Bob.
BARE_LF_SMUGGLING = [
    "protocol/smuggling-bare-lf",
    "protocol/smuggling-lf-dot-crlf",
    "protocol/smuggling-crlf-dot-lf",
]


@live
@pytest.mark.parametrize("trace_id", BARE_LF_SMUGGLING)
def test_a_bare_lf_around_the_dot_does_not_end_the_message(trace_id: str) -> None:
    result = run_trace(load(ROOT / "traces" / f"{trace_id}.yaml"), targets.POSTFIX)
    # The trace itself expects one 250 after the data and then QUIT's 221, not a second transaction.
    assert result.passed, "\n".join(result.failures())
    assert result.evidence is not None
    mailboxes = [d for d in result.evidence.deliveries if d.kind == DeliveryKind.MAILBOX]
    # One message, for Alice, with the would-be second transaction inside it; nothing for Bob.
    assert [d.where for d in mailboxes] == ["alice@contoso.com"], [d.describe() for d in mailboxes]
    assert b"RCPT TO:<bob@contoso.com>" in mailboxes[0].data


def attachments(node: dict[str, Any]) -> list[dict[str, str]]:
    """Every attachment of an Allure result, its steps' included."""
    found: list[dict[str, str]] = list(node.get("attachments", []))
    for step in node.get("steps", []):
        found += attachments(step)
    return found


@live
def test_the_report_attaches_postfix_s_log_of_the_trace(tmp_path: Path) -> None:
    trace = ROOT / "traces" / "inbound" / "case-insensitive-proxy.yaml"
    run = mailflow("run", "--target", "postfix", "--reports", str(tmp_path), str(trace), cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    results = tmp_path / "allure-results"
    (result,) = [json.loads(p.read_text()) for p in results.glob("*-result.json")]
    (log,) = [a for a in attachments(result) if a["name"] == "Postfix log (EX1)"]
    text = (results / log["source"]).read_text()
    # Postfix's own line for the message it stored in Alice's mailbox during this trace.
    assert re.search(r"postfix/virtual\[\d+\]: [0-9A-F]+: to=<alice@contoso\.com>.* status=sent", text), text
