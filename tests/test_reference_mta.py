"""The reference MTA end to end in a lab: loops, NDR content, duplicate recipients, restrictions,
DSN parameters, retries after a transient failure, unreachable destinations and the gateway path."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import os
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from harness.judge.evidence import Evidence
from harness.lab import config as lab_config
from harness.lab.config import LabConfig, SinkRule
from harness.lab.runtime import Lab
from reference_mta.gateway import GatewayBusy
from reference_mta.queue_contract import RetryPolicy
from reference_mta.tracking import read_events

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"
BASE = f"127.{60 + int(os.environ.get('PYTEST_XDIST_WORKER', 'gw0')[2:] or 0) % 30}.0.0"


@pytest.fixture
def lab() -> Iterator[Lab]:
    config = lab_config.load(LAB, base=BASE, port_offset=26000)
    with Lab(config) as running:
        yield running


def send(
    config: LabConfig,
    client: str,
    server: str,
    sender: str,
    recipients: list[str],
    message: bytes,
    *,
    mail_options: tuple[str, ...] = (),
    rcpt_options: tuple[str, ...] = (),
) -> None:
    vs = config.organization.server(server).default_virtual_server

    async def transaction() -> None:
        smtp = aiosmtplib.SMTP(
            hostname=vs.address,
            port=vs.port,
            source_address=(config.host(client).address, 0),
            local_hostname="client.example",
            start_tls=False,
        )
        await smtp.connect()
        await smtp.ehlo()
        await smtp.mail(sender, options=list(mail_options))
        for recipient in recipients:
            await smtp.rcpt(recipient, options=list(rcpt_options))
        await smtp.data(message)
        await smtp.quit()

    asyncio.run(transaction())


def deliveries(lab: Lab) -> list[str]:
    return sorted(d.describe() for d in Evidence.collect(lab).deliveries)


def only_ndr(lab: Lab) -> email.message.Message:
    (ndr,) = [d for d in Evidence.collect(lab).deliveries if d.sender == ""]
    return email.message_from_bytes(ndr.data, policy=email.policy.default)


def dsn_fields(message: email.message.Message) -> list[dict[str, str]]:
    blocks = []
    for part in message.walk():
        if part.get_content_type() == "message/delivery-status":
            for block in part.get_payload():  # type: ignore[union-attr]
                blocks.append({k.lower(): str(v) for k, v in block.items()})
    return blocks


def test_a_message_over_the_hop_limit_is_returned_with_4_4_6(lab: Lab) -> None:
    received = b"".join(
        b"Received: from hop%d by somewhere; Mon, 23 Nov 2026 09:00:00 +0000\r\n" % i for i in range(15)
    )
    send(
        lab.config,
        "lan",
        "EX1",
        "alice@contoso.com",
        ["bob@contoso.com"],
        received + b"Subject: looping\r\n\r\nround and round\r\n",
    )
    assert lab.settle()
    assert deliveries(lab) == ["mailbox alice@contoso.com on EX1 (from <>)"]
    (recipient,) = dsn_fields(only_ndr(lab))[1:]
    # The reference's NDR table: 4.4.6 for the hop count; 5.4.6 is the categorizer's forwarding loop.
    assert recipient["status"] == "4.4.6"


def test_a_next_hop_that_is_the_server_itself_is_a_looping_condition(lab: Lab) -> None:
    own = lab.config.organization.server("EX1").address
    send(lab.config, "relay-host", "EX1", "alice@contoso.com", [f"bob@[{own}]"], b"Subject: x\r\n\r\nx\r\n")
    assert lab.settle()
    assert deliveries(lab) == ["mailbox alice@contoso.com on EX1 (from <>)"]
    assert dsn_fields(only_ndr(lab))[1]["status"] == "5.4.8"
    assert (
        sum(1 for e in read_events(lab.tracking_dir, "EX1") if e["event-id"] == 1019) == 2
    )  # original + NDR


def test_an_ndr_returns_utf8_headers_of_the_original_as_global_headers(lab: Lab) -> None:
    send(
        lab.config,
        "internet",
        "EX1",
        "ann@fabrikam.com",
        ["nobody@contoso.com"],
        "Subject: café au lait\r\n\r\nbonjour\r\n".encode(),
    )
    assert lab.settle()
    ndr = only_ndr(lab)
    # RFC 6533: UTF-8 header fields go back as message/global-headers, unencoded.
    headers = [p for p in ndr.walk() if p.get_content_type() == "message/global-headers"]
    assert headers, [p.get_content_type() for p in ndr.walk()]
    returned = headers[0].get_payload(0)
    assert isinstance(returned, email.message.Message)
    assert "café au lait".encode() in returned.as_bytes(policy=email.policy.SMTPUTF8)


def test_two_addresses_of_one_mailbox_get_one_copy(lab: Lab) -> None:
    send(
        lab.config,
        "internet",
        "EX1",
        "ann@fabrikam.com",
        ["alice@contoso.com", "ALICE.SMITH@contoso.com"],
        b"Subject: twice\r\n\r\nonce is enough\r\n",
    )
    assert lab.settle()
    assert deliveries(lab) == ["mailbox alice@contoso.com on EX1 (from ann@fabrikam.com)"]


def test_a_group_restricted_to_authenticated_senders_refuses_the_internet(lab: Lab) -> None:
    send(
        lab.config, "internet", "EX1", "ann@fabrikam.com", ["all@contoso.com"], b"Subject: all\r\n\r\nhi\r\n"
    )
    assert lab.settle()
    assert deliveries(lab) == ["sink fabrikam-mx from EX1: <> → ann@fabrikam.com"]
    assert dsn_fields(only_ndr(lab))[1]["status"] == "5.7.1"


def test_notify_never_suppresses_the_ndr_and_orcpt_envid_are_echoed(lab: Lab) -> None:
    send(
        lab.config,
        "internet",
        "EX1",
        "ann@fabrikam.com",
        ["nobody@contoso.com"],
        b"Subject: a\r\n\r\nb\r\n",
        rcpt_options=("NOTIFY=NEVER",),
    )
    assert lab.settle()
    assert deliveries(lab) == []
    send(
        lab.config,
        "internet",
        "EX1",
        "ann@fabrikam.com",
        ["nobody2@contoso.com"],
        b"Subject: a\r\n\r\nb\r\n",
        mail_options=("RET=HDRS", "ENVID=QQ+2B1"),
        rcpt_options=("NOTIFY=FAILURE", "ORCPT=rfc822;x+2By@z.example"),
    )
    assert lab.settle()
    per_message, recipient = dsn_fields(only_ndr(lab))
    assert per_message["original-envelope-id"] == "QQ+1"
    assert recipient["original-recipient"] == "rfc822;x+y@z.example"


def test_a_transient_failure_is_retried_and_the_lab_waits_for_it(lab: Lab) -> None:
    sink = lab.sinks["nomx-host"]
    sink.add_rule(
        SinkRule(
            command="DATA", match=None, reply="451 4.3.0 Busy, try later", action="reply", delay=0.0, times=1
        )
    )
    send(lab.config, "relay-host", "EX1", "monitor@contoso.com", ["ops@nomx.net"], b"Subject: r\r\n\r\nr\r\n")
    assert lab.settle()
    assert deliveries(lab) == ["sink nomx-host from EX1: monitor@contoso.com → ops@nomx.net"]
    events = [e["event-id"] for e in read_events(lab.tracking_dir, "EX1")]
    assert events.count(1020) == 2 and events.count(1031) == 1


def test_mail_for_a_gateway_contact_travels_to_the_gateway_server_encapsulated(lab: Lab) -> None:
    send(
        lab.config,
        "internet",
        "EX1",
        "ann@fabrikam.com",
        ["nora.lee@contoso.com"],
        b"Subject: n\r\n\r\nn\r\n",
    )
    assert lab.settle()
    assert deliveries(lab) == ["foreign mailbox Nora Lee/Contoso in Lotus Notes (from ann@fabrikam.com)"]
    wire = [e["recipient-address"] for e in read_events(lab.tracking_dir, "EX4") if e["event-id"] == 1019]
    assert wire == ["IMCEANOTES-Nora+20Lee+2FContoso@contoso.com"]


def test_a_down_connector_keeps_the_message_queued_instead_of_failing_it() -> None:
    config = lab_config.load(LAB, base=BASE, port_offset=26000)
    connectors = tuple(
        dataclasses.replace(c, up=False) if c.name == "Partner SMTP Connector" else c
        for c in config.organization.connectors
    )
    config = dataclasses.replace(
        config, organization=dataclasses.replace(config.organization, connectors=connectors)
    )
    with Lab(config) as lab:
        send(
            config,
            "internet",
            "EX1",
            "ann@fabrikam.com",
            ["orders@partner.example"],
            b"Subject: p\r\n\r\np\r\n",
        )
        assert lab.settle()
        assert deliveries(lab) == []  # no NDR: no fail-over to `*`, no 5.4.0 either
        queues = lab.queues()
        waiting = [q for server in queues.values() for name, q in server.items() if q]
        assert any(server["Final destination currently unreachable"] for server in queues.values())
        assert len(waiting) == 1
        events = [e["event-id"] for e in read_events(lab.tracking_dir, "EX1")]
        assert 1035 in events and 1030 not in events


def test_a_message_that_cannot_be_delivered_before_expiry_is_returned_with_4_4_7() -> None:
    config = lab_config.load(LAB, base=BASE, port_offset=26000)
    timers = RetryPolicy(intervals=(0.2,), expiration=0.6, delay_notification=100.0)
    with Lab(config, retry=timers) as lab:
        lab.sinks["nomx-host"].add_rule(
            SinkRule(
                command="DATA", match=None, reply="451 4.3.0 Busy", action="reply", delay=0.0, times=None
            )
        )
        send(config, "relay-host", "EX1", "alice@contoso.com", ["ops@nomx.net"], b"Subject: e\r\n\r\ne\r\n")
        assert lab.settle(timeout=10)
        assert deliveries(lab) == ["mailbox alice@contoso.com on EX1 (from <>)"]
        (recipient,) = dsn_fields(only_ndr(lab))[1:]
        assert (recipient["status"], recipient["action"]) == ("4.4.7", "failed")
        # The next hop's last reply, as it gave it: never a reply of the server's own making.
        assert recipient["diagnostic-code"] == "smtp;451 4.3.0 Busy"
        assert recipient["remote-mta"] == "dns;nomx.net"


def test_the_gateway_refuses_memos_while_the_directory_is_down_and_keeps_nothing(lab: Lab) -> None:
    lab.set_global_catalog(False)
    memo = b"From: Ann Lee/Sales/Fabrikam\nSendTo: Dave Ito/Contoso\nSubject: x\nBody:\nx\n"
    with pytest.raises(GatewayBusy, match="cannot map addresses now"):
        lab.foreign_send("Notes Connector", memo)
    assert not list((lab.workdir / "EX4" / "gateways" / "Notes Connector" / "IN").iterdir())
    lab.set_global_catalog(True)
    lab.foreign_send("Notes Connector", memo)
    assert lab.settle()
    assert deliveries(lab) == [
        "mailbox dave@contoso.com on EX4 (from IMCEANOTES-Ann+20Lee+2FSales+2FFabrikam@contoso.com)"
    ]
