"""Delivery status notifications: the NDR Exchange sends for recipients that failed (RFC 3464).

The NDR is a new message from the postmaster with the null reverse-path, a human-readable part in
Exchange's wording, a machine-readable message/delivery-status part (one block per failed recipient,
with the ORCPT and ENVID the client gave), and the original headers. Whether a recipient wants an NDR
at all (NOTIFY) is decided here too; no NDR is ever made for a message whose sender is already null.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage, Message
from email.policy import SMTP, default

from reference_mta.mailmsg import MSGCLASS_NDR, MailMsg, Recipient

UNKNOWN_USER_TEXT = (
    "The e-mail account does not exist at the organization this message was sent to. Check the e-mail "
    "address, or contact the recipient directly to find out the correct address."
)


def wants_failure_notice(recipient: Recipient) -> bool:
    """RFC 3461: without NOTIFY the default is FAILURE (and DELAY); NOTIFY=NEVER or a list without
    FAILURE asks for no NDR."""
    if recipient.notify is None:
        return True
    return "FAILURE" in {word.strip().upper() for word in recipient.notify.split(",")}


def make_ndr(
    original: MailMsg, failed: list[Recipient], content: bytes, reporting_fqdn: str, postmaster: str
) -> tuple[MailMsg, bytes] | None:
    failed = [r for r in failed if wants_failure_notice(r)]
    if not original.sender or not failed:
        return None
    header_block = content.split(b"\r\n\r\n", 1)[0]
    headers = email.message_from_bytes(header_block + b"\r\n\r\n", policy=default)
    message_id = email.utils.make_msgid(domain=reporting_fqdn).strip("<>")
    report = EmailMessage(policy=SMTP)
    report["From"] = f"System Administrator <{postmaster}>"
    report["To"] = original.sender
    report["Date"] = email.utils.formatdate()
    report["Message-ID"] = f"<{message_id}>"
    report["Subject"] = "Delivery Status Notification (Failure)"
    original_id = _text(headers.get("Message-ID"))
    if original_id:
        report["In-Reply-To"] = original_id
    lines = ["Your message did not reach some or all of the intended recipients.", ""]
    subject = _text(headers.get("Subject"))
    if subject:
        lines.insert(1, f"      Subject:  {subject}")
    lines += ["The following recipient(s) could not be reached:", ""]
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
    envid = original.properties.get("DSN_ENVID_VALUE")
    blocks: list[Message | str] = [
        _fields(
            [
                ("Original-Envelope-Id", envid if isinstance(envid, str) else None),
                ("Reporting-MTA", f"dns;{reporting_fqdn}"),
                ("Arrival-Date", _arrival(original)),
            ]
        )
    ]
    for recipient in failed:
        blocks.append(
            _fields(
                [
                    ("Original-Recipient", recipient.orcpt or f"rfc822;{recipient.original}"),
                    ("Final-Recipient", f"rfc822;{recipient.address}"),
                    ("Action", "failed"),
                    ("Status", recipient.enhanced or "5.0.0"),
                    ("Diagnostic-Code", f"smtp;{recipient.status_text}" if recipient.status_text else None),
                ]
            )
        )
    status.set_payload(blocks)
    report.attach(status)

    # RET=HDRS and RET=FULL both get the headers: Exchange returns headers unless asked for more, and
    # the original body may be large.
    original_headers = EmailMessage(policy=SMTP)
    original_headers.set_content(
        header_block + b"\r\n", maintype="text", subtype="rfc822-headers", cte="8bit"
    )
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


def _text(value: object) -> str:
    """A header as readable text; raw 8-bit bytes (surrogate-escaped by the parser) become U+FFFD."""
    if value is None:
        return ""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _fields(pairs: list[tuple[str, str | None]]) -> Message:
    block = Message()
    for name, value in pairs:
        if value is not None:
            block[name] = value
    return block


def _arrival(original: MailMsg) -> str | None:
    arrival = original.properties.get("ARRIVAL_TIME")
    return email.utils.formatdate(arrival) if isinstance(arrival, float | int) else None
