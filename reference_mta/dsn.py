"""Delivery status notifications: the NDR Exchange sends for recipients that failed (RFC 3464).

The NDR is a new message from the postmaster with the null reverse-path, a human-readable part in
Exchange's wording, a machine-readable message/delivery-status part (one block per failed recipient,
with the ORCPT and ENVID the client gave), and the original headers. A recipient block quotes the next
hop's own reply (Diagnostic-Code) and names it (Remote-MTA) only when a next hop answered; a failure
decided here (no route, DNS, expiry after unanswered attempts) has only its Status. Whether a
recipient wants an NDR at all (NOTIFY) is decided here too; no NDR is ever made for a message whose
sender is already null.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage, Message
from email.policy import SMTP, SMTPUTF8, default

from reference_mta import replies
from reference_mta.mailmsg import MSGCLASS_NDR, MailMsg, Recipient, encapsulate


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
    message_id = email.utils.make_msgid(domain=reporting_fqdn).strip("<>")
    international = _is_international(original, failed, header_block)
    report = _report(
        original, failed, header_block, message_id, reporting_fqdn, postmaster, delayed, international
    )
    domain = postmaster.rpartition("@")[2]
    report.attach(_delivery_status(original, failed, reporting_fqdn, action, international, domain))
    report.attach(_returned_headers(header_block, international))
    # Unfolded: a delivery-status field without spaces (a long address) would otherwise be folded into an
    # RFC 2047 encoded word, which RFC 3464's fields do not allow.
    data = report.as_bytes(policy=(SMTPUTF8 if international else SMTP).clone(max_line_length=None))
    ndr = MailMsg.new(
        "",
        [original.sender],
        RFC822_MSG_ID=message_id,
        RFC822_MSG_SUBJECT=replies.dsn_subject(delayed),
        MSGCLASS=MSGCLASS_NDR,
        MSG_SIZE_HINT=len(data),
        LINKED_MSGID=original.message_id,
    )
    return ndr, data


def _is_international(original: MailMsg, failed: list[Recipient], header_block: bytes) -> bool:
    """RFC 6533: a report about or to non-ASCII addresses, or returning UTF-8 headers, is international:
    UTF-8 headers as they are, a global delivery status with utf-8 address types, global headers."""
    return (
        bool(original.properties.get("SMTP_UTF8"))
        or not original.sender.isascii()
        or not header_block.isascii()
        or not all(r.address.isascii() and r.original.isascii() for r in failed)
    )


def _report(
    original: MailMsg,
    failed: list[Recipient],
    header_block: bytes,
    message_id: str,
    reporting_fqdn: str,
    postmaster: str,
    delayed: bool,
    international: bool,
) -> EmailMessage:
    """The multipart/report with its headers and its human-readable part, ready for the other two."""
    headers = email.message_from_bytes(header_block + b"\r\n\r\n", policy=default)
    report = EmailMessage(policy=SMTPUTF8 if international else SMTP)
    report["From"] = f"System Administrator <{postmaster}>"
    report["To"] = original.sender
    report["Date"] = email.utils.formatdate()
    report["Message-ID"] = f"<{message_id}>"
    report["Subject"] = replies.dsn_subject(delayed)
    original_id = _text(headers.get("Message-ID"))
    if original_id:
        report["In-Reply-To"] = original_id
    report.set_content(_readable_text(failed, _text(headers.get("Subject")), reporting_fqdn, delayed))
    report.make_mixed()
    report.set_type("multipart/report")
    report.set_param("report-type", "delivery-status")
    return report


def _readable_text(failed: list[Recipient], subject: str, reporting_fqdn: str, delayed: bool) -> str:
    """The human-readable part, in Exchange's wording: each recipient, why, and its status code."""
    lines = [replies.DELAY_INTRODUCTION if delayed else replies.NDR_INTRODUCTION, ""]
    if subject:
        lines.insert(1, f"      Subject:  {subject}")
    if not delayed:
        lines += [replies.NDR_RECIPIENTS_HEADING, ""]
    for recipient in failed:
        lines.append(f"      {recipient.original} on {email.utils.formatdate()}")
        explanation = replies.NDR_EXPLANATIONS.get(recipient.enhanced or "")
        if explanation:
            lines.append(f"            {explanation}")
        lines.append(f"            <{reporting_fqdn} #{_status(recipient, delayed)}>")
        lines.append("")
    return "\r\n".join(lines)


def _delivery_status(
    original: MailMsg,
    failed: list[Recipient],
    reporting_fqdn: str,
    action: str,
    international: bool,
    domain: str,
) -> EmailMessage:
    """message/delivery-status is a list of header blocks: the per-message one, then one per recipient."""
    delayed = action == "delayed"
    status = EmailMessage()
    status.set_type("message/global-delivery-status" if international else "message/delivery-status")
    envid = original.properties.get("DSN_ENVID_VALUE")
    head = _fields(
        [
            ("Original-Envelope-Id", envid if isinstance(envid, str) else None),
            ("Reporting-MTA", f"dns;{reporting_fqdn}"),
            ("Arrival-Date", _arrival(original)),
        ]
    )
    blocks = [
        _fields(
            [
                ("Original-Recipient", recipient.orcpt or _typed("SMTP", recipient.original, domain)),
                ("Final-Recipient", _typed(recipient.address_type, recipient.address, domain)),
                ("Action", action),
                ("Status", _status(recipient, delayed)),
                ("Remote-MTA", f"dns;{recipient.remote_mta}" if recipient.remote_mta else None),
                ("Diagnostic-Code", f"smtp;{recipient.remote_reply}" if recipient.remote_reply else None),
            ]
        )
        for recipient in failed
    ]
    if international:
        # The email package knows RFC 6533's type only as a message/* holding one message; written so,
        # the per-message block is that message's header and the recipient blocks its (UTF-8) body.
        text = "".join(block.as_string(policy=SMTPUTF8) for block in blocks)
        head.set_payload(text.encode("utf-8").decode("ascii", "surrogateescape"))
        status.set_payload([head])
    else:
        status.set_payload([head, *blocks])
    return status


def _returned_headers(header_block: bytes, international: bool) -> EmailMessage:
    """RET=HDRS and RET=FULL both get the headers: Exchange returns headers unless asked for more, and
    the original body may be large."""
    original_headers = EmailMessage(policy=SMTP)
    if international:
        # message/global-headers holds the header block as a message of its own, written as it came.
        original_headers.set_type("message/global-headers")
        original_headers.set_payload([email.message_from_bytes(header_block + b"\r\n\r\n", policy=SMTPUTF8)])
    else:
        original_headers.set_content(
            header_block + b"\r\n", maintype="text", subtype="rfc822-headers", cte="8bit"
        )
    return original_headers


def _status(recipient: Recipient, delayed: bool) -> str:
    return recipient.enhanced or (replies.DELIVERY_TIME_EXPIRED if delayed else replies.UNDEFINED_FAILURE)


def _text(value: object) -> str:
    """A header as readable text; raw 8-bit bytes (surrogate-escaped by the parser) become U+FFFD."""
    if value is None:
        return ""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _typed(address_type: str, address: str, domain: str) -> str:
    """An address with its RFC 3464 address type, from the IANA registry (rfc822, utf-8, x400). A foreign
    type the registry lacks (Notes, cc:Mail) is written as the IMCEA address the Internet sees it by."""
    kind = address_type.upper()
    if kind == "X400":
        return f"x400;{address}"
    if kind != "SMTP":
        address = encapsulate(kind, address, domain)
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
