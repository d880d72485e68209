"""SMTP virtual server: the IIS 6 SMTP service front end of an Exchange server, on aiosmtpd.

aiosmtpd runs the protocol; this module adds what an Exchange virtual server decides on top of it:
- the session rules (`session_rules`): every command passes the state table, the sync-point check and
  the anonymous-access check before aiosmtpd sees it;
- access (`access_policy`): connection control at the greeting, the relay decision and recipient
  filtering at RCPT;
- what aiosmtpd lacks: CHUNKING and BINARYMIME (BDAT, RFC 3030), the DSN parameters (RFC 3461), VRFY and
  EXPN against the directory, RFC 5321's address-length limits, SMTPUTF8 as configured;
- bounds per session: message size, recipients, messages per connection, error replies, idle time, and
  how often each command may be repeated;
- at end of data, the MAILMSG built from the session and handed to AQ; the 250 reply is sent only after
  AQ has the message on disk.
Reply texts come from `replies`.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import re
import ssl
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from reference_mta import replies
from reference_mta.access_policy import Client, filtering_applies, may_connect, relay_grant
from reference_mta.address_book import AddressBook
from reference_mta.mailmsg import MailMsg
from reference_mta.queuing import AdvancedQueuingEngine, ComponentUnavailable
from reference_mta.session_rules import CALL_LIMITS, RULES, Rule, State, is_sync_point, state_of
from reference_mta.topology import Organization, Server, VirtualServer

Authenticator = Callable[[str, str], str | None]

_log = logging.getLogger(__name__)

_BDAT_ARGUMENT = re.compile(r"(\d+)(?: +(LAST))?", re.IGNORECASE)
_CHUNK_PIECE = 64 * 1024
_READER_LIMIT = 2048
# A virtual server with no size limit (max_message_kb: 0) still holds a message in memory while it
# arrives; beyond this, a message is refused as too big.
UNLIMITED_MESSAGE_CEILING = 256 * 1024 * 1024


class ExchangeEnvelope(Envelope):
    """aiosmtpd's envelope plus this transaction's BDAT chunks, BODY=BINARYMIME and DSN arguments; it is
    made afresh at RSET, HELO/EHLO and after each message, so none of these outlive their transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: bytearray | None = None  # not None once a BDAT transfer has begun
        self.binarymime = False
        self.dsn_mail: dict[str, str] = {}
        self.dsn_rcpt: dict[str, dict[str, str]] = {}


@dataclass
class _MailParameters:
    """What smtp_MAIL took off the MAIL command before aiosmtpd parses it; handle_MAIL keeps it."""

    dsn: dict[str, str] = field(default_factory=dict)
    binarymime: bool = False


