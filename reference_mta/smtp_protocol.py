"""The SMTP protocol engine of a virtual server: aiosmtpd's, with the session rules in front of every
command and the parts of the protocol aiosmtpd lacks.

- Every command passes the session rules (`session_rules.judge`) before aiosmtpd sees it: the state
  table, the pipelining sync-point check, the anonymous-access check and the rules that look at the
  session (a refused session, TLS inside TLS, messages per connection, BINARYMIME); the engine gathers
  the facts and answers the verdict. Once a reply has closed the session, nothing the client had
  already sent runs.
- Connection control answers the greeting (`access_policy`).
- CHUNKING and BINARYMIME (BDAT, RFC 3030), the DSN parameters (RFC 3461), HELP from the session rules,
  VRFY and EXPN (answered by the policy), SMTPUTF8 as configured.
- Bounds per session: command and text line lengths, error replies, idle time.
What the virtual server decides about a sender, a recipient or a message is the policy's
(`smtp_server.VirtualServerHandler`, through aiosmtpd's handler hooks). Reply texts come from `replies`.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from reference_mta import replies
from reference_mta.access_policy import may_connect
from reference_mta.mailmsg import EXCH50_MAX_BYTES, Exch50, UnreadableBlob, read_exch50_blob
from reference_mta.protocol_log import ProtocolLog, SessionLog
from reference_mta.session_rules import (
    RULES,
    Facts,
    State,
    Verdict,
    counts_as_error,
    judge,
    over_error_budget,
    state_of,
)
from reference_mta.topology import VirtualServer

_BDAT_ARGUMENT = re.compile(r"(\d+)(?: +(LAST))?", re.IGNORECASE)
_CHUNK_PIECE = 64 * 1024
_READER_LIMIT = 2048


class SessionPolicy(Protocol):
    """What the protocol engine asks of the virtual server's policy (besides aiosmtpd's hooks)."""

    vs: VirtualServer
    fqdn: str
    tls_context: ssl.SSLContext | None
    authenticate: Callable[[str, str], str | None] | None
    protocol_log: ProtocolLog | None
    # Releases a remote-triggered link queue (ETRN); the number of messages, or None: no such queue.
    etrn: Callable[[str], int | None] | None

    async def verify(self, address: str) -> list[str]: ...

    async def expand(self, address: str) -> list[str]: ...

    def is_organization_server(self, address: str) -> bool: ...


class ExchangeEnvelope(Envelope):
    """aiosmtpd's envelope plus this transaction's BDAT chunks, BODY=BINARYMIME and DSN arguments; it is
    made afresh at RSET, HELO/EHLO and after each message, so none of these outlive their transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: bytearray | None = None  # not None once a BDAT transfer has begun
        self.binarymime = False
        self.dsn_mail: dict[str, str] = {}
        self.dsn_rcpt: dict[str, dict[str, str]] = {}
        self.exch50: Exch50 | None = None  # what XEXCH50 carried


@dataclass
class _MailParameters:
    """What smtp_MAIL took off the MAIL command before aiosmtpd parses it; handle_MAIL keeps it."""

    dsn: dict[str, str] = field(default_factory=dict)
    binarymime: bool = False


