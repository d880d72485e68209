"""SMTP virtual server: the IIS 6 SMTP service front end of an Exchange server, on aiosmtpd.

Policy enters through aiosmtpd's handler hooks: the relay decision at RCPT (the model of KB 260973
below), size and recipient limits, and at end of data the MAILMSG built from the session and handed
to AQ. The 250 reply is sent only after AQ has the message on disk. Reply texts come from `replies`.

Relay decision for a recipient, first match wins:
  1. the virtual server is open to relay;
  2. the session authenticated and authenticated clients may relay;
  3. the client is another Exchange server of the organization (Exchange servers authenticate to each
     other with X-EXPS GSSAPI; we model that by their address, see docs/decisions.md);
  4. the client address passes the relay list (only-the-list / all-except-the-list);
  5. the domain is an inbound domain: in a recipient policy, authoritative or not;
  6. an SMTP connector with "allow messages to be relayed to these domains" matches the domain;
  otherwise 550 5.7.1 Unable to relay.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import ssl
import time
import uuid
import weakref
from collections.abc import Callable
from email.parser import BytesHeaderParser
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from reference_mta import replies
from reference_mta.mailmsg import MailMsg
from reference_mta.queuing import AdvancedQueuingEngine, ComponentUnavailable
from reference_mta.topology import Organization, Server, VirtualServer

Authenticator = Callable[[str, str], str | None]


class ExchangeSMTP(SMTP):
    """aiosmtpd's protocol engine with Exchange's wording and the DSN extension's parameters."""

    def __init__(self, handler: VirtualServerHandler, **kwargs: Any) -> None:
        fqdn = handler.server.fqdn
        super().__init__(handler, hostname=fqdn, ident=replies.banner(fqdn), **kwargs)

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            await super().push(replies.translate(status))
        else:
            await super().push(status)

    # aiosmtpd answers 555 to parameters it does not know; the DSN extension's are ours (RFC 3461).
    dsn_mail: dict[str, str]
    dsn_rcpt: dict[str, str]
    # This transaction's DSN arguments: RET/ENVID, and NOTIFY/ORCPT per accepted recipient.
    dsn_transaction: dict[str, dict[str, Any]]

    async def smtp_MAIL(self, arg: str | None) -> None:
        arg, self.dsn_mail = self._take_dsn(arg, ("RET", "ENVID"))
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        arg, self.dsn_rcpt = self._take_dsn(arg, ("NOTIFY", "ORCPT"))
        await super().smtp_RCPT(arg)

    def _take_dsn(self, arg: str | None, names: tuple[str, ...]) -> tuple[str | None, dict[str, str]]:
        if arg is None or self.session is None or not self.session.extended_smtp:
            return arg, {}
        kept: list[str] = []
        taken: dict[str, str] = {}
        for word in arg.split(" "):
            name, equals, value = word.partition("=")
            if equals and name.upper() in names:
                taken[name.upper()] = xtext_decode(value)
            else:
                kept.append(word)
        return " ".join(kept), taken


def xtext_decode(value: str) -> str:
    """RFC 3461 xtext: "+XX" is the byte with hex value XX."""
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m[1], 16)), value)


