"""Exim 4 standing in for EX1: the configuration rendered from the lab file, and a real Exim (Debian's
binary, unpacked by `make mtas`) started in EX1's network namespace, answering real SMTP sessions from
the lab's clients.

The rendering tests run everywhere; the live ones need root and the unpacked Exim and are skipped
otherwise, with the reason.
"""

from __future__ import annotations

import json
import re
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import standin
from standin import base, delivered, send

from harness import targets
from harness.corpus.trace import load
from harness.judge.evidence import DeliveryKind
from harness.lab import netns
from harness.lab.config import LabConfig
from harness.lab.recipients import Contact, Group, Login, Mailbox, RecipientTable
from harness.lab.runtime import Lab
from harness.run.runner import run_trace
from harness.targets import exim

BAND = 170
BASE = base(BAND)
NET = BASE[:-1]
UNAVAILABLE = targets.EXIM.unavailable()
live = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")

TABLE = RecipientTable(
    mailboxes=[
        Mailbox("alice@contoso.com", ("alice@contoso.com", "alice.smith@contoso.com"), "EX1"),
        Mailbox("bob@contoso.com", ("bob@contoso.com",), "EX2"),
        Mailbox("ivan@contoso.com", ("ivan@contoso.com",), "EX1", forward_to=("bob@contoso.com",)),
    ],
    groups=[Group(("sales@contoso.com",), ("alice@contoso.com", "bob@contoso.com"))],
    contacts=[Contact(("pat@contoso.com",), "pat@partner.example")],
    logins=[Login(("alice", "alice@contoso.com"), "Alice-P@ss1")],
)


def netns_config() -> LabConfig:
    return standin.netns_config(BAND)


def table_lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.strip()}


def router(configuration: str, name: str) -> str:
    """One router's block of an exim4.conf."""
    block = configuration.split(f"\n{name}:\n", 1)[1]
    return block.split("\n\n", 1)[0]


def test_the_lab_file_becomes_exim_tables_and_routers(tmp_path: Path) -> None:
    files = exim.render(netns_config(), "EX1", TABLE, tmp_path, None)
    conf = files["exim4.conf"]
    assert "primary_hostname = ex1.contoso.com" in conf
    assert "domainlist local_domains = contoso.com : litware.com" in conf
    # The shared namespace and the connectors that allow relaying are relay domains.
    assert "domainlist relay_to_domains = adatum.com : partner.example : shared.contoso.com" in conf
    # Every virtual server of EX1 is an interface; the Strict one names itself by its own FQDN.
    assert f"local_interfaces = <; [{NET}11]:25 ; [{NET}12]:25" in conf
    assert f"{{{NET}15}}{{smtp.contoso.com}}" in conf
    # Mailboxes held here are delivered into Maildirs; those elsewhere go to their server.
    assert table_lines(files["mailboxes"]) == {
        '"alice@contoso.com": alice@contoso.com',
        '"alice.smith@contoso.com": alice@contoso.com',
        '"ivan@contoso.com": ivan@contoso.com',
    }
    assert f'"bob@contoso.com": {NET}21' in table_lines(files["mailbox_routes"])
    aliases = table_lines(files["aliases"])
    assert '"sales@contoso.com": alice@contoso.com, bob@contoso.com' in aliases
    assert '"pat@contoso.com": pat@partner.example' in aliases
    assert '"ivan@contoso.com": bob@contoso.com' in aliases  # forwarding without a copy
    # Routing as the reference MTA decides it: *.example through EX2, northwind.example by DNS; the
    # Adatum connector only takes Alice's mail (its delivery restrictions), others' goes by MX.
    routes = {block.split("\n")[0]: block for block in conf.split("\nroute_")[1:]}
    example = next(block for block in routes.values() if "domains = *.example\n" in block)
    assert f"route_list = * {NET}21" in example
    northwind = next(block for block in routes.values() if "domains = northwind.example\n" in block)
    assert "driver = dnslookup" in northwind
    senders = [router(conf, name) for name in re.findall(r"\n(sender_route_\d+):\n", conf)]
    (adatum,) = [block for block in senders if "domains = adatum.com\n" in block]
    assert "senders = <; alice@contoso.com" in adatum
    # An unknown user of an authoritative domain bounces after acceptance, as Exchange does.
    assert "domains = +local_domains" in router(conf, "unknown") and ":fail:" in router(conf, "unknown")


def test_relay_and_connection_lists_keep_first_match_order(tmp_path: Path) -> None:
    conf = exim.render(netns_config(), "EX1", TABLE, tmp_path, None)["exim4.conf"]
    rcpt = conf.split("\nacl_rcpt:\n", 1)[1].split("\n\n", 1)[0]
    # The Restricted virtual server relays for all except the attacker and the Internet host.
    restricted = rcpt.split(f"{{{NET}14}}}}\n    hosts = <; ", 1)[1].splitlines()[0]
    assert restricted.endswith(f"!{NET}203/32 ; !{NET}200/32 ; 0.0.0.0/0")
    connect = conf.split("\nacl_connect:\n", 1)[1].split("\n\n", 1)[0]
    assert f"hosts = <; {NET}203/32" in connect and "554 5.7.1 Access denied" in connect