class ExchangeSMTP(SMTP):
    """aiosmtpd's protocol engine with the virtual server's rules in front of every command."""

    def __init__(self, handler: SessionPolicy, **kwargs: Any) -> None:
        self.policy = handler
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
        self.session_log: SessionLog | None = None  # the protocol log's lines for this session
        self._reply = bytearray()  # the lines of a multi-line reply until its last line (see push)
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

    def facts(self) -> Facts:
        """What the session rules judge a command by."""
        session = self.session
        return Facts(
            state=self.state(),
            fqdn=self.fqdn,
            extended=session is not None and bool(session.extended_smtp),
            authenticated=session is not None and bool(session.authenticated),
            anonymous_allowed=self.vs.anonymous,
            refused=self.refused,
            enforce_sync=self.vs.pipelining_sync == "enforce" and session is not None,
            # Input beyond the current line waits in the StreamReader's buffer; asyncio offers no public
            # way to ask whether any is there.
            input_waiting=bool(self._reader._buffer),  # type: ignore[attr-defined]
            encrypted=self._tls_protocol is not None,
            messages=self.messages,
            message_limit=self.vs.max_messages_per_connection,
            binarymime=self.exchange_envelope().binarymime,
            organization_server=session is not None
            and self.policy.is_organization_server(client_ip(session)),
        )

    async def answer(self, verdict: Verdict) -> None:
        await self.push(verdict.reply)
        if verdict.closes:
            self.close()

    def _ruled(self, command: str, method: Callable[[str | None], Awaitable[None]]) -> Callable[..., Any]:
        async def ruled(arg: str | None) -> None:
            if self.transport is None or self.transport.is_closing():
                return  # lines the client had sent before the session was closed on it
            if self.session_log is not None:
                self.session_log.command(command, arg, len(command) + len(arg or "") + 3)
            # BDAT reads its chunk before its own rule may refuse it: the chunk's bytes must not be taken
            # for commands (judge leaves that rule to smtp_BDAT).
            verdict = judge(command, arg, self.facts())
            if verdict is not None:
                await self.answer(verdict)
                return
            await method(arg)

        return ruled

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def push(self, status: str | bytes) -> None:
        """Every reply goes out in one write, a multi-line one too: aiosmtpd writes (and drains) each
        line on its own, so each line of an EHLO or HELP reply became its own TCP segment, and a client
        that reads one segment per command (relay scanners do) fell a reply behind. A continuation line
        ("250-...") waits here for the reply's last line; the 421 that ends a session over its error
        budget goes out with the reply that spent it."""
        text = replies.translate(status) if isinstance(status, str) else status.decode("utf-8", "replace")
        if not self.greeted_client:
            self.greeted_client = True
            if not may_connect(self.vs, client_ip(self.session)):
                # Connection control: 554 instead of the greeting; RFC 5321 3.1 then wants the server to
                # wait for QUIT, answering 503 to anything else.
                self.refused = True
                text = replies.CONNECTION_REFUSED
            if self.policy.protocol_log is not None:
                self.session_log = SessionLog(self.policy.protocol_log, client_ip(self.session))
        if self.session_log is not None:
            self.session_log.reply(text, self.session.host_name if self.session is not None else None)
        self._reply += text.encode("utf-8") + b"\r\n"
        if replies.continues(text):
            return
        closes = False
        if counts_as_error(text):
            self.errors += 1
            verdict = over_error_budget(self.errors, self.vs.max_errors)
            if verdict is not None:
                self._reply += verdict.reply.encode("utf-8") + b"\r\n"
                closes = verdict.closes
        reply, self._reply = bytes(self._reply), bytearray()
        self._writer.write(reply)
        await self._writer.drain()
        if closes:
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
        if hostname and not valid_domain_text(hostname):
            await self.push(replies.INVALID_DOMAIN)
            return
        await super().smtp_EHLO(hostname)

    async def smtp_HELO(self, hostname: str | None) -> None:
        if hostname and not valid_domain_text(hostname):
            await self.push(replies.INVALID_DOMAIN)
            return
        await super().smtp_HELO(hostname)

    async def smtp_HELP(self, arg: str | None) -> None:
        """RFC 5321 4.1.1.8: the commands this virtual server offers, or one command's syntax (214)."""
        offered = [command for command in RULES if self._offers(command)]
        if not arg:
            for line in replies.help_commands(offered):
                await self.push(line)
        elif arg.upper() in offered:
            await self.push(replies.help_syntax(RULES[arg.upper()].syntax))
        else:
            await self.push(replies.HELP_TOPIC_UNKNOWN)

    def _offers(self, command: str) -> bool:
        handler = self.policy
        return {
            "BDAT": self.vs.chunking,
            "VRFY": self.vs.vrfy != "disabled",
            "EXPN": self.vs.expn != "disabled",
            "STARTTLS": handler.tls_context is not None,
            "AUTH": handler.authenticate is not None,
            "XEXCH50": False,  # between Exchange servers, never listed (as Exchange's HELP does not)
            "ETRN": handler.etrn is not None,
        }.get(command, True)

    async def smtp_AUTH(self, arg: str | None) -> None:
        # SASL mechanism names are case-insensitive in SMTP (RFC 4954 4); aiosmtpd matches them exactly.
        if arg:
            mechanism, space, rest = arg.partition(" ")
            arg = f"{mechanism.upper()}{space}{rest}"
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if has_control_character(arg):
            await self.push(replies.SENDER_SYNTAX)
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
        if has_control_character(arg):
            await self.push(replies.RECIPIENT_SYNTAX)
            return
        arg, self.rcpt_dsn = self._take_parameters(arg, ("NOTIFY", "ORCPT"))
        if not _valid_dsn_parameters(self.rcpt_dsn):
            await self.push(replies.DSN_PARAMETER_INVALID)
            return
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str | None) -> None:
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
        verdict = RULES["BDAT"].judge("BDAT", arg, self.facts())
        envelope = self.exchange_envelope()
        received = len(envelope.chunks or b"") + size
        keep = verdict is None and not (limit and received > limit)
        chunk = await self._read_chunk(size, keep)
        if chunk is None:
            return  # the client went away mid-chunk
        if verdict is not None:
            await self.answer(verdict)
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

    async def smtp_XEXCH50(self, arg: str | None) -> None:
        """The categorizer's state from another server of the organization (the session rules let only
        such a server this far): `XEXCH50 <size> <version>`, 354, then exactly <size> octets."""
        words = (arg or "").split()
        if len(words) != 2 or not all(word.isascii() and word.isdigit() for word in words):
            await self.push(replies.XEXCH50_SYNTAX)
            return
        size = int(words[0])
        if size > EXCH50_MAX_BYTES:
            await self.push(replies.XEXCH50_TOO_BIG)
            self.close()
            return
        await self.push(replies.XEXCH50_SEND_DATA)
        blob = await self._read_chunk(size, keep=True)
        if blob is None:
            return  # the client went away mid-blob
        try:
            self.exchange_envelope().exch50 = read_exch50_blob(blob)
        except UnreadableBlob as exc:
            # The message is then categorized in full, and its sender is not vouched for: a blob that
            # cannot be read cannot say that the message's origin vouched for it.
            self.exchange_envelope().exch50 = Exch50({}, anonymous_origin=True)
            await self.push(replies.xexch50_unreadable(str(exc)))
            return
        await self.push(replies.XEXCH50_OK)

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

    async def smtp_ETRN(self, arg: str | None) -> None:
        """RFC 1985: the remote host asks for the mail queued for its domain. The queue is started and
        the reply given at once; delivery is a new session from this server to the domain's next hop."""
        etrn = self.policy.etrn
        if etrn is None:
            await self.push(replies.UNRECOGNIZED)  # not offered: unknown, as before ETRN existed
            return
        node = (arg or "").strip()
        if not node or " " in node or not valid_domain_text(node):
            await self.push(replies.ETRN_SYNTAX)
            return
        if node.startswith("#"):
            await self.push(replies.etrn_not_a_queue(node))
            return
        released = etrn(node)
        if released is None:
            await self.push(replies.etrn_not_allowed(node))
        elif released:
            await self.push(replies.etrn_started(node))
        else:
            await self.push(replies.etrn_nothing_waiting(node))

    async def smtp_VRFY(self, arg: str | None) -> None:
        handler = self.policy
        disabled = replies.NOT_IMPLEMENTED if self.vs.vrfy == "disabled" else None
        await self._ask_directory(arg, disabled, replies.VRFY_SYNTAX, handler.verify)

    async def smtp_EXPN(self, arg: str | None) -> None:
        handler = self.policy
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


def client_ip(session: Session | None) -> str:
    # aiosmtpd types peer loosely; for TCP it is the (host, port) tuple of the client.
    assert session is not None
    peer: tuple[str, int] = session.peer  # type: ignore[assignment]
    return peer[0]


def has_control_character(arg: str | None) -> bool:
    """RFC 5321 4.1.2 allows no control character (NUL to US, DEL) anywhere in a MAIL or RCPT argument,
    not even quoted (qtextSMTP and quoted-pairSMTP are %d32-126): the command is a syntax error. It is
    ASCII, so it never reaches the SMTPUTF8 check, which would answer 553 5.6.7."""
    return arg is not None and any(ord(c) < 32 or ord(c) == 127 for c in arg)


def valid_domain_text(name: str) -> bool:
    """HELO/EHLO names are ASCII (RFC 5321 4.1.1.1; RFC 6531 keeps EHLO ASCII or A-labels)."""
    return name.isascii() and name.isprintable()
