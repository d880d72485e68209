"""The lab's Internet hosts: SMTP sinks that capture what an MTA hands them and misbehave on demand.

Each sink listens on its own loopback address, speaks ordinary ESMTP (SIZE, 8BITMIME, and DSN so that
an MTA relays its DSN parameters rather than dropping them), and records every accepted message with
its envelope and exact bytes, plus a short transcript of every session; given a folder, it also
writes each message and its envelope there (harness/lab/captures.py). Rules from the lab file (or
added at run time) make it reject, stall or hang up at a chosen point of the dialogue, so traces can
exercise an MTA's retry and NDR paths. aiosmtpd does the SMTP; this module decides what to answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import AnyStr

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

from harness.lab.addresses import check_endpoint
from harness.lab.bounded_log import DEFAULT_LIMIT, BoundedLog
from harness.lab.captures import SINKS_FOLDER, Capture, CaptureFolder
from harness.lab.config import Host, SinkRule

__all__ = ["ACTIONS", "COMMANDS", "SINKS_FOLDER", "Capture", "SessionLog", "SinkHost"]

# CONTENT is the message text itself, after the 354 and before the final dot: its only fault is a
# hang-up once the first line has arrived, a connection lost in the middle of the data stream.
COMMANDS = ("CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "CONTENT", "DOT", "QUIT", "RSET")
ACTIONS = ("reply", "disconnect", "delay")

_REPLY = re.compile(r"[2-5][0-9][0-9]( .*)?")
_IDENT = "ESMTP mailflow sink"
# RFC 3461 parameters. aiosmtpd answers 555 to any MAIL/RCPT parameter it does not know.
_DSN_PARAMETERS = frozenset({"NOTIFY", "ORCPT", "RET", "ENVID"})
# The reverse-path or forward-path of a MAIL/RCPT argument, then its parameters.
_PATH = re.compile(r"(<[^>]*>|\S*)(.*)", re.DOTALL)
# RFC 5321 3.1: after refusing the greeting a server waits for QUIT and refuses everything else.
_BAD_SEQUENCE = "503 5.5.1 Bad sequence of commands"
_OK = "250 OK"
# What _outcome() returns once the connection has been dropped: nothing will be sent.
_DROPPED = ""
_STOP_GRACE = 1.0


@dataclass
class SessionLog:
    """One connection to a sink. `transcript` holds (who, line) pairs in order: "C" a command as
    received (a message as "<message of N bytes>"), "S" a reply as sent, "*" something the sink did
    (a rule applied, the connection dropped)."""

    peer: str
    started: float
    transcript: list[tuple[str, str]] = field(default_factory=list)

    @property
    def commands(self) -> list[str]:
        return [line for who, line in self.transcript if who == "C"]

    @property
    def replies(self) -> list[str]:
        return [line for who, line in self.transcript if who == "S"]

    def add(self, who: str, line: str) -> None:
        self.transcript.append((who, line))

    def __str__(self) -> str:
        return "\n".join(f"{who}: {line}" for who, line in self.transcript)


@dataclass
class _ActiveRule:
    rule: SinkRule
    used: int = 0


def _check_rule(rule: SinkRule) -> SinkRule:
    if rule.command.upper() not in COMMANDS:
        raise ValueError(f"sink rule {rule}: command must be one of {', '.join(COMMANDS)}")
    if rule.action not in ACTIONS:
        raise ValueError(f"sink rule {rule}: action must be one of {', '.join(ACTIONS)}")
    if rule.command.upper() == "CONTENT" and (rule.action != "disconnect" or rule.match is not None):
        raise ValueError(
            f"sink rule {rule}: a CONTENT rule can only disconnect, and matches no text (it acts at the 354)"
        )
    if rule.action == "reply" and rule.reply is None:
        raise ValueError(f"sink rule {rule}: a reply rule needs a reply")
    if rule.reply is not None and not _REPLY.fullmatch(rule.reply):
        raise ValueError(f"sink rule {rule}: reply must be a 2xx-5xx code and text on one line")
    if rule.delay < 0:
        raise ValueError(f"sink rule {rule}: delay must not be negative")
    if rule.times is not None and rule.times < 1:
        raise ValueError(f"sink rule {rule}: times must be at least 1")
    return rule


class SinkHost:
    """One Internet host of the lab: an SMTP server at `host.address:port` that captures messages.

    A rule's `match` is looked for (case-insensitively) in: the client's IP address for CONNECT, the
    hostname for EHLO/HELO, the argument as sent for MAIL and RCPT ("TO:<a@b> NOTIFY=NEVER"), the
    message for DOT, and the (normally empty) argument for DATA, CONTENT, RSET and QUIT. A reply starting with
    421 closes the connection after it is sent, as the code says.

    Not thread-safe: call start/stop and the rule methods from the event loop it runs on (reading
    `captures` and `sessions` from another thread is fine).
    """

    def __init__(
        self, host: Host, port: int, *, advertise_dsn: bool = True, log_limit: int = DEFAULT_LIMIT
    ) -> None:
        check_endpoint(host.address, port)
        self.host = host
        self.fqdn = host.fqdn or host.name
        self.advertise_dsn = advertise_dsn
        self._port = port
        self._rules: list[_ActiveRule] = [_ActiveRule(_check_rule(rule)) for rule in host.rules]
        self._captures: BoundedLog[Capture] = BoundedLog(
            log_limit
        )  # every message is also kept on disk (keep_in)
        self._sessions: BoundedLog[SessionLog] = BoundedLog(log_limit)
        self._server: asyncio.Server | None = None
        self._connections: set[_SinkSMTP] = set()
        self._folder: CaptureFolder | None = None

    def keep_in(self, folder: Path) -> None:
        """Also write every accepted message, with its envelope, under `folder` (made at start)."""
        self._folder = CaptureFolder(folder)

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def address(self) -> str:
        return self.host.address

    @property
    def port(self) -> int:
        """The port in use; after start() this is the bound port even if 0 was asked for."""
        return self._port

    @property
    def captures(self) -> list[Capture]:
        return self._captures.entries()

    @property
    def sessions(self) -> list[SessionLog]:
        return self._sessions.entries()

    def clear(self) -> None:
        """Forget captures and sessions (rules and their counters stay)."""
        self._captures.clear()
        self._sessions.clear()

    # --- rules -----------------------------------------------------------------------------------

    @property
    def rules(self) -> list[SinkRule]:
        return [active.rule for active in self._rules]

    def add_rule(self, rule: SinkRule) -> None:
        """Add a rule after the existing ones; the first rule that applies to a command wins."""
        self._rules.append(_ActiveRule(_check_rule(rule)))

    def clear_rules(self) -> None:
        self._rules = []

    def reset_rules(self) -> None:
        """Back to the lab file's rules, with their `times` counters at zero."""
        self._rules = [_ActiveRule(rule) for rule in self.host.rules]

    def _take_rule(self, command: str, argument: str) -> SinkRule | None:
        for active in self._rules:
            rule = active.rule
            if rule.command.upper() != command:
                continue
            if rule.match is not None and rule.match.lower() not in argument.lower():
                continue
            if rule.times is not None and active.used >= rule.times:
                continue
            # Counted per sink, not per session, so "fail once, then accept the retry" works.
            active.used += 1
            return rule
        return None

    async def _outcome(self, protocol: _SinkSMTP, command: str, argument: str) -> str | None:
        """Apply the first rule for `command`: None to answer as usual, else the reply to send
        (`_DROPPED` if the connection was closed instead)."""
        rule = self._take_rule(command, argument)
        if rule is None:
            return None
        protocol.log.add("*", f"rule {rule.command} {rule.action}" + (f" {rule.reply}" if rule.reply else ""))
        if rule.delay > 0:
            await asyncio.sleep(rule.delay)
        if rule.action == "disconnect":
            protocol.drop()
            return _DROPPED
        if rule.action == "delay":
            return None
        return rule.reply

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"sink {self.name} already started")
        if self._folder is not None:
            self._folder.prepare()
        loop = asyncio.get_running_loop()
        handler = _SinkHandler(self)
        self._server = await loop.create_server(
            lambda: _SinkSMTP(self, handler, loop), self.host.address, self._port
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for connection in list(self._connections):
            connection.drop(note="sink stopped")
        await server.wait_closed()
        # Let the sessions' tasks see their connections go, so none is left pending on the loop.
        deadline = time.monotonic() + _STOP_GRACE
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)

    # --- called by the protocol and the handler -------------------------------------------------

    def _opened(self, connection: _SinkSMTP) -> None:
        self._connections.add(connection)
        self._sessions.append(connection.log)

    def _closed(self, connection: _SinkSMTP) -> None:
        self._connections.discard(connection)

    def _capture(self, capture: Capture) -> None:
        self._captures.append(capture)
        if self._folder is not None:
            self._folder.store(capture)


