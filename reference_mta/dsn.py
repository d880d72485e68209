"""Delivery status notifications: the NDR Exchange sends for recipients that failed (RFC 3464).

The NDR is a new message from the postmaster with the null reverse-path, a human-readable part in
Exchange's wording, a machine-readable message/delivery-status part (one block per failed recipient,
with the ORCPT and ENVID the client gave), and the original headers. Whether a recipient wants an NDR
at all (NOTIFY) is decided here too; no NDR is ever made for a message whose sender is already null.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage, Message
from email.policy import SMTP, SMTPUTF8, default

from reference_mta.mailmsg import MSGCLASS_NDR, MailMsg, Recipient

UNKNOWN_USER_TEXT = (
    "The e-mail account does not exist at the organization this message was sent to. Check the e-mail "
    "address, or contact the recipient directly to find out the correct address."
)


def wants_notice(recipient: Recipient, kind: str) -> bool:
    """RFC 3461: without NOTIFY the default is FAILURE and DELAY; NOTIFY=NEVER, or a list without the
    kind, asks for no notice of that kind."""
    if recipient.notify is None:
        return kind in ("FAILURE", "DELAY")
    return kind in {word.strip().upper() for word in recipient.notify.split(",")}


def make_ndr(
    original: MailMsg, failed: list[Recipient], content: bytes, reporting_fqdn: str, postmaster: str
) -> tuple[MailMsg, bytes] | None:
    return make_dsn(original, failed, content, reporting_fqdn, postmaster, action="failed")


def make_dsn(
    original: MailMsg,
    failed: list[Recipient],
    content: bytes,
    reporting_fqdn: str,
    postmaster: str,
    *,
    action: str,
) -> tuple[MailMsg, bytes] | None:
    """An NDR (action "failed") or a delay notice (action "delayed": the message is still being tried)."""
    delayed = action == "delayed"
    failed = [r for r in failed if wants_notice(r, "DELAY" if delayed else "FAILURE")]
    if not original.sender or not failed:
        return None
    header_block = content.split(b"\r\n\r\n", 1)[0]
    headers = email.message_from_bytes(header_block + b"\r\n\r\n", policy=default)
    message_id = email.utils.make_msgid(domain=reporting_fqdn).strip("<>")
    # RFC 6533: a report about or to non-ASCII addresses, or returning UTF-8 headers, is international:
    # UTF-8 headers as they are, a global delivery status with utf-8 address types, global headers.
    international = (
        bool(original.properties.get("SMTP_UTF8"))
        or not original.sender.isascii()
        or not header_block.isascii()
        or not all(r.address.isascii() and r.original.isascii() for r in failed)
    )
    report = EmailMessage(policy=SMTPUTF8 if international else SMTP)
    report["From"] = f"System Administrator <{postmaster}>"
    report["To"] = original.sender
    report["Date"] = email.utils.formatdate()
    report["Message-ID"] = f"<{message_id}>"
    subject_line = f"Delivery Status Notification ({'Delay' if delayed else 'Failure'})"
    report["Subject"] = subject_line
    original_id = _text(headers.get("Message-ID"))
    if original_id:
        report["In-Reply-To"] = original_id
    lines = [
        "Delivery to the following recipients has been delayed; the server will keep trying."
        if delayed
        else "Your message did not reach some or all of the intended recipients.",
        "",
    ]
    subject = _text(headers.get("Subject"))
    if subject:
        lines.insert(1, f"      Subject:  {subject}")
    if not delayed:
        lines += ["The following recipient(s) could not be reached:", ""]
    for recipient in failed:
        lines.append(f"      {recipient.original} on {email.utils.formatdate()}")
        if recipient.enhanced == "5.1.1":
            lines.append(f"            {UNKNOWN_USER_TEXT}")
        lines.append(f"            <{reporting_fqdn} #{_status(recipient, delayed)}>")
        lines.append("")
    report.set_content("\r\n".join(lines))
    report.make_mixed()
    report.set_type("multipart/report")
    report.set_param("report-type", "delivery-status")

    # message/delivery-status is a list of header blocks: the per-message one, then one per recipient.
    status = EmailMessage()
    status.set_type("message/global-delivery-status" if international else "message/delivery-status")
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
                    ("Original-Recipient", recipient.orcpt or _typed(recipient.original)),
                    ("Final-Recipient", _typed(recipient.address)),
                    ("Action", action),
                    ("Status", _status(recipient, delayed)),
                    ("Diagnostic-Code", f"smtp;{recipient.status_text}" if recipient.status_text else None),
                ]
            )
        )
    if international:
        # The email package knows RFC 6533's type only as a message/* holding one message; written so,
        # the per-message block is that message's header and the recipient blocks its (UTF-8) body.
        head, *rest = [block for block in blocks if isinstance(block, Message)]
        text = "".join(block.as_string(policy=SMTPUTF8) for block in rest)
        head.set_payload(text.encode("utf-8").decode("ascii", "surrogateescape"))
        status.set_payload([head])
    else:
        status.set_payload(blocks)
    report.attach(status)

    # RET=HDRS and RET=FULL both get the headers: Exchange returns headers unless asked for more, and
    # the original body may be large.
    original_headers = EmailMessage(policy=SMTP)
    if international:
        # message/global-headers holds the header block as a message of its own, written as it came.
        original_headers.set_type("message/global-headers")
        original_headers.set_payload([email.message_from_bytes(header_block + b"\r\n\r\n", policy=SMTPUTF8)])
    else:
        original_headers.set_content(
            header_block + b"\r\n", maintype="text", subtype="rfc822-headers", cte="8bit"
        )
    report.attach(original_headers)

    # Unfolded: a delivery-status field without spaces (a long address) would otherwise be folded into an
    # RFC 2047 encoded word, which RFC 3464's fields do not allow.
    data = report.as_bytes(policy=(SMTPUTF8 if international else SMTP).clone(max_line_length=None))
    ndr = MailMsg.new(
        "",
        [original.sender],
        RFC822_MSG_ID=message_id,
        RFC822_MSG_SUBJECT=subject_line,
        MSGCLASS=MSGCLASS_NDR,
        MSG_SIZE_HINT=len(data),
        LINKED_MSGID=original.message_id,
    )
    return ndr, data


def _status(recipient: Recipient, delayed: bool) -> str:
    return recipient.enhanced or ("4.4.7" if delayed else "5.0.0")


def _text(value: object) -> str:
    """A header as readable text; raw 8-bit bytes (surrogate-escaped by the parser) become U+FFFD."""
    if value is None:
        return ""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _typed(address: str) -> str:
    return f"rfc822;{address}" if address.isascii() else f"utf-8;{address}"


def _fields(pairs: list[tuple[str, str | None]]) -> Message:
    block = Message(policy=SMTPUTF8)
    for name, value in pairs:
        if value is not None:
            # Values come from the client (ENVID, ORCPT) and the next hop (diagnostics): one line each.
            block[name] = " ".join(value.split())
    return block


def _arrival(original: MailMsg) -> str | None:
    arrival = original.properties.get("ARRIVAL_TIME")
    return email.utils.formatdate(arrival) if isinstance(arrival, float | int) else None
