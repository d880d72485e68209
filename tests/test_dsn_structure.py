"""The structure of the DSNs the reference MTA sends (RFC 3464, RFC 6522), read from real runs.

Fault traces run in a real lab; each NDR and delay notice that reached Alice's mailbox is parsed with
the email package and held to the rules: a multipart/report of report-type delivery-status, a
human-readable part, a message/delivery-status part with its per-message and per-recipient fields,
and the returned headers. A Diagnostic-Code is only ever the next hop's reply, its class that of the
Status; no next hop, no Diagnostic-Code.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils
import re
from pathlib import Path

import pytest

from harness import targets
from harness.corpus.trace import load
from harness.judge.evidence import DeliveryKind
from harness.run.runner import run_trace

ROOT = Path(__file__).resolve().parents[1]
OUTBOUND = ROOT / "traces" / "outbound"
# RFC 3464 2.3.2 and the IANA "address types" registry: rfc822, x400, utf-8 (RFC 6533).
ADDRESS_TYPES = ("rfc822", "x400", "utf-8")
STATUS = re.compile(r"([245])\.\d{1,3}\.\d{1,3}")
# RFC 3464 2.3.3 with RFC 3463's classes: a failure is permanent (5) or a transient condition that
# lasted too long (4, as an expiry's 4.4.7); a delay is transient.
CLASSES_OF_ACTION = {"failed": ("4", "5"), "delayed": ("4",)}

# trace → for each DSN it must produce: (action, whether a next hop answered, Final-Recipient type)
CASES = {
    "faults/rcpt-550-ndr": [("failed", True, "rfc822")],
    "faults/smarthost-dot-554-ndr": [("failed", True, "rfc822")],
    "faults/data-451-expires": [("delayed", True, "rfc822"), ("failed", True, "rfc822")],
    "faults/smarthost-greeting-421-expires": [("delayed", True, "rfc822"), ("failed", True, "rfc822")],
    "faults/all-mx-down-expires": [("delayed", False, "rfc822"), ("failed", False, "rfc822")],
    "faults/nxdomain-ndr": [("failed", False, "rfc822")],
    "no-route-ndr": [("failed", False, "x400")],
}


def dsns(name: str) -> list[email.message.Message]:
    """The DSNs a real run of the trace delivered (messages from <> into a mailbox), parsed."""
    result = run_trace(load(OUTBOUND / f"{name}.yaml"), targets.REFERENCE)
    assert result.passed, result.records()
    assert result.evidence is not None
    return [
        email.message_from_bytes(d.data, policy=email.policy.default)
        for d in result.evidence.deliveries
        if d.kind == DeliveryKind.MAILBOX and not d.sender
    ]


def status_blocks(
    message: email.message.Message,
) -> tuple[email.message.Message, list[email.message.Message]]:
    """The delivery-status part's per-message block and its per-recipient blocks."""
    (part,) = [p for p in message.walk() if p.get_content_type() == "message/delivery-status"]
    blocks = part.get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2, "a per-message block and a block per recipient"
    return blocks[0], blocks[1:]


def typed(value: object) -> tuple[str, str]:
    kind, _, rest = str(value).partition(";")
    return kind.strip().lower(), rest.strip()


def check_recipient(block: email.message.Message, action: str, answered: bool, address_type: str) -> None:
    final_type, final_address = typed(block["Final-Recipient"])
    assert final_type == address_type and final_address
    if block["Original-Recipient"] is not None:
        assert typed(block["Original-Recipient"])[0] in ADDRESS_TYPES
    assert str(block["Action"]).strip() == action
    status = STATUS.fullmatch(str(block["Status"]).strip())
    assert status is not None, block["Status"]
    assert status[1] in CLASSES_OF_ACTION[action]
    if not answered:
        assert block["Diagnostic-Code"] is None and block["Remote-MTA"] is None
        return
    kind, reply = typed(block["Diagnostic-Code"])
    assert kind == "smtp" and re.fullmatch(r"[2-5]\d\d( .*)?", reply), block["Diagnostic-Code"]
    assert reply[0] == status[1], f"{reply} under Status {status[0]}"
    mta_type, mta = typed(block["Remote-MTA"])
    assert mta_type == "dns" and mta


def check_report(message: email.message.Message) -> None:
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = message.get_payload()
    assert isinstance(parts, list) and len(parts) == 3
    readable, status_part, returned = parts
    assert readable.get_content_type() == "text/plain" and readable.get_content().strip()
    assert status_part.get_content_type() == "message/delivery-status"
    head, _ = status_blocks(message)
    mta_type, mta = typed(head["Reporting-MTA"])
    assert mta_type == "dns" and mta
    if head["Arrival-Date"] is not None:
        assert email.utils.parsedate_to_datetime(str(head["Arrival-Date"])) is not None
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "Subject:" in returned.get_content()


@pytest.mark.parametrize("name", sorted(CASES))
def test_dsns_of_a_real_run_are_well_formed(name: str) -> None:
    found = dsns(name)
    by_action = {str(status_blocks(m)[1][0]["Action"]).strip(): m for m in found}
    assert sorted(by_action) == sorted(action for action, _, _ in CASES[name])
    assert len(found) == len(CASES[name])
    for action, answered, address_type in CASES[name]:
        message = by_action[action]
        check_report(message)
        for block in status_blocks(message)[1]:
            check_recipient(block, action, answered, address_type)