class _SinkSMTP(SMTP):
    """aiosmtpd's SMTP with a transcript, replaceable greeting, hang-ups and DSN parameters."""

    def __init__(self, sink: SinkHost, handler: _SinkHandler, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(
            handler,
            hostname=sink.fqdn,
            ident=_IDENT,
            decode_data=False,
            enable_SMTPUTF8=sink.host.smtputf8,
            loop=loop,
        )
        self.sink = sink
        # aiosmtpd keeps its command size limits in a class-level dict that EHLO raises: one per session.
        self.command_size_limits = collections.defaultdict(lambda: self.command_size_limit)
        self.log = SessionLog(peer="", started=time.time())
        self.greeted = False
        self.refused = False
        self.dropped = False
        self.argument = ""
        self.parameters: tuple[str, ...] = ()
        # aiosmtpd dispatches commands through this table and offers no hook that sees every command;
        # wrapping its entries gives the transcript and the refused-greeting state.
        self._smtp_methods = {
            name: functools.update_wrapper(self._traced(name, method), method)
            for name, method in self._smtp_methods.items()
        }

    def _traced(
        self, command: str, method: Callable[[str | None], Awaitable[None]]
    ) -> Callable[[str | None], Awaitable[None]]:
        async def run(arg: str | None) -> None:
            if self.dropped:
                return  # lines the client had already sent when the sink hung up
            shown = arg.split()[0] + " ..." if command == "AUTH" and arg else arg
            self.log.add("C", f"{command} {shown}" if shown else command)
            self.argument = arg or ""
            if self.refused and command != "QUIT":
                await self.push(_BAD_SEQUENCE)
                return
            await method(arg)

        return run

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # not the second call that aiosmtpd makes after STARTTLS
            peer = transport.get_extra_info("peername")
            self.log.peer = str(peer[0]) if peer else "?"
            self.sink._opened(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.sink._closed(self)
        super().connection_lost(error)

    def drop(self, note: str = "connection closed by the sink") -> None:
        if self.dropped:
            return
        self.dropped = True
        self.log.add("*", note)
        if self.transport is not None:
            self.transport.close()

    async def push(self, status: AnyStr) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        if not self.greeted:
            # aiosmtpd's first push is always the greeting: the one place a CONNECT rule can act.
            self.greeted = True
            outcome = await self.sink._outcome(self, "CONNECT", self.log.peer)
            if outcome is not None:
                text = outcome
                self.refused = not outcome.startswith("2")
        if self.dropped:
            return
        self.log.add("S", text)
        await super().push(text)
        if text.startswith("421"):
            # 421 means the server is closing the channel (RFC 5321 3.8); clients expect the hang-up.
            self.drop()

    def _take_parameters(self, arg: str | None, keyword: str) -> str | None:
        """Record MAIL/RCPT parameters as sent and hide DSN ones from aiosmtpd, which refuses them."""
        self.parameters = ()
        if arg is None or arg[: len(keyword)].upper() != keyword:
            return arg
        match = _PATH.match(arg[len(keyword) :].strip())
        if match is None:
            return arg
        path, tail = match.groups()
        self.parameters = tuple(tail.split())
        assert self.session is not None
        if not (self.session.extended_smtp and self.sink.advertise_dsn):
            return arg  # parameters without EHLO (or DSN) are aiosmtpd's to refuse
        kept = [p for p in self.parameters if p.partition("=")[0].upper() not in _DSN_PARAMETERS]
        return " ".join([keyword + path, *kept])

    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(self._take_parameters(arg, "FROM:"))

    async def smtp_RCPT(self, arg: str | None) -> None:
        await super().smtp_RCPT(self._take_parameters(arg, "TO:"))

    async def smtp_DATA(self, arg: str) -> None:
        # No handler hook runs before the 354, so DATA rules apply here, once aiosmtpd would accept.
        assert self.session is not None and self.envelope is not None
        if self.session.host_name and self.envelope.rcpt_tos and not arg:
            outcome = await self.sink._outcome(self, "DATA", "")
            if outcome is not None:
                await self.push(outcome)
                return
            rule = self.sink._take_rule("CONTENT", "")
            if rule is not None:
                await self._drop_in_content(rule)
                return
        await super().smtp_DATA(arg)

    async def _drop_in_content(self, rule: SinkRule) -> None:
        """A CONTENT rule: the 354, the message's first line, then the hang-up, with no reply."""
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            first = await self._reader.readuntil(b"\r\n")
            self.log.add("C", f"<first line of the message, {len(first)} bytes>")
        self.log.add("*", f"rule {rule.command} {rule.action}")
        if rule.delay > 0:
            await asyncio.sleep(rule.delay)
        self.drop()


class _SinkHandler:
    """aiosmtpd handler hooks: apply the sink's rules, build the envelope, capture messages."""

    def __init__(self, sink: SinkHost) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: _SinkSMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        outcome = await self.sink._outcome(server, "EHLO", hostname)
        if outcome is not None and not outcome.startswith("2"):
            session.extended_smtp = False
            return [outcome]
        session.host_name = hostname
        if outcome is not None:
            return [outcome]
        if self.sink.advertise_dsn:
            responses.insert(len(responses) - 1, "250-DSN")
        return responses

    async def handle_HELO(
        self, server: _SinkSMTP, session: Session, envelope: Envelope, hostname: str
    ) -> object:
        outcome = await self.sink._outcome(server, "HELO", hostname)
        if outcome is None:
            return MISSING
        if outcome.startswith("2"):
            session.host_name = hostname
        return outcome

    async def handle_MAIL(
        self, server: _SinkSMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        outcome = await self.sink._outcome(server, "MAIL", server.argument)
        if outcome is None or outcome.startswith("2"):
            envelope.mail_from = address
            envelope.mail_options.extend(server.parameters)
        return _OK if outcome is None else outcome

    async def handle_RCPT(
        self, server: _SinkSMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        outcome = await self.sink._outcome(server, "RCPT", server.argument)
        if outcome is None or outcome.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(server.parameters)
        return _OK if outcome is None else outcome

    async def handle_DATA(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        server.log.add("C", f"<message of {len(data)} bytes>")
        # DOT rules match against the message itself, e.g. a header that should be refused.
        outcome = await self.sink._outcome(server, "DOT", data.decode("latin-1"))
        if outcome is None or outcome.startswith("2"):
            self.sink._capture(
                Capture(
                    time=time.time(),
                    host=self.sink.name,
                    peer=server.log.peer,
                    helo=session.host_name or "",
                    greeting="EHLO" if session.extended_smtp else "HELO",
                    mail_from=_reverse_path(envelope.mail_from),
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    data=data,
                    mail_options=tuple(envelope.mail_options),
                    rcpt_options=tuple(envelope.rcpt_options),
                )
            )
        return _OK if outcome is None else outcome

    async def handle_RSET(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> object:
        outcome = await self.sink._outcome(server, "RSET", server.argument)
        return MISSING if outcome is None else outcome

    async def handle_QUIT(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> object:
        outcome = await self.sink._outcome(server, "QUIT", server.argument)
        return MISSING if outcome is None else outcome


def _reverse_path(mail_from: str | None) -> str:
    # aiosmtpd keeps the null reverse-path as "<>" (its envelope needs a true value there).
    return "" if mail_from in (None, "<>") else mail_from
