"""Delivery status notifications: the NDR Exchange sends for recipients that failed (RFC 3464).

The NDR is a new message from the postmaster with the null reverse-path, a human-readable part in
Exchange's wording, a machine-readable message/delivery-status part per failed recipient, and the
original headers. No NDR is ever made for a message whose sender is already null.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage
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

    status = EmailMessage(policy=SMTP)
    per_message = [f"Reporting-MTA: dns;{reporting_fqdn}"]
    arrival = original.properties.get("ARRIVAL_TIME")
    if isinstance(arrival, float | int):
        per_message.append(f"Arrival-Date: {email.utils.formatdate(arrival)}")
    blocks = ["\r\n".join(per_message)]
    for recipient in failed:
        block = [
            f"Original-Recipient: rfc822;{recipient.original}",
            f"Final-Recipient: rfc822;{recipient.address}",
            "Action: failed",
            f"Status: {recipient.enhanced}",
        ]
        if recipient.status_text:
            block.append(f"Diagnostic-Code: smtp;{recipient.status_text}")
        blocks.append("\r\n".join(block))
    status.set_payload("\r\n\r\n".join(blocks) + "\r\n")
    status.replace_header("Content-Type", "message/delivery-status") if status.get(
        "Content-Type"
    ) else status.add_header("Content-Type", "message/delivery-status")
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