def test_an_empty_password_never_authenticates(tmp_path: Path) -> None:
    conf = exim.render(netns_config(), "EX1", TABLE, tmp_path, None)["exim4.conf"]
    login = router(conf, "login")
    assert "!eq{$auth2}{}" in login  # an unknown name's lookup is "", so "" must not match it


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with targets.EXIM.lab(netns_config()) as running:
        yield running


@live
def test_mail_for_ex2_and_for_a_forwarding_mailbox_goes_on_to_the_reference_server(lab: Lab) -> None:
    assert send(lab, "internet", "ann@fabrikam.com", ["bob@contoso.com", "ivan@contoso.com"], "to bob") == {}
    # Ivan forwards to Bob without keeping a copy (the directory's altRecipient): Ivan's mailbox gets
    # nothing, and Bob, named twice, gets one copy.
    assert delivered(lab, "to bob") == [("mailbox", "bob@contoso.com", "EX2")]


@live
def test_an_account_of_the_directory_authenticates_and_may_relay(lab: Lab) -> None:
    ex1 = lab.config.organization.server("EX1").default_virtual_server
    with smtplib.SMTP(ex1.address, ex1.port, source_address=(lab.config.host("lan").address, 0)) as smtp:
        smtp.ehlo("wks01.contoso.com")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("alice", "not-her-password")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("nobody", "")
        smtp.login("alice@contoso.com", "Alice-P@ss1")
        assert (
            smtp.sendmail("alice@contoso.com", ["chris@fabrikam.com"], "Subject: relayed\r\n\r\nx\r\n") == {}
        )
    assert delivered(lab, "relayed") == [("sink", "fabrikam-mx", "EX1")]


@live
def test_lab_up_with_a_real_mta_serves_until_interrupted_and_leaves_nothing_behind(tmp_path: Path) -> None:
    lab_base = base(190)
    command = [sys.executable, "-m", "harness.cli", "lab", "up", "--target", "exim", "--base", lab_base]
    lab_up = subprocess.Popen(
        [*command, "--port-offset", "0", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As a terminal starts it: a background job of a non-interactive shell (a CI script's `&`)
        # passes SIGINT on ignored, and lab up rightly leaves an ignored SIGINT alone.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert lab_up.stdout is not None
        output = "".join(iter_until(lab_up.stdout, "Ctrl-C stops the lab."))
        assert "EX1: exim in its network namespace" in output
        ex1, internet = lab_base[:-1] + "11", lab_base[:-1] + "200"
        with smtplib.SMTP(ex1, 25, source_address=(internet, 0), timeout=10) as smtp:
            message = "Subject: by hand\r\n\r\nx\r\n"
            assert smtp.sendmail("ann@fabrikam.com", ["alice@contoso.com"], message) == {}
        deadline = time.monotonic() + 20
        while not list((tmp_path / "EX1-exim" / "mail" / "alice@contoso.com" / "new").glob("*")):
            assert time.monotonic() < deadline, "the message never reached Alice's Maildir"
            time.sleep(0.1)
    finally:
        lab_up.send_signal(signal.SIGINT)
        lab_up.wait(timeout=30)
    assert lab_up.returncode == 0
    # Its bridge, addresses and namespace are gone, and so is its record for the stale-lab sweep.
    addresses = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    assert lab_base[:-1] not in addresses
    records = [json.loads(path.read_text()) for path in netns.STATE_DIR.glob("*.json")]
    assert not [record for record in records if record["pid"] == lab_up.pid]


def iter_until(stream: IO[str], last: str) -> Iterator[str]:
    for line in stream:
        yield line
        if last in line:
            return
    raise AssertionError(f"the output ended before {last!r}")


@live
@pytest.mark.parametrize(
    "trace_id",
    ["protocol/smuggling-bare-lf", "protocol/smuggling-lf-dot-crlf", "protocol/smuggling-crlf-dot-lf"],
)
def test_a_bare_lf_around_the_dot_does_not_end_the_message(trace_id: str) -> None:
    # Debian's Exim 4.96 takes only CRLF.CRLF as the end of data once the message's first line ended in
    # CRLF (CVE-2023-51766), with no setting for it: one message, the smuggled commands inside it.
    result = run_trace(
        load(Path(__file__).resolve().parents[1] / "traces" / f"{trace_id}.yaml"), targets.EXIM
    )
    # Exim offers no ENHANCEDSTATUSCODES, so its queued reply is judged on its code alone (RFC 2034).
    assert result.passed, "\n".join(result.failures())
    assert result.evidence is not None
    mailboxes = [d for d in result.evidence.deliveries if d.kind == DeliveryKind.MAILBOX]
    assert [d.where for d in mailboxes] == ["alice@contoso.com"], [d.describe() for d in mailboxes]
    assert b"RCPT TO:<bob@contoso.com>" in mailboxes[0].data
