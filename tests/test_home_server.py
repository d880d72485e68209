"""Which attribute routing trusts for a mailbox's home server, in a running lab: msExchHomeServerName
(the legacyExchangeDN of the server, "where mail is delivered"), with homeMDB naming the store on it.

The contoso directory, copied, gets one more mailbox whose move is half replicated: its homeMDB is
EX2's store, its msExchHomeServerName still names EX1. Routing sends its mail to EX1, whose store
driver delivers into homeMDB's store only, and that store is not on EX1: the sender gets an NDR 5.2.1.
A mailbox whose two attributes agree is the boundary.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from harness.corpus import writer
from harness.generation import generator
from harness.generation.oracle import Scenario, load, predict
from harness.judge.evidence import Evidence
from harness.lab import config as lab_config
from harness.lab import placement
from harness.lab.runtime import Lab
from harness.run.runner import run_trace
from harness.targets import REFERENCE
from reference_mta.tracking import read_events

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CONFIGURATION = "CN=Servers,CN=First Administrative Group,CN=Administrative Groups,CN=Contoso,CN=Microsoft Exchange,CN=Services,CN=Configuration,DC=contoso,DC=com"  # noqa: E501
MOVED = f"""
dn: CN=Mo Ved,CN=Users,DC=contoso,DC=com
objectClass: top
objectClass: person
objectClass: organizationalPerson
objectClass: user
cn: Mo Ved
sAMAccountName: moved
mailNickname: moved
mail: moved@contoso.com
proxyAddresses: SMTP:moved@contoso.com
legacyExchangeDN: /o=Contoso/ou=First Administrative Group/cn=Recipients/cn=moved
homeMDB: CN=Mailbox Store (EX2),CN=First Storage Group,CN=InformationStore,CN=EX2,{CONFIGURATION}
msExchHomeServerName: /o=Contoso/ou=First Administrative Group/cn=Configuration/cn=Servers/cn=EX1
"""


@pytest.fixture
def lab_file(tmp_path: Path) -> Path:
    (tmp_path / "labs").mkdir()
    (tmp_path / "directory").mkdir()
    shutil.copy(FIXTURES / "labs" / "contoso.yaml", tmp_path / "labs" / "contoso.yaml")
    ldif = (FIXTURES / "directory" / "contoso.ldif").read_text(encoding="utf-8")
    (tmp_path / "directory" / "contoso.ldif").write_text(ldif.rstrip("\n") + "\n" + MOVED, encoding="utf-8")
    return tmp_path / "labs" / "contoso.yaml"


@pytest.fixture
def lab(lab_file: Path) -> Iterator[Lab]:
    base, offset = placement.relocation()
    with Lab(lab_config.load(lab_file, base=base, port_offset=offset)) as running:
        yield running


def send(lab: Lab, recipient: str) -> None:
    vs = lab.config.organization.server("EX2").default_virtual_server

    async def transaction() -> None:
        smtp = aiosmtplib.SMTP(
            hostname=vs.address,
            port=vs.port,
            source_address=(lab.config.host("lan").address, 0),
            local_hostname="client.contoso.com",
            start_tls=False,
        )
        await smtp.connect()
        await smtp.ehlo()
        await smtp.mail("alice@contoso.com")
        await smtp.rcpt(recipient)
        await smtp.data(b"Subject: where is home\r\n\r\nHello.\r\n")
        await smtp.quit()

    asyncio.run(transaction())


def deliveries(lab: Lab) -> list[str]:
    assert lab.settle()
    return sorted(d.describe() for d in Evidence.collect(lab).deliveries)


def test_a_half_replicated_move_goes_to_the_named_server_and_is_returned_with_5_2_1(lab: Lab) -> None:
    send(lab, "moved@contoso.com")
    assert deliveries(lab) == ["mailbox alice@contoso.com on EX1 (from <>)"]
    # EX2 routed it to EX1, where the store driver could not deliver it.
    assert any(
        e["event-id"] == 1019 and e["recipient-address"] == "moved@contoso.com"
        for e in read_events(lab.tracking_dir, "EX1")
    )
    (ndr,) = [d for d in Evidence.collect(lab).deliveries if d.sender == ""]
    report = email.message_from_bytes(ndr.data, policy=email.policy.default)
    statuses = [
        str(block.get("Status"))
        for part in report.walk()
        if part.get_content_type() == "message/delivery-status"
        for block in part.get_payload()  # type: ignore[union-attr]
        if block.get("Status")
    ]
    assert statuses == ["5.2.1"]


def test_a_mailbox_whose_attributes_agree_is_delivered_on_its_server(lab: Lab) -> None:
    send(lab, "bob@contoso.com")
    assert deliveries(lab) == ["mailbox bob@contoso.com on EX2 (from alice@contoso.com)"]


@pytest.mark.parametrize(("recipient", "ndr"), [("moved@contoso.com", True), ("bob@contoso.com", False)])
def test_the_oracle_predicts_the_same_and_a_replay_agrees(lab_file: Path, recipient: str, ndr: bool) -> None:
    scenario = Scenario("lan", "EX2", None, None, "alice@contoso.com", (recipient,))
    prediction = predict(load(lab_file), scenario)
    assert [(n.origin, n.recipient, n.status) for n in prediction.ndrs] == (
        [("EX1", recipient, "5.2.1")] if ndr else []
    )
    document = generator.document(load(lab_file), scenario, prediction)
    document["lab"] = str(lab_file)
    trace = writer.write(document, lab_file.parent.parent / "traces" / "scenario.yaml")
    result = run_trace(trace, REFERENCE)
    assert result.passed, "\n".join(result.failures())
