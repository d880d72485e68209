"""The byte-exact replay client: runs one client session's script against a server over a real socket.

SMTP-level outcomes (wrong codes, timeouts, an unexpected close) are results, never exceptions: the
caller gets a SessionResult saying what passed, what failed and exactly which bytes went each way.
Only problems outside the conversation raise: the connection cannot be made (ConnectError) or a
message file named by the script does not exist (ScriptError, raised before connecting).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.corpus.messages import Message, load_message
from harness.corpus.script import (
    Auth,
    Bdat,
    Close,
    Data,
    Expect,
    ExpectClose,
    Pipeline,
    ScriptError,
    Send,
    SendRaw,
    StartTls,
    Step,
    TlsHandshake,
    Wait,
)
from harness.judge.deviations import Tolerate
from harness.judge.records import Failure, Kind, Waived, sentence
from harness.judge.replies import reply_failures
from harness.smtp import syntax
from harness.smtp.masking import Normalizer
from harness.smtp.reply import (
    ConnectionClosed,
    MalformedReply,
    Reply,
    ReplyError,
    ReplyMatcher,
    ReplyTimeout,
    quote_bytes,
    read_reply,
    show_bytes,
)

CRLF = b"\r\n"
# What a reply answers when it answers no command line (harness/judge/records.py: Failure.verb).
GREETING = "(greeting)"
END_OF_DATA = "(end of data)"
# The commands whose replies a failure record names (RFC 5321 and its extensions).
_VERBS = frozenset(
    {"HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "VRFY", "EXPN", "HELP", "NOOP", "QUIT", "AUTH",
     "STARTTLS", "ETRN", "TURN", "ATRN", "XEXCH50"}
)  # fmt: skip
_EXPECT_354 = ReplyMatcher(code=354)
_EXPECT_334 = ReplyMatcher(code=334)
_EXPECT_220 = ReplyMatcher(code=220)


class ConnectError(Exception):
    """The TCP connection to the server under test could not be made."""

    def __init__(self, host: str, port: int, source_address: str | None, reason: str) -> None:
        source = source_address or "any local address"
        super().__init__(f"cannot connect to {host}:{port} from {source}: {reason}")
        self.host = host
        self.port = port
        self.source_address = source_address
        self.reason = reason


@dataclass
class Exchange:
    """One step's outcome, for the report (each becomes an Allure step)."""

    index: int
    title: str
    sent: bytes
    reply: Reply | None
    records: list[Failure]
    """Empty when the step passed; a transport error is repeated here so that this alone decides."""
    error: str | None
    """Transport problem (timeout, connection closed, malformed reply), if that is why the step failed."""
    deviations: list[Waived] = field(default_factory=list)
    """Mismatches the target is known to have, with their reasons: not failures, the session goes on."""
    masked: str | None = None
    """For an expect step, the reply as the trace's normalizer masks it (what `--update` writes)."""

    @property
    def passed(self) -> bool:
        return not self.records and self.error is None

    @property
    def failures(self) -> list[str]:
        """The step's failures as sentences (harness/judge/records.py renders them)."""
        return [sentence(r) for r in self.records]

    def fail(self, kind: Kind, detail: str, expected: str = "", field_name: str = "") -> None:
        """A failure of this step that is no reply check: told in `detail`."""
        self.records.append(
            Failure(
                kind,
                expected=expected,
                field=field_name,
                detail=detail,
                step=self.index + 1,
                title=self.title,
            )
        )


@dataclass
class SessionResult:
    exchanges: list[Exchange]
    transcript: str
    passed: bool
    closed_by: str
    """``"client"`` (a close step), ``"server"`` (EOF seen) or ``"none"`` (open when the script ended)."""
    local_address: tuple[str, int]


def step_title(step: Step, message: Message | None = None) -> str:
    """The one-line title of a step as it appears in reports."""
    if isinstance(step, Data | Bdat):
        return _message_title(step, message)
    if isinstance(step, Send | SendRaw | Pipeline | Auth):
        return _command_title(step)
    if isinstance(step, Expect):
        return f"S: expect {step.matcher.describe()}"
    if isinstance(step, Wait):
        return f"wait {step.seconds:g} s"
    return _FIXED_TITLES[type(step)]