class VirtualServerHandler:
    def __init__(
        self,
        organization: Organization,
        server: Server,
        vs: VirtualServer,
        aq: AdvancedQueuingEngine,
        authenticate: Authenticator | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.organization = organization
        self.server = server
        self.vs = vs
        self.aq = aq
        self.authenticate = authenticate
        self.sessions: weakref.WeakSet[ExchangeSMTP] = weakref.WeakSet()
        self.tls_context = tls_context if vs.tls else None

    def protocol(self) -> ExchangeSMTP:
        smtp = ExchangeSMTP(
            self,
            decode_data=False,
            data_size_limit=self.vs.max_message_kb * 1024 or None,
            enable_SMTPUTF8=False,
            authenticator=self._authenticator if self.authenticate else None,
            auth_require_tls=self.vs.auth_requires_tls and self.tls_context is not None,
            tls_context=self.tls_context,
        )
        self.sessions.add(smtp)
        return smtp

    async def close_sessions(self) -> None:
        """End every open session: a stopping server must not leave handler tasks behind."""
        handlers = []
        for smtp in list(self.sessions):
            if smtp.transport is not None:
                smtp.transport.close()
            # aiosmtpd keeps the session's task in _handler_coroutine; closing the transport cancels it.
            if smtp._handler_coroutine is not None:
                handlers.append(smtp._handler_coroutine)
        await asyncio.gather(*handlers, return_exceptions=True)

    # --- hooks -----------------------------------------------------------------------------------

    async def handle_EHLO(
        self, server: ExchangeSMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        encrypted = session.ssl is not None
        # With "requires TLS", AUTH is offered only once the session is encrypted.
        auth_offered = self.authenticate is not None and (encrypted or not server._auth_require_tls)
        return replies.ehlo_lines(
            self.server.fqdn,
            _client_ip(session),
            self.vs.max_message_kb * 1024,
            auth=auth_offered,
            starttls=self.tls_context is not None and not encrypted,
        )

    async def handle_HELO(
        self, server: ExchangeSMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        return replies.helo(self.server.fqdn, _client_ip(session))

    async def handle_MAIL(
        self,
        server: ExchangeSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # aiosmtpd hands the null reverse-path over as "<>" and needs mail_from to be non-empty.
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        server.dsn_transaction = {"mail": dict(getattr(server, "dsn_mail", {})), "rcpt": {}}
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
        if "@" not in address:
            return replies.INVALID_ADDRESS
        if not self.may_relay_to(session, address):
            return replies.unable_to_relay(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        server.dsn_transaction["rcpt"][address] = dict(getattr(server, "dsn_rcpt", {}))
        return replies.recipient_ok(address)

    async def handle_DATA(self, server: ExchangeSMTP, session: Session, envelope: Envelope) -> str:
        if not envelope.rcpt_tos:
            return replies.NEED_RCPT
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        content, message_id, subject, queue_id = self._stamp(raw, session)
        client_ip = _client_ip(session)
        msg = MailMsg.new(
            (envelope.mail_from or "").strip("<>"),
            list(envelope.rcpt_tos),
            CONNECTION_IP_ADDRESS=client_ip,
            HELO_DOMAIN=session.host_name or "",
            AUTHENTICATED_USER_NAME=session.auth_data if isinstance(session.auth_data, str) else None,
            SERVER_NAME=self.server.fqdn,
            SERVER_VERSION=replies.SERVICE_VERSION,
            VIRTUAL_SERVER=self.vs.name,
            RFC822_MSG_ID=message_id,
            RFC822_MSG_SUBJECT=subject,
            MSG_SIZE_HINT=len(content),
            QUEUE_ID=queue_id,
            ORG_INTERNAL=self.organization.server_by_address(client_ip) is not None,
            HOP_COUNT=_hop_count(content),
            MAX_HOP_COUNT=self.vs.max_hop_count,
            EIGHTBIT_MIME_OPTION=any(o.upper() == "BODY=8BITMIME" for o in envelope.mail_options),
        )
        dsn = server.dsn_transaction
        msg.properties.update(DSN_RET_VALUE=dsn["mail"].get("RET"), DSN_ENVID_VALUE=dsn["mail"].get("ENVID"))
        for recipient in msg.recipients:
            arguments = dsn["rcpt"].get(recipient.address, {})
            recipient.notify = arguments.get("NOTIFY")
            recipient.orcpt = arguments.get("ORCPT")
        try:
            await self.aq.submit(msg, content, source="smtp")
        except OSError:
            return replies.QUEUE_FAILURE
        return replies.queued(f"{queue_id}@{self.server.fqdn}")

    async def handle_QUIT(self, server: ExchangeSMTP, session: Session, envelope: Envelope) -> str:
        return replies.closing(self.server.fqdn)

    # --- policy ----------------------------------------------------------------------------------

    def may_relay_to(self, session: Session, address: str) -> bool:
        relay = self.vs.relay
        client_ip = _client_ip(session)
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if relay.open:
            return True
        if session.authenticated and relay.allow_authenticated:
            return True
        if self.organization.server_by_address(client_ip) is not None:
            return True
        if relay.permits_address(client_ip):
            return True
        if self.organization.policy_domain(domain) is not None:
            return True
        return self.organization.relay_connector(domain) is not None

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

    def _stamp(self, raw: bytes, session: Session) -> tuple[bytes, str, str, str]:
        """Prepend our Received header; add a Message-ID when the client sent none (as IIS does)."""
        headers = BytesHeaderParser().parsebytes(raw)
        message_id = (headers.get("Message-ID") or "").strip().strip("<>")
        subject = str(headers.get("Subject") or "")
        queue_id = f"{self.server.name.upper()}{uuid.uuid4().hex[:16].upper()}"
        received = (
            f"Received: from {session.host_name or 'unknown'} ([{_client_ip(session)}]) "
            f"by {self.server.fqdn} with Microsoft SMTPSVC({replies.SERVICE_VERSION});\r\n"
            f"\t {email.utils.formatdate(time.time())}\r\n"
        ).encode()
        extra = b""
        if not message_id:
            message_id = f"{queue_id}@{self.server.fqdn}"
            extra = f"Message-ID: <{message_id}>\r\n".encode()
        return received + extra + raw, message_id, subject, queue_id


def _client_ip(session: Session) -> str:
    # aiosmtpd types peer loosely; for TCP it is the (host, port) tuple of the client.
    peer: tuple[str, int] = session.peer  # type: ignore[assignment]
    return peer[0]


def _hop_count(content: bytes) -> int:
    """Received: headers in the header block, ours included: the hop count IIS compares with its
    maximum (Delivery → Advanced → Maximum hop count)."""
    header_block = content.split(b"\r\n\r\n", 1)[0]
    return sum(1 for line in header_block.split(b"\r\n") if line[:9].lower() == b"received:")