class ExchangeSMTP(SMTP):
    """aiosmtpd's protocol engine with the virtual server's rules in front of every command."""

    def __init__(self, handler: VirtualServerHandler, **kwargs: Any) -> None:
        self.vs = handler.vs
        self.fqdn = handler.fqdn
        # aiosmtpd sizes its line reader from line_length_limit, which also bounds DATA text lines. The
        # reader must take the longest command line (RCPT with DSN parameters: 1010 octets); a text line
        # may have 1000 octets with its CRLF plus a transparency dot (RFC 5321 4.5.3.1.6), which aiosmtpd
        # counts before it removes the dot: 1001.
        self.line_length_limit = _READER_LIMIT
        super().__init__(handler, hostname=handler.fqdn, ident=replies.banner(handler.fqdn), **kwargs)
        self.line_length_limit = 1001
        # RFC 5321 4.5.3.1.4: 512 octets with the CRLF; aiosmtpd counts without it, and keeps its limits
        # in a class-level dict that every session shares (EHLO raises them), so each session gets its own.
        self.command_size_limit = 510
        self.command_size_limits = collections.defaultdict(lambda: 510)
        self.errors = 0
        self.messages = 0
        self.greeted_client = False
        self.refused = False  # connection control said no: only QUIT is served (RFC 5321 3.1)
        self.in_data = False
        self.mail_parameters = _MailParameters()
        self.rcpt_dsn: dict[str, str] = {}
        # aiosmtpd dispatches every command through this table; wrapping its entries puts the session
        # rules in front of each command without copying aiosmtpd's command loop.
        self._smtp_methods = {name: self._ruled(name, method) for name, method in self._smtp_methods.items()}

    def _create_envelope(self) -> ExchangeEnvelope:
        return ExchangeEnvelope()

    # Methods, not properties: aiosmtpd inspects every attribute of the protocol object at construction,
    # before there is an envelope.
    def exchange_envelope(self) -> ExchangeEnvelope:
        assert isinstance(self.envelope, ExchangeEnvelope)
        return self.envelope

    def state(self) -> State:
        envelope = self.exchange_envelope()
        return state_of(
            greeted=self.session is not None and self.session.host_name is not None,
            has_sender=bool(envelope.mail_from),
            recipients=len(envelope.rcpt_tos),
            chunking=envelope.chunks is not None,
        )

    def refusal(self, rule: Rule) -> str | None:
        extended = self.session is not None and bool(self.session.extended_smtp)
        refusal = rule.refusal(self.state(), extended)
        anonymous = self.session is None or not self.session.authenticated
        if refusal is None and rule.needs_authentication and not self.vs.anonymous and anonymous:
            return replies.NOT_AUTHENTICATED
        return refusal

    def _ruled(self, command: str, method: Callable[[str | None], Awaitable[None]]) -> Callable[..., Any]:
        async def ruled(arg: str | None) -> None:
            if self.transport is None or self.transport.is_closing():
                return  # lines the client had sent before the session was closed on it
            if self.refused:
                await self.push(replies.closing(self.fqdn) if command == "QUIT" else replies.REFUSED_SESSION)
                if command == "QUIT":
                    self.close()
                return
            if self._sync_violated(command, arg):
                await self.push(replies.SYNC_ERROR)
                self.close()
                return
            rule = RULES.get(command)
            # BDAT reads its chunk before it may refuse: the chunk's bytes must not be taken for commands.
            refusal = self.refusal(rule) if rule is not None and not rule.reads_payload else None
            if refusal is not None:
                await self.push(refusal)
                return
            await method(arg)

        return ruled

    def _sync_violated(self, command: str, arg: str | None) -> bool:
        if self.vs.pipelining_sync != "enforce" or self.session is None:
            return False
        if not is_sync_point(command, arg, pipelining=bool(self.session.extended_smtp)):
            return False
        # Input beyond the current line waits in the StreamReader's buffer; asyncio offers no public way
        # to ask whether any is there.
        return bool(self._reader._buffer)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def push(self, status: str | bytes) -> None:
        text = replies.translate(status) if isinstance(status, str) else status.decode("utf-8", "replace")
        if not self.greeted_client:
            self.greeted_client = True
            if not may_connect(self.vs, _client_ip(self.session)):
                # Connection control: 554 instead of the greeting; RFC 5321 3.1 then wants the server to
                # wait for QUIT, answering 503 to anything else.
                self.refused = True
                text = replies.CONNECTION_REFUSED
        await super().push(text)
        # Only the client's mistakes count (5xx); 4xx replies are the server's state or a limit the
        # client is told about (452 too many recipients), and aiosmtpd's 502 for unknown commands closes.
        if text[:1] == "5" and text[3:4] == " " and not text.startswith("502 5.5.1 Too many"):
            self.errors += 1
            if self.errors >= self.vs.max_errors:
                await super().push(replies.TOO_MANY_ERRORS)
                self.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # aiosmtpd restarts the idle timer at each command only: a message still arriving is not idle.
        if self.in_data:
            self._reset_timeout()

    def _timeout_cb(self) -> None:
        if self._tls_protocol is not None and self.session is not None and self.session.ssl is None:
            # Idle during the TLS handshake: closing the TLS transport would complete the handshake's
            # future as if it had succeeded and leave the session waiting forever; end it outright.
            if self._original_transport is not None:
                self._original_transport.abort()  # type: ignore[attr-defined]
            if self._handler_coroutine is not None:
                self._handler_coroutine.cancel()
            return
        # aiosmtpd closes an idle session silently; say why first (RFC 5321 4.5.3.2: 421).
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"{replies.timed_out(self.fqdn)}\r\n".encode())  # type: ignore[attr-defined]
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    # --- commands aiosmtpd lacks or that take more than aiosmtpd knows --------------------------

    async def smtp_EHLO(self, hostname: str | None) -> None:
        # Checked before aiosmtpd resets the session: a refused EHLO leaves the state as it was (RFC 5321
        # 4.1.4), transaction and all.
        if hostname and not _valid_domain_text(hostname):
            await self.push(replies.INVALID_DOMAIN)
            return
        await super().smtp_EHLO(hostname)

    async def smtp_HELO(self, hostname: str | None) -> None:
        if hostname and not _valid_domain_text(hostname):
            await self.push(replies.INVALID_DOMAIN)
            return
        await super().smtp_HELO(hostname)

    async def smtp_HELP(self, arg: str | None) -> None:
        """RFC 5321 4.1.1.8: the commands this virtual server offers, or one command's syntax (214)."""
        offered = [command for command in RULES if self._offers(command)]
        if not arg:
            await self.push("214-2.0.0 This server supports the following commands:")
            await self.push(f"214 2.0.0 {' '.join(offered)}")
        elif arg.upper() in offered:
            await self.push(f"214 2.0.0 Syntax: {RULES[arg.upper()].syntax}")
        else:
            await self.push(replies.HELP_TOPIC_UNKNOWN)

    def _offers(self, command: str) -> bool:
        handler = self.event_handler
        assert isinstance(handler, VirtualServerHandler)
        return {
            "BDAT": self.vs.chunking,
            "VRFY": self.vs.vrfy != "disabled",
            "EXPN": self.vs.expn != "disabled",
            "STARTTLS": handler.tls_context is not None,
            "AUTH": handler.authenticate is not None,
        }.get(command, True)

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if self._tls_protocol is not None:
            # RFC 3207 4.2: no TLS inside TLS; the encrypted session goes on.
            await self.push(replies.TLS_ALREADY_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str | None) -> None:
        # SASL mechanism names are case-insensitive in SMTP (RFC 4954 4); aiosmtpd matches them exactly.
        if arg:
            mechanism, space, rest = arg.partition(" ")
            arg = f"{mechanism.upper()}{space}{rest}"
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        limit = self.vs.max_messages_per_connection
        if limit is not None and self.messages >= limit:
            await self.push(replies.TOO_MANY_MESSAGES)
            self.close()
            return
        arg, taken = self._take_parameters(arg, ("RET", "ENVID", "BODY"))
        if not _valid_dsn_parameters(taken):
            await self.push(replies.DSN_PARAMETER_INVALID)
            return
        body = taken.pop("BODY", None)
        binarymime = body is not None and body.upper() == "BINARYMIME" and self.vs.chunking
        if body is not None and not binarymime and arg is not None:
            arg = f"{arg} BODY={body}"  # 7BIT and 8BITMIME are aiosmtpd's to check
        if not self.vs.smtputf8 and arg is not None and "SMTPUTF8" in arg.upper().split(" ")[1:]:
            # An extension the virtual server does not offer is an unknown parameter (RFC 5321 4.1.1.11).
            await self.push(replies.PARAMETER_NOT_RECOGNIZED)
            return
        self.mail_parameters = _MailParameters(taken, binarymime)
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        arg, self.rcpt_dsn = self._take_parameters(arg, ("NOTIFY", "ORCPT"))
        if not _valid_dsn_parameters(self.rcpt_dsn):
            await self.push(replies.DSN_PARAMETER_INVALID)
            return
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str | None) -> None:
        if self.exchange_envelope().binarymime:
            await self.push(replies.BINARYMIME_NEEDS_BDAT)
            return
        self.in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.in_data = False

    async def smtp_BDAT(self, arg: str | None) -> None:
        if not self.vs.chunking:
            # Without CHUNKING the command is unknown; what follows is read as commands, as by a server
            # that never heard of BDAT.
            await self.push(replies.UNRECOGNIZED)
            return
        match = _BDAT_ARGUMENT.fullmatch(arg or "")
        if match is None:
            await self.push(replies.BDAT_SYNTAX)
            return
        size, last = int(match[1]), match[2] is not None
        limit = self.data_size_limit
        if limit and size > limit:
            # Reading (to discard) a chunk larger than any message could be would let one command hold
            # the session for gigabytes; no transaction can succeed, so the session ends here.
            await self.push(replies.CHUNK_TOO_BIG)
            self.close()
            return
        refusal = self.refusal(RULES["BDAT"])
        envelope = self.exchange_envelope()
        received = len(envelope.chunks or b"") + size
        keep = refusal is None and not (limit and received > limit)
        chunk = await self._read_chunk(size, keep)
        if chunk is None:
            return  # the client went away mid-chunk
        if refusal is not None:
            await self.push(refusal)
            return
        if not keep:
            # RFC 3030 3: a failed BDAT ends the transaction; the client must start again with MAIL.
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(replies.TOO_BIG)
            return
        if envelope.chunks is None:
            envelope.chunks = bytearray()
        envelope.chunks += chunk
        if not last:
            await self.push(replies.chunk_received(size))
            return
        envelope.content = envelope.original_content = bytes(envelope.chunks)
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)

    async def _read_chunk(self, size: int, keep: bool) -> bytes | None:
        """Read a BDAT chunk in pieces, keeping it only if asked; None if the connection ended."""
        kept = bytearray()
        remaining = size
        try:
            while remaining:
                piece = await self._reader.readexactly(min(remaining, _CHUNK_PIECE))
                remaining -= len(piece)
                if keep:
                    kept += piece
                self._reset_timeout()  # a long chunk is not an idle session
        except asyncio.IncompleteReadError:
            self.close()
            return None
        return bytes(kept)

    async def smtp_VRFY(self, arg: str | None) -> None:
        handler = self.event_handler
        assert isinstance(handler, VirtualServerHandler)
        disabled = replies.NOT_IMPLEMENTED if self.vs.vrfy == "disabled" else None
        await self._ask_directory(arg, disabled, replies.VRFY_SYNTAX, handler.verify)

    async def smtp_EXPN(self, arg: str | None) -> None:
        handler = self.event_handler
        assert isinstance(handler, VirtualServerHandler)
        disabled = replies.NOT_IMPLEMENTED if self.vs.expn == "disabled" else None
        await self._ask_directory(arg, disabled, replies.EXPN_SYNTAX, handler.expand)

    async def _ask_directory(
        self,
        arg: str | None,
        disabled: str | None,
        syntax: str,
        answer: Callable[[str], Awaitable[list[str]]],
    ) -> None:
        """VRFY and EXPN: refused when turned off, 501 without an argument, else the handler's lines."""
        if disabled is not None or not arg:
            await self.push(disabled or syntax)
            return
        for line in await answer(arg.strip().strip("<>")):
            await self.push(line)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser is the e-mail header parser: it decodes RFC 2047 encoded words
        (`=?utf-8?q?alice?=@contoso.com` becomes alice@contoso.com) and drops comments, so the envelope
        would name a different mailbox than the client wrote. Only a source route (RFC 5321 4.1.1.3:
        accepted, ignored) and quoting may differ; anything else is an invalid address."""
        address, rest = super()._getaddr(arg)
        if not address or address == "<>":
            return address, rest
        written = arg.strip()
        written = written[1 : written.find(">")] if written.startswith("<") else written.split(" ")[0]
        if written.startswith("@") and ":" in written:
            written = written.partition(":")[2]
        if written.replace('"', "") != address.replace('"', ""):
            return None, None
        return address, rest

    def _take_parameters(self, arg: str | None, names: tuple[str, ...]) -> tuple[str | None, dict[str, str]]:
        """Take ESMTP parameters aiosmtpd would refuse (it answers 555 to any it does not know) off a
        MAIL or RCPT argument; xtext-decoded (RFC 3461 4)."""
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


_NOTIFY_EVENTS = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def _valid_dsn_parameters(taken: dict[str, str]) -> bool:
    """RFC 3461 4.1-4.4: NOTIFY is NEVER or a list of SUCCESS/FAILURE/DELAY, RET is FULL or HDRS, ORCPT
    is addr-type;address, ENVID at most 100 characters; decoded values are printable US-ASCII."""
    if not all(value.isascii() and value.isprintable() for value in taken.values()):
        return False
    notify = taken.get("NOTIFY")
    if notify is not None:
        events = notify.upper().split(",")
        if events != ["NEVER"] and not (events and set(events) <= _NOTIFY_EVENTS):
            return False
    if "RET" in taken and taken["RET"].upper() not in ("FULL", "HDRS"):
        return False
    orcpt = taken.get("ORCPT")
    if orcpt is not None and (";" not in orcpt or not orcpt.partition(";")[2]):
        return False
    return len(taken.get("ENVID", "")) <= 100


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
        address_book: AddressBook | None = None,
    ) -> None:
        self.organization = organization
        self.server = server
        self.vs = vs
        self.fqdn = vs.fqdn or server.fqdn
        self.aq = aq
        self.authenticate = authenticate if vs.basic_auth else None
        self.address_book = address_book
        self.sessions: weakref.WeakSet[ExchangeSMTP] = weakref.WeakSet()
        self.tls_context = tls_context if vs.tls else None

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
            _client_ip(session),
            self.vs.max_message_kb * 1024,
            auth=auth_offered,
            starttls=self.tls_context is not None and not encrypted,
            chunking=self.vs.chunking,
            vrfy=self.vs.vrfy != "disabled",
            smtputf8=self.vs.smtputf8,
        )

    async def handle_HELO(
        self, server: ExchangeSMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        return replies.helo(self.fqdn, _client_ip(session))

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
        client = Client(_client_ip(session), bool(session.authenticated))
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
        if not envelope.rcpt_tos:
            return replies.NEED_RCPT
        assert isinstance(envelope, ExchangeEnvelope)
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
            SERVER_NAME=self.fqdn,
            SERVER_VERSION=replies.SERVICE_VERSION,
            VIRTUAL_SERVER=self.vs.name,
            RFC822_MSG_ID=message_id,
            RFC822_MSG_SUBJECT=subject,
            MSG_SIZE_HINT=len(content),
            QUEUE_ID=queue_id,
            ORG_INTERNAL=self.organization.is_own_address(client_ip),
            HOP_COUNT=_hop_count(content),
            MAX_HOP_COUNT=self.vs.max_hop_count,
            EIGHTBIT_MIME_OPTION=any(o.upper() == "BODY=8BITMIME" for o in envelope.mail_options),
            BINARYMIME_OPTION=envelope.binarymime,
            SMTP_UTF8=bool(envelope.smtp_utf8),
        )
        msg.properties.update(
            DSN_RET_VALUE=envelope.dsn_mail.get("RET"), DSN_ENVID_VALUE=envelope.dsn_mail.get("ENVID")
        )
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
        return [f"250 2.1.5 {self.address_book.listing(entry, address)}"]

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
            return [f"250 2.1.5 {self.address_book.listing(entry, address)} has no members"]
        lines = [f"250-2.1.5 {member}" for member in members]
        lines[-1] = "250 " + lines[-1][4:]
        return lines

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
        # Raw UTF-8 in a header (RFC 6532) comes out of the parser as surrogates; show it as text.
        subject = (
            str(headers.get("Subject") or "").encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        )
        queue_id = f"{self.server.name.upper()}{uuid.uuid4().hex[:16].upper()}"
        received = (
            f"Received: from {session.host_name or 'unknown'} ([{_client_ip(session)}]) "
            f"by {self.fqdn} with Microsoft SMTPSVC({replies.SERVICE_VERSION});\r\n"
            f"\t {email.utils.formatdate(time.time())}\r\n"
        ).encode()
        extra = b""
        if not message_id:
            message_id = f"{queue_id}@{self.fqdn}"
            extra = f"Message-ID: <{message_id}>\r\n".encode()
        return received + extra + raw, message_id, subject, queue_id


def _client_ip(session: Session | None) -> str:
    # aiosmtpd types peer loosely; for TCP it is the (host, port) tuple of the client.
    assert session is not None
    peer: tuple[str, int] = session.peer  # type: ignore[assignment]
    return peer[0]


def _valid_domain_text(name: str) -> bool:
    """HELO/EHLO names are ASCII (RFC 5321 4.1.1.1; RFC 6531 keeps EHLO ASCII or A-labels)."""
    return name.isascii() and name.isprintable()


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