_FIXED_TITLES: dict[type[Step], str] = {
    StartTls: "C: STARTTLS",
    TlsHandshake: "C: TLS handshake (no STARTTLS sent)",
    ExpectClose: "S: expect close",
    Close: "C: close",
}


def _command_title(step: Send | SendRaw | Pipeline | Auth) -> str:
    if isinstance(step, Send):
        return f"C: {step.line}"
    if isinstance(step, SendRaw):
        return f"C: [raw] {show_bytes(step.data)}"
    if isinstance(step, Pipeline):
        return f"C: [pipeline] {' | '.join(step.lines)}"
    return f"C: AUTH {step.mechanism} as {step.user}"


def _message_title(step: Data | Bdat, message: Message | None) -> str:
    raw = ", raw" if step.raw else ""
    if isinstance(step, Data):
        if message is None:
            label = step.source if step.source is not None else "inline"
            return f"C: DATA ({label}{raw})"
        return f"C: DATA ({message.label}{raw}, {message.size} bytes)"
    label = (step.source if step.source is not None else "inline") + raw
    if message is None:
        size = "" if step.size is None else f" {step.size}"
        return f"C: BDAT{size}{' LAST' if step.last else ''} ({label})"
    return f"C: {bdat_command(step, message.payload)} ({label}, {message.size} bytes)"


async def unread(reader: asyncio.StreamReader) -> bytes:
    """Bytes already received that nobody has read, without waiting for more."""
    try:
        # A read returns at once when the reader holds bytes (or has seen EOF); a zero timeout
        # cancels it only if it would have to wait for the network.
        async with asyncio.timeout(0):
            return await reader.read(65536)
    except TimeoutError:
        return b""


_ENVIRONMENT_REFERENCE = re.compile(r"^\$\{([A-Z][A-Z0-9_]*)\}$")


def from_environment(value: str) -> str:
    """`${NAME}` is the environment variable NAME (a recorded trace's AUTH credentials, which are never
    written to it); anything else is itself."""
    match = _ENVIRONMENT_REFERENCE.match(value)
    if match is None:
        return value
    if match[1] not in os.environ:
        raise ScriptError(0, f"{value} is not set: export {match[1]} to replay this trace's AUTH", "auth")
    return os.environ[match[1]]


def bdat_command(step: Bdat, chunk: bytes) -> str:
    """The BDAT command line, without CRLF: the chunk's real size unless the step announces another."""
    size = len(chunk) if step.size is None else step.size
    return f"BDAT {size}{' LAST' if step.last else ''}"


@dataclass
class _Transcript:
    start: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)

    def _stamp(self) -> str:
        return f"+{time.monotonic() - self.start:.3f}"

    def wire(self, who: str, data: bytes) -> None:
        """One transcript line per wire line; CRLF is implied, any other ending is shown."""
        stamp = self._stamp()
        for piece in data.splitlines(keepends=True):
            # splitlines also splits on bare CR (and, for bytes, nothing else); keep those visible.
            if piece.endswith(CRLF):
                self.lines.append(f"{stamp} {who}: {show_bytes(piece[:-2])}")
            elif piece.endswith((b"\n", b"\r")):
                self.lines.append(f"{stamp} {who}: {show_bytes(piece)}")
            else:
                self.lines.append(f"{stamp} {who}: {show_bytes(piece)} [no line end]")

    def note(self, text: str) -> None:
        self.lines.append(f"{self._stamp()} -- {text}")

    def failure(self, index: int, problem: str) -> None:
        self.lines.append(f"{self._stamp()} !! step {index + 1} failed: {problem}")

    def not_run(self, index: int, title: str) -> None:
        self.lines.append(f"{'-':>6} not run: step {index + 1}: {title}")

    def render(self) -> str:
        return "\n".join(self.lines) + "\n"


