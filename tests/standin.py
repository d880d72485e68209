"""Helpers for the tests of real MTAs standing in for EX1: a contoso lab on the namespace network, a
message sent from one of the lab's clients, and what reached the mailboxes and sinks."""

from __future__ import annotations

import os
import smtplib
from pathlib import Path

from harness.judge.evidence import Evidence
from harness.lab import config as lab_config
from harness.lab.config import LabConfig
from harness.lab.placement import netns_first_octet
from harness.lab.recipients import Contact, Group, Mailbox, RecipientTable
from harness.lab.runtime import Lab

# A small directory for rendering tests: a mailbox here with a secondary address, one on EX2, a group
# of both, a contact.
TABLE = RecipientTable(
    mailboxes=[
        Mailbox("alice@contoso.com", ("alice@contoso.com", "alice.smith@contoso.com"), "EX1"),
        Mailbox("bob@contoso.com", ("bob@contoso.com",), "EX2"),
    ],
    groups=[Group(("sales@contoso.com",), ("alice@contoso.com", "bob@contoso.com"))],
    contacts=[Contact(("pat@contoso.com",), "pat@partner.example")],
)
LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)


# The bands the test modules' namespace labs use, each its own, so that labs of modules running on
# different pytest-xdist workers never share a /24 (a band spans ten: one /24 a worker, two for the
# stopping and sweep tests' `run -n 2`): import_codes_only 3, lab_standin_queues 60 and 70, target_postfix
# 110 (and target_live's Postfix), stopping_commands 130, stale_lab_sweep 140, target_opensmtpd 150,
# target_exim 170 and 190; the runner's own labs are at MAILFLOW_NETNS_SUBNET + worker.


def base(band: int) -> str:
    """This worker's /24 in a test module's own band of 198.18.0.0/15, apart from the matrix's labs
    (MAILFLOW_NETNS_SUBNET and up) and from the other modules' bands. A high MAILFLOW_NETNS_SUBNET
    carries the bands over into 198.19.0.0/16 (the /15's other half) rather than past 255."""
    index = (netns_first_octet() + band + WORKER % 10) % 512
    return f"198.{18 + index // 256}.{index % 256}.0"


def netns_config(band: int) -> LabConfig:
    return lab_config.load(LAB, base=base(band), port_offset=0)


def send(
    lab: Lab, client: str, sender: str, recipients: list[str], subject: str
) -> dict[str, tuple[int, bytes]]:
    """One message from `client` to EX1's default virtual server; the recipients it refused."""
    ex1 = lab.config.organization.server("EX1").default_virtual_server
    with smtplib.SMTP(ex1.address, ex1.port, source_address=(lab.config.host(client).address, 0)) as smtp:
        smtp.ehlo("client.example")
        try:
            return smtp.sendmail(sender, recipients, f"Subject: {subject}\r\n\r\nhello\r\n")
        except smtplib.SMTPRecipientsRefused as exc:
            return exc.recipients


def delivered(lab: Lab, subject: str) -> list[tuple[str, str, str]]:
    """(kind, mailbox or sink, server) of each delivery of the message with `subject`, once settled."""
    assert lab.settle(timeout=20)
    found = [d for d in Evidence.collect(lab).deliveries if f"Subject: {subject}".encode() in d.data]
    return sorted((d.kind, d.where, d.server) for d in found)
