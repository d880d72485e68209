"""Delivery status notifications: the NDR Exchange sends for recipients that failed (RFC 3464).

The NDR is a new message from the postmaster with the null reverse-path, a human-readable part in
Exchange's wording, a machine-readable message/delivery-status part per failed recipient, and the
original headers. No NDR is ever made for a message whose sender is already null.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.policy import SMTP

from reference_mta.mailmsg import MSGCLASS_NDR, MailMsg, Recipient

UNKNOWN_USER_TEXT = (
    "The e-mail account does not exist at the organization this message was sent to. Check the e-mail "
    "address, or contact the recipient directly to find out the correct address."
)


def make_ndr(
    original: MailMsg, failed: list[Recipient], content: bytes, reporting_fqdn: str, postmaster: str
) -> tuple[MailMsg, bytes] | None:
    if not original.sender or not failed:
        return None
    headers = BytesHeaderParser().parsebytes(content)
    message_id = email.utils.make_msgid(domain=reporting_fqdn).strip("<>")
    report = EmailMessage(policy=SMTP)
    report["From"] = f"System Administrator <{postmaster}>"
    report["To"] = original.sender
    report["Date"] = email.utils.formatdate()
    report["Message-ID"] = f"<{message_id}>"
    report["Subject"] = "Delivery Status Notification (Failure)"
    if headers.get("Message-ID"):
        report["In-Reply-To"] = headers["Message-ID"]
    lines = ["Your message did not reach some or all of the intended recipients.", ""]
    if headers.get("Subject"):
        lines.insert(1, f"      Subject:  {headers['Subject']}")
    lines.append("The following recipient(s) could not be reached:")
    lines.append("")
    for recipient in failed:
        lines.append(f"      {recipient.original} on {email.utils.formatdate()}")
        if recipient.enhanced == "5.1.1":
            lines.append(f"            {UNKNOWN_USER_TEXT}")
        lines.append(f"            <{reporting_fqdn} #{recipient.enhanced}>")
        lines.append("")
    report.set_content("\r\n".join(lines))
    report.make_mixed()
    report.set_type("multipart/report")
    report.set_param("report-type", "delivery-status")

    # message/delivery-status is a list of header blocks: the per-message one, then one per recipient.
    status = EmailMessage()
    status.set_type("message/delivery-status")
    blocks: list[Message | str] = [
        _fields([("Reporting-MTA", f"dns;{reporting_fqdn}"), ("Arrival-Date", _arrival(original))])
    ]
    for recipient in failed:
        blocks.append(
            _fields(
                [
                    ("Original-Recipient", f"rfc822;{recipient.original}"),
                    ("Final-Recipient", f"rfc822;{recipient.address}"),
                    ("Action", "failed"),
                    ("Status", recipient.enhanced or "5.0.0"),
                    ("Diagnostic-Code", f"smtp;{recipient.status_text}" if recipient.status_text else None),
                ]
            )
        )
    status.set_payload(blocks)
    report.attach(status)

    original_headers = EmailMessage(policy=SMTP)
    original_headers.add_header("Content-Type", "text/rfc822-headers")
    original_headers.set_payload(content.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace") + "\r\n")
    report.attach(original_headers)

    data = report.as_bytes(policy=SMTP)
    ndr = MailMsg.new(
        "",
        [original.sender],
        RFC822_MSG_ID=message_id,
        RFC822_MSG_SUBJECT="Delivery Status Notification (Failure)",
        MSGCLASS=MSGCLASS_NDR,
        MSG_SIZE_HINT=len(data),
        LINKED_MSGID=original.message_id,
    )
    return ndr, data


def _fields(pairs: list[tuple[str, str | None]]) -> Message:
    block = Message()
    for name, value in pairs:
        if value is not None:
            block[name] = value
    return block


def _arrival(original: MailMsg) -> str | None:
    arrival = original.properties.get("ARRIVAL_TIME")
    return email.utils.formatdate(arrival) if isinstance(arrival, float | int) else None