class _Session:
    """State of one replay: the streams, the transcript and who closed the connection."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        transcript: _Transcript,
        timeout: float,
        tls_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        tolerate: Tolerate | None = None,
        normalizer: Normalizer | None = None,
        wording: bool = True,
    ) -> None:
        self.tolerate = tolerate
        self.normalizer = normalizer
        # Whether the replies' wording is judged, or their behaviour only (harness/judge/replies.py).
        self.wording = wording
        # Whether the server's last EHLO reply offered ENHANCEDSTATUSCODES: before EHLO, and after
        # STARTTLS until the next one (RFC 3207 4.2), nothing is offered.
        self.enhanced_offered = False
        self.sent_anything = False  # until then, a reply is the greeting
        self.reader = reader
        self.writer = writer
        self.transcript = transcript
        self.timeout = timeout
        self.closed_by = "none"
        self.tls_context = tls_context
        self.server_hostname = server_hostname
        # A reply an AUTH step read but that ends the exchange early (a refusal instead of a 334
        # challenge): the next expect checks it.
        self.pending: Reply | None = None
        # The commands sent whose replies are still to come, oldest first, and the one the reply last
        # read answers: a failure record names it.
        self.commands: list[str] = []
        # Whether the lines sent now are a message's text (after DATA, up to the lone dot): they get no
        # reply, whatever they look like (a smuggled "MAIL FROM:" inside the text is text).
        self.in_data = False
        self.last_command = ""
        self.answering = GREETING
        self.replies_read = 0

    async def send(self, data: bytes, shown: bytes | None = None) -> None:
        self.sent_anything = True
        self.transcript.wire("C", data if shown is None else shown)
        self.writer.write(data)
        # A server that stops reading would otherwise block us forever on a large message.
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()

    async def read(self) -> Reply:
        """Read one reply, putting every received byte in the transcript, including partial ones."""
        if self.pending is not None:
            reply, self.pending = self.pending, None
            return reply
        # The first reply of a session is the greeting, even to a client that talked first.
        self.answering = self._answered() if self.replies_read else GREETING
        self.replies_read += 1
        recorded = 0

        def on_line(line: bytes) -> None:
            nonlocal recorded
            recorded += len(line)
            self.transcript.wire("S", line)

        try:
            reply = await read_reply(self.reader, self.timeout, on_line=on_line)
        except ReplyError as exc:
            if len(exc.received) > recorded:
                self.transcript.wire("S", exc.received[recorded:])
            if isinstance(exc, ConnectionClosed):
                self.closed_by = "server"
            raise
        answered = syntax.verb(self.answering)
        if answered == "EHLO":
            self.enhanced_offered = reply.code == 250 and "ENHANCEDSTATUSCODES" in reply.keywords
        elif answered == "DATA" and reply.code != 354:
            self.in_data = False  # refused: what the client sends next is read as commands
        return reply

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.wait_closed()
        except TimeoutError:
            # Unsent data to a peer that does not read: give up on a graceful close.
            self.writer.transport.abort()
        except OSError:
            pass

    async def run_step(self, index: int, step: Step, message: Message | None) -> Exchange:
        exchange = Exchange(index, step_title(step, message), b"", None, [], None)
        try:
            await self._run(step, message, exchange)
        except ReplyTimeout as exc:
            arrived = f"received {quote_bytes(exc.received)}" if exc.received else "nothing arrived"
            waiting = self._waiting_for(step)
            self._fail(
                exchange,
                f"timed out after {self.timeout:g} s waiting for {waiting}; {arrived}",
                "timeout",
                step,
            )
        except ConnectionClosed as exc:
            got = f"; received {quote_bytes(exc.received)}" if exc.received else ""
            self._fail(exchange, f"{exc} (waiting for {self._waiting_for(step)}){got}", "closed", step)
        except MalformedReply as exc:
            self._fail(exchange, str(exc), "malformed", step)
        except TimeoutError:
            self._fail(
                exchange, f"timed out after {self.timeout:g} s sending (the server is not reading)", "send"
            )
        except OSError as exc:
            self.closed_by = "server"
            self._fail(exchange, f"connection lost: {exc}", "lost")
        return exchange

    @staticmethod
    def _waiting_for(step: Step) -> str:
        if isinstance(step, Expect):
            return f"a reply ({step.matcher.describe()})"
        if isinstance(step, Data):
            return "the 354 reply to DATA"
        return "a reply"

    def _fail(self, exchange: Exchange, message: str, what: str, step: Step | None = None) -> None:
        """A transport failure: `what` went wrong (timeout, closed, malformed, send, lost) while waiting
        for what the step expects, in reply to the command the session last read a reply for."""
        exchange.error = message
        expected = step.matcher.describe() if isinstance(step, Expect) else ""
        exchange.fail(Kind.TRANSPORT, message, expected, what)
        if step is not None:
            exchange.records[-1] = dataclasses.replace(exchange.records[-1], command=self.answering)

    def _command(self, line: str) -> None:
        """A line sent: a command whose reply is still to be read (several when pipelined), or the end
        of a message; the message's own lines get no reply."""
        verb = syntax.verb(line)
        if self.in_data:
            if line == ".":
                self.commands.append(END_OF_DATA)
                self.in_data = False
        elif verb in _VERBS:
            self.commands.append(line)
            self.in_data = verb == "DATA"

    def _answered(self) -> str:
        """The command the reply just read answers: the oldest one unanswered, else the last one."""
        if self.commands:
            self.last_command = self.commands.pop(0)
        return self.last_command

    def _check(
        self,
        exchange: Exchange,
        matcher: ReplyMatcher,
        reply: Reply,
        masked: str | None = None,
        *,
        waive: bool = True,
    ) -> None:
        """The reply against what the step expects: each difference a record, waived when the target is
        known to differ so (the session goes on), else a failure. The replies a step reads itself (354
        to DATA, 220 to STARTTLS) are never waived: the step cannot go on without them."""
        judging = {"wording": self.wording, "enhanced_offered": self.enhanced_offered}
        for found in reply_failures(matcher, reply, masked, **judging):
            failure = dataclasses.replace(
                found,
                step=exchange.index + 1,
                title=exchange.title,
                command=self.answering,
                reply=tuple(reply.lines),
            )
            entry = self.tolerate(failure) if self.tolerate and waive else None
            if entry is None:
                exchange.records.append(failure)
            else:
                exchange.deviations.append(Waived(failure, entry.reason, entry.entry))
                self.transcript.note(f"known deviation: {entry.reason}")

    async def _read_checked(self, exchange: Exchange, matcher: ReplyMatcher) -> None:
        exchange.reply = await self.read()
        self._check(exchange, matcher, exchange.reply, waive=False)

    async def _run(self, step: Step, message: Message | None, exchange: Exchange) -> None:
        if self.closed_by != "none":
            exchange.fail(
                Kind.STEP, f"the connection was already closed by the {self.closed_by}", field_name="closed"
            )
        elif isinstance(step, Send | SendRaw | Pipeline):
            await self._send_step(step, exchange)
        elif isinstance(step, Data | Bdat):
            assert message is not None
            await self._message_step(step, message, exchange)
        elif isinstance(step, Expect):
            await self._expect(step, exchange)
        else:
            await self._other_step(step, exchange)

    async def _other_step(self, step: Step, exchange: Exchange) -> None:
        if isinstance(step, Auth):
            await self._auth(step, exchange)
        elif isinstance(step, StartTls):
            await self._starttls(exchange)
        elif isinstance(step, TlsHandshake):
            await self._tls_handshake(exchange)
        elif isinstance(step, Wait):
            self.transcript.note(f"wait {step.seconds:g} s")
            await asyncio.sleep(step.seconds)
        elif isinstance(step, ExpectClose):
            await self._expect_close(exchange)
        elif isinstance(step, Close):
            self.transcript.note("client closes the connection")
            await self.close()
            self.closed_by = "client"

    async def _send_step(self, step: Send | SendRaw | Pipeline, exchange: Exchange) -> None:
        if isinstance(step, Send):
            exchange.sent = step.line.encode("utf-8") + CRLF
            self._command(step.line)
        elif isinstance(step, SendRaw):
            exchange.sent = step.data
            for line in step.data.decode("utf-8", "replace").splitlines():
                self._command(line)
        else:
            exchange.sent = b"".join(line.encode("utf-8") + CRLF for line in step.lines)
            for line in step.lines:
                self._command(line)
        await self.send(exchange.sent)

    async def _message_step(self, step: Data | Bdat, message: Message, exchange: Exchange) -> None:
        if isinstance(step, Bdat):
            # Command and chunk in one write, as a client that pipelines BDAT sends them; the reply is
            # left to the next expect so that several chunks can go out before any reply is read.
            command = bdat_command(step, message.payload)
            exchange.sent = command.encode("ascii") + CRLF + message.payload
            self._command(command)
            await self.send(exchange.sent)
            return
        exchange.sent = b"DATA" + CRLF
        self._command("DATA")
        await self.send(exchange.sent)
        await self._read_checked(exchange, _EXPECT_354)
        if exchange.passed:
            exchange.sent += message.payload
            self.commands.append(END_OF_DATA)
            self.in_data = False
            await self.send(message.payload)

    async def _expect(self, step: Expect, exchange: Exchange) -> None:
        exchange.reply = await self.read()
        if self.normalizer is not None:
            greeting = not self.sent_anything
            exchange.masked = self.normalizer.reply(exchange.reply.lines, greeting)
        self._check(exchange, step.matcher, exchange.reply, exchange.masked)

    async def _starttls(self, exchange: Exchange) -> None:
        exchange.sent = b"STARTTLS" + CRLF
        self._command("STARTTLS")
        await self.send(exchange.sent)
        await self._read_checked(exchange, _EXPECT_220)
        if not exchange.passed:
            return
        self.enhanced_offered = False
        await self._tls_handshake(exchange)

    async def _tls_handshake(self, exchange: Exchange) -> None:
        """The client side of the TLS handshake, on the open connection: after starttls's 220, or at a
        tls_handshake step."""
        unread = await self._unread()
        if unread:
            # The reader would hand these plaintext bytes out after the handshake as if they had come
            # over TLS: a reply injected before the handshake would pass for the server's answer.
            self.transcript.wire("S", unread)
            exchange.fail(
                Kind.STEP,
                f"the server sent {quote_bytes(unread)} in plaintext that no step has read, "
                "before the TLS handshake",
                field_name="plaintext",
            )
            return
        context = self.tls_context or ssl.create_default_context()
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.start_tls(context, server_hostname=self.server_hostname)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            exchange.fail(Kind.STEP, f"TLS handshake failed: {exc}", field_name="tls")
            return
        tls = self.writer.get_extra_info("ssl_object")
        version = tls.version() if tls is not None else "?"
        self.transcript.note(
            f"TLS established ({version}, server {self.server_hostname or 'unverified name'})"
        )

    async def _unread(self) -> bytes:
        return await unread(self.reader)

    async def _auth(self, step: Auth, exchange: Exchange) -> None:
        def b64(text: str) -> bytes:
            return base64.b64encode(text.encode("utf-8"))

        user, password = from_environment(step.user), from_environment(step.password)
        # Credentials a recorded trace takes from the environment stay out of transcripts and reports.
        secret = (user, password) != (step.user, step.password)
        hidden = b"<credentials from the environment>"
        if step.mechanism == "PLAIN":
            line = b"AUTH PLAIN " + b64(f"\0{user}\0{password}") + CRLF
            exchange.sent = b"AUTH PLAIN " + hidden + CRLF if secret else line
            self._command("AUTH PLAIN")
            await self.send(line, shown=exchange.sent)
            return
        exchange.sent = b"AUTH LOGIN" + CRLF
        self._command("AUTH LOGIN")
        await self.send(exchange.sent)
        for answer in (b64(user), b64(password)):
            exchange.reply = await self.read()
            if _EXPECT_334.check(exchange.reply):
                self.pending = exchange.reply
                return
            shown = hidden + CRLF if secret else answer + CRLF
            exchange.sent += shown
            self._command("AUTH LOGIN")
            await self.send(answer + CRLF, shown=shown)

    async def _expect_close(self, exchange: Exchange) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                data = await self.reader.read(4096)
        except TimeoutError:
            exchange.fail(
                Kind.STEP,
                f"expected the server to close the connection within {self.timeout:g} s, but it stayed open",
                field_name="close",
            )
            return
        except ConnectionResetError:
            # A reset after the server's close is still the server ending the session.
            data = b""
        if data:
            self.transcript.wire("S", data)
            exchange.fail(
                Kind.STEP,
                f"expected the server to close the connection, but it sent {quote_bytes(data)}",
                field_name="close",
            )
            return
        self.transcript.note("connection closed by the server")
        self.closed_by = "server"


