"""SMTP virtual server: the IIS 6 SMTP service front end of an Exchange server, as policy on top of the
protocol engine (`smtp_protocol`), through aiosmtpd's handler hooks.

- The relay decision and recipient filtering at RCPT (`access_policy`), RFC 5321's address-length limits
  and SMTPUTF8 for envelope addresses, the recipient limit, Basic authentication against the directory.
- VRFY and EXPN answered from the directory (`address_book`) as configured.
- XEXCH50 offered to, and taken from, the organization's own servers only.
- At end of data, the MAILMSG built from the session and handed to AQ; the 250 reply is sent only after
  AQ has the message on disk.
Reply texts come from `replies`.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import ssl
import time
import uuid
import weakref
from collections.abc import Callable
from email.parser import BytesHeaderParser
from typing import Any

from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from reference_mta import replies
from reference_mta.access_policy import Client, filtering_applies, relay_grant
from reference_mta.address_book import AddressBook
from reference_mta.connector_restrictions import priority_of
from reference_mta.mailmsg import MailMsg, apply_exch50
from reference_mta.protocol_log import ProtocolLog
from reference_mta.queue_contract import ComponentUnavailable, Submission
from reference_mta.session_rules import CALL_LIMITS
from reference_mta.smtp_protocol import ExchangeEnvelope, ExchangeSMTP, client_ip
from reference_mta.topology import Organization, Server, VirtualServer

Authenticator = Callable[[str, str], str | None]

_log = logging.getLogger(__name__)

# A virtual server with no size limit (max_message_kb: 0) still holds a message in memory while it
# arrives; beyond this, a message is refused as too big.
UNLIMITED_MESSAGE_CEILING = 256 * 1024 * 1024


class VirtualServerHandler:
    def __init__(
        self,
        organization: Organization,
        server: Server,
        vs: VirtualServer,
        aq: Submission,
        authenticate: Authenticator | None = None,
        tls_context: ssl.SSLContext | None = None,
        address_book: AddressBook | None = None,
        etrn: Callable[[str], int | None] | None = None,
    ) -> None:
        self.organization = organization
        self.server = server
        self.vs = vs
        self.fqdn = vs.fqdn or server.fqdn
        self.aq = aq
        self.authenticate = authenticate if vs.basic_auth else None
        self.address_book = address_book
        self.etrn = etrn  # the server's remote-triggered link queues (route_action); None: ETRN not offered
        self.sessions: weakref.WeakSet[ExchangeSMTP] = weakref.WeakSet()
        self.tls_context = tls_context if vs.tls else None
        # The server's folder is the one that holds its Mailroot (Mailroot/vsi 1/Queue), as on an IIS host.
        self.protocol_log = (
            ProtocolLog(aq.directory.path.parents[2], vs.instance, server.name, vs.address)
            if vs.logging == "w3c"
            else None
        )

    def protocol(self) -> ExchangeSMTP:
        smtp = ExchangeSMTP(
            self,
            decode_data=False,
            data_size_limit=self.vs.max_message_kb * 1024 or UNLIMITED_MESSAGE_CEILING,
            # Arguments are decoded as UTF-8 so that a non-ASCII address gets RFC 6531's 553 5.6.7 from
            # handle_MAIL/handle_RCPT rather than aiosmtpd's blanket 500; whether SMTPUTF8 is offered is
            # the virtual server's setting, applied in ExchangeSMTP.smtp_MAIL and the EHLO keywords.
            enable_SMTPUTF8=True,
            authenticator=self._authenticator if self.authenticate else None,
            auth_require_tls=self.vs.auth_requires_tls and self.tls_context is not None,
            auth_exclude_mechanism=() if self.vs.basic_auth else ("LOGIN", "PLAIN"),
            tls_context=self.tls_context,
            timeout=self.vs.connection_timeout,
            command_call_limit=dict(CALL_LIMITS),
        )
        self.sessions.add(smtp)
        return smtp

    def receiving(self) -> bool:
        """A session is in the middle of a mail transaction (MAIL accepted, the message not yet queued
        or refused): a client that closes right after its final dot, without waiting for the reply,
        leaves the message to arrive after the client is gone."""
        return any(
            smtp.transport is not None and smtp.envelope is not None and smtp.envelope.mail_from is not None
            for smtp in list(self.sessions)
        )

    async def close_sessions(self) -> None:
        """End every open session: a stopping server must not leave handler tasks behind."""
        handlers = []
        for smtp in list(self.sessions):
            if smtp.transport is not None:
                smtp.transport.close()
            # aiosmtpd keeps the session's task in _handler_coroutine. Closing the transport normally ends
            # it, but not while a TLS handshake is pending, so it is cancelled as well.
            if smtp._handler_coroutine is not None:
                smtp._handler_coroutine.cancel()
                handlers.append(smtp._handler_coroutine)
        await asyncio.gather(*handlers, return_exceptions=True)

    # --- hooks -----------------------------------------------------------------------------------

    async def handle_EHLO(
        self, server: ExchangeSMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # What the extensions offered below add to a command line (set, not added: EHLO may come again):
        # SIZE 26 (RFC 1870), DSN 113 on MAIL and 500 on RCPT (RFC 3461 5), SMTPUTF8 10 (RFC 6531).
        limits = server.command_size_limits
        limits.clear()
        limits["MAIL"] = server.command_size_limit + 26 + 113 + (10 if self.vs.smtputf8 else 0)
        limits["RCPT"] = server.command_size_limit + 500
        encrypted = session.ssl is not None
        # With "requires TLS", AUTH is offered only once the session is encrypted.
        auth_offered = self.authenticate is not None and (encrypted or not server._auth_require_tls)
        return replies.ehlo_lines(
            self.fqdn,
            client_ip(session),
            self.vs.max_message_kb * 1024,
            auth=auth_offered,
            starttls=self.tls_context is not None and not encrypted,
            chunking=self.vs.chunking,
            vrfy=self.vs.vrfy != "disabled",
            smtputf8=self.vs.smtputf8,
            xexch50=self.is_organization_server(client_ip(session)),
            etrn=self.etrn is not None,
        )

    async def handle_HELO(
        self, server: ExchangeSMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        return replies.helo(self.fqdn, client_ip(session))

    async def handle_MAIL(
        self,
        server: ExchangeSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        refusal = _address_refusal(address.strip("<>"), envelope.smtp_utf8)
        if refusal is not None:
            return refusal
        # aiosmtpd hands the null reverse-path over as "<>" and needs mail_from to be non-empty.
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        assert isinstance(envelope, ExchangeEnvelope)
        envelope.dsn_mail = server.mail_parameters.dsn
        envelope.binarymime = server.mail_parameters.binarymime
        return replies.sender_ok(f"<{address.strip('<>')}>")

    async def handle_RCPT(
        self,
        server: ExchangeSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.vs.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if address.lower() == "postmaster":
            # RFC 5321 4.1.1.3: <Postmaster> without a domain must be accepted; it is the primary domain's.
            address = f"postmaster@{self.organization.primary_domain}"
        if "@" not in address:
            return replies.INVALID_ADDRESS
        refusal = _address_refusal(address, envelope.smtp_utf8)
        if refusal is not None:
            return refusal
        client = Client(client_ip(session), bool(session.authenticated))
        if relay_grant(self.organization, self.vs, client, address) is None:
            return replies.unable_to_relay(address)
        if filtering_applies(self.organization, self.vs, client, address) and self._filtered(address):
            return replies.MAILBOX_NOT_AVAILABLE
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        assert isinstance(envelope, ExchangeEnvelope)
        envelope.dsn_rcpt[address] = server.rcpt_dsn
        return replies.recipient_ok(address)

    async def handle_DATA(self, server: ExchangeSMTP, session: Session, envelope: Envelope) -> str:
        # The session rules let DATA (and BDAT LAST) through only once a recipient is accepted.
        assert isinstance(envelope, ExchangeEnvelope)
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        peer = client_ip(session)
        org_internal = self.organization.is_own_address(peer)
        authenticated = isinstance(session.auth_data, str)
        content, message_id, subject, queue_id, priority = self._stamp(raw, session)
        if server.session_log is not None:
            server.session_log.query = f"<{message_id}>"  # what IIS logs for DATA
        msg = MailMsg.new(
            (envelope.mail_from or "").strip("<>"),
            list(envelope.rcpt_tos),
            CONNECTION_IP_ADDRESS=peer,
            HELO_DOMAIN=session.host_name or "",
            AUTHENTICATED_USER_NAME=session.auth_data if isinstance(session.auth_data, str) else None,
            SERVER_NAME=self.fqdn,
            SERVER_VERSION=replies.SERVICE_VERSION,
            VIRTUAL_SERVER=self.vs.name,
            RFC822_MSG_ID=message_id,
            RFC822_MSG_SUBJECT=subject,
            MSG_SIZE_HINT=len(content),
            QUEUE_ID=queue_id,
            ORG_INTERNAL=org_internal,
            # Whether this session may not vouch for the sender: a server of the organization passes
            # on what the message's origin said, in XEXCH50 (`apply_exch50` below); anyone else is
            # vouched for by authenticating, or by "Resolve anonymous e-mail" (docs/decisions.md,
            # "Connector restrictions").
            ANONYMOUS_ORIGIN=not (org_internal or authenticated or self.vs.resolve_anonymous),
            PRIORITY=priority,
            HOP_COUNT=_hop_count(content),
            MAX_HOP_COUNT=self.vs.max_hop_count,
            EIGHTBIT_MIME_OPTION=any(o.upper() == "BODY=8BITMIME" for o in envelope.mail_options),
            BINARYMIME_OPTION=envelope.binarymime,
            SMTP_UTF8=bool(envelope.smtp_utf8),
        )
        msg.properties.update(
            DSN_RET_VALUE=envelope.dsn_mail.get("RET"), DSN_ENVID_VALUE=envelope.dsn_mail.get("ENVID")
        )
        if envelope.exch50 is not None:
            apply_exch50(msg, envelope.exch50)
        for recipient in msg.recipients:
            arguments = envelope.dsn_rcpt.get(recipient.address, {})
            recipient.notify = arguments.get("NOTIFY")
            recipient.orcpt = arguments.get("ORCPT")
        try:
            # Shielded: a client that goes away now must not cancel a submission already writing to
            # disk; the message then enters AQ (a duplicate is better than a loss, RFC 5321 6.1).
            await asyncio.shield(self.aq.submit(msg, content, source="smtp"))
        except OSError:
            return replies.QUEUE_FAILURE
        server.messages += 1
        return replies.queued(f"{queue_id}@{self.fqdn}")

    async def handle_RSET(self, server: ExchangeSMTP, session: Session, envelope: Envelope) -> str:
        return replies.RESETTING

    async def handle_NOOP(self, server: ExchangeSMTP, session: Session, envelope: Envelope, arg: str) -> str:
        return replies.NOOP_OK

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd would put the exception's text on the wire; the client gets a temporary failure.
        _log.exception("%s: error in an SMTP session on %s", self.server.name, self.vs.name, exc_info=error)
        return replies.PROCESSING_ERROR

    async def handle_QUIT(self, server: ExchangeSMTP, session: Session, envelope: Envelope) -> str:
        return replies.closing(self.fqdn)

    # --- policy ----------------------------------------------------------------------------------

    def is_organization_server(self, address: str) -> bool:
        """Whether the client is a server of the organization, recognised by its address as for relay
        (docs/decisions.md, "Exchange servers trust each other by address"): only such a server is
        offered XEXCH50 and may send the categorizer's state."""
        return self.organization.is_own_address(address)

    def _filtered(self, address: str) -> bool:
        """Recipient filtering: on the explicit list, or (if asked) not in the directory. A directory
        that does not answer filters nothing: the categorizer waits for it (docs/decisions.md)."""
        filtering = self.vs.recipient_filtering
        assert filtering is not None
        if filtering.listed(address):
            return True
        if not filtering.directory or self.address_book is None:
            return False
        try:
            return self.address_book.find(address) is None
        except ComponentUnavailable:
            return False

    async def verify(self, address: str) -> list[str]:
        if self.vs.vrfy == "cannot_verify" or self.address_book is None:
            return [replies.cannot_verify(address)]
        try:
            entry = self.address_book.find(address)
        except ComponentUnavailable:
            return [replies.DIRECTORY_UNAVAILABLE]
        if entry is None:
            return [replies.USER_UNKNOWN]
        return [replies.verified(str(self.address_book.listing(entry, address)))]

    async def expand(self, address: str) -> list[str]:
        if self.address_book is None:
            return [replies.NOT_IMPLEMENTED]
        try:
            entry = self.address_book.find(address)
            if entry is None:
                return [replies.USER_UNKNOWN]
            if "group" not in entry.classes:
                return [replies.NOT_A_GROUP]
            members = self.address_book.members(entry)
        except ComponentUnavailable:
            return [replies.DIRECTORY_UNAVAILABLE]
        if not members:
            return [replies.group_without_members(str(self.address_book.listing(entry, address)))]
        return replies.group_members([str(member) for member in members])

    def _authenticator(
        self, server: ExchangeSMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword) or self.authenticate is None:
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        try:
            dn = self.authenticate(user, auth_data.password.decode("utf-8", "replace"))
        except ComponentUnavailable:
            # The directory could not be asked: a temporary failure, the client may try again.
            return AuthResult(success=False, handled=False, message=replies.AUTH_TEMPORARY_FAILURE)
        if dn is None:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, handled=False, auth_data=user)

    def _stamp(self, raw: bytes, session: Session) -> tuple[bytes, str, str, str, str]:
        """Prepend our Received header; add a Message-ID when the client sent none (as IIS does).
        Returns the content, its Message-ID, subject, queue ID and priority."""
        headers = BytesHeaderParser().parsebytes(raw)
        message_id = (headers.get("Message-ID") or "").strip().strip("<>")
        # Raw UTF-8 in a header (RFC 6532) comes out of the parser as surrogates; show it as text.
        subject = (
            str(headers.get("Subject") or "").encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        )
        queue_id = f"{self.server.name.upper()}{uuid.uuid4().hex[:16].upper()}"
        received = (
            f"Received: from {session.host_name or 'unknown'} ([{client_ip(session)}]) "
            f"by {self.fqdn} with Microsoft SMTPSVC({replies.SERVICE_VERSION});\r\n"
            f"\t {email.utils.formatdate(time.time())}\r\n"
        ).encode()
        extra = b""
        if not message_id:
            message_id = f"{queue_id}@{self.fqdn}"
            extra = f"Message-ID: <{message_id}>\r\n".encode()
        return received + extra + raw, message_id, subject, queue_id, priority_of(headers)


def _address_refusal(address: str, smtputf8: bool) -> str | None:
    """RFC 5321 4.5.3.1 and RFC 6531 3.3: what refuses an envelope address before any policy."""
    if not address:
        return None  # the null reverse-path
    # Bytes that are not UTF-8 arrive surrogate-escaped; they are no address in any form.
    if (not smtputf8 and not address.isascii()) or not address.isprintable():
        return replies.NON_ASCII_ADDRESS
    local, _, domain = address.rpartition("@")
    if len(local.encode()) > 64 or len(domain.encode()) > 255:
        return replies.ADDRESS_TOO_LONG
    return None


def _hop_count(content: bytes) -> int:
    """Received: headers in the header block, ours included: the hop count IIS compares with its
    maximum (Delivery → Advanced → Maximum hop count)."""
    header_block = content.split(b"\r\n\r\n", 1)[0]
    return sum(1 for line in header_block.split(b"\r\n") if line[:9].lower() == b"received:")