async def run_session(
    steps: Sequence[Step],
    *,
    host: str,
    port: int,
    source_address: str | None,
    base_dir: Path,
    search_dirs: Sequence[Path] = (),
    timeout: float = 10.0,
    connect_timeout: float = 5.0,
    tls_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    tolerate: Tolerate | None = None,
    normalizer: Normalizer | None = None,
    wording: bool = True,
    implicit_tls: bool = False,
    bound: socket.socket | None = None,
) -> SessionResult:
    """Connect (from `source_address` when given), run `steps` in order until one fails, then close.
    `bound` is a socket already bound to the source address where the lab holds it (another network
    namespace, harness/lab/docker_lab.py): the session connects through it.
    `wording` judges the replies' wording as well as their behaviour (harness/judge/replies.py). With
    `implicit_tls` (a server on the smtps port, RFC 8314) the connection is TLS from the first byte,
    with `tls_context`, before the greeting is read.

    Nothing is read implicitly: a script normally starts with ``expect: 220`` for the banner.
    """
    messages = {
        index: load_message(index, step, base_dir, search_dirs)
        for index, step in enumerate(steps)
        if isinstance(step, Data | Bdat)
    }
    tls = (tls_context or ssl.create_default_context(), server_hostname) if implicit_tls else None
    reader, writer = await _connect(host, port, source_address, connect_timeout, tls, bound)
    transcript = _Transcript()
    sockname = writer.get_extra_info("sockname")
    local_address = (str(sockname[0]), int(sockname[1]))
    transcript.note(f"connected from {local_address[0]}:{local_address[1]} to {host}:{port}")
    session = _Session(
        reader, writer, transcript, timeout, tls_context, server_hostname, tolerate, normalizer, wording
    )
    try:
        exchanges = await _run_steps(session, steps, messages)
    finally:
        if session.closed_by != "client":
            await session.close()
    transcript.note(
        "end of session" + ("" if session.closed_by == "none" else f" (closed by the {session.closed_by})")
    )
    return SessionResult(
        exchanges=exchanges,
        transcript=transcript.render(),
        passed=len(exchanges) == len(steps) and all(e.passed for e in exchanges),
        closed_by=session.closed_by,
        local_address=local_address,
    )


async def _connect(
    host: str,
    port: int,
    source_address: str | None,
    connect_timeout: float,
    tls: tuple[ssl.SSLContext, str | None] | None = None,
    bound: socket.socket | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    # Relay-by-IP decisions on the server depend on the client address, so it is bound explicitly.
    local_addr = (source_address, 0) if source_address else None
    try:
        async with asyncio.timeout(connect_timeout):
            if bound is not None:
                return await through(bound, host, port, tls)
            if tls is not None:
                context, name = tls
                return await asyncio.open_connection(
                    host, port, local_addr=local_addr, ssl=context, server_hostname=name
                )
            return await asyncio.open_connection(host, port, local_addr=local_addr)
    except TimeoutError:
        raise ConnectError(host, port, source_address, f"timed out after {connect_timeout:g} s") from None
    except ssl.SSLError as exc:
        raise ConnectError(host, port, source_address, f"TLS handshake failed: {exc.reason or exc}") from exc
    except OSError as exc:
        raise ConnectError(host, port, source_address, str(exc)) from exc


async def through(
    bound: socket.socket, host: str, port: int, tls: tuple[ssl.SSLContext, str | None] | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection through a socket bound elsewhere (closed if the connection is not made)."""
    try:
        bound.setblocking(False)
        await asyncio.get_running_loop().sock_connect(bound, (host, port))
        context, name = tls if tls is not None else (None, None)
        return await asyncio.open_connection(sock=bound, ssl=context, server_hostname=name)
    except BaseException:
        bound.close()
        raise


async def _run_steps(
    session: _Session, steps: Sequence[Step], messages: dict[int, Message]
) -> list[Exchange]:
    """The steps in order until one fails; the transcript says why and which steps were not run."""
    exchanges: list[Exchange] = []
    for index, step in enumerate(steps):
        exchange = await session.run_step(index, step, messages.get(index))
        exchanges.append(exchange)
        if not exchange.passed:
            for problem in exchange.failures:
                session.transcript.failure(index, problem)
            for later in range(index + 1, len(steps)):
                session.transcript.not_run(later, step_title(steps[later], messages.get(later)))
            break
    return exchanges
