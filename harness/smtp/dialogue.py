"""An SMTP dialogue split into what each side said, with no I/O: fed the bytes of the client and of the
server as they come, it gives back commands, message data (a DATA message up to ``<CRLF>.<CRLF>``, BDAT
chunks by their announced size), AUTH answers, and complete replies, each reply paired with what it
answers. The recording proxy feeds it live sockets; the capture, swaks and protocol-log importers feed it
bytes they read from a file. One splitter, so that a session reads alike whichever of them saw it.

The client's bytes cannot be split on their own: whether what follows DATA is a message depends on the
server's 354, the lines after AUTH are SASL answers only while the server says 334, and after the 220 to
STARTTLS the rest is TLS. So, as a server does, the splitter stops reading the client after those
commands (`PAUSED`) until the reply to them has been read. The caller decides the order: the next
client event, then the next reply.

This is the shape of h11 for HTTP (a protocol object that is fed bytes and hands out events). No
maintained library does the same for SMTP: aiosmtpd and smtplib are a server and a client that own
their sockets and read one side each, and a recorder needs both sides split without speaking either.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import TypeVar

from harness.smtp import syntax
from harness.smtp.reply import MalformedReply, Reply, ReplyLines, strip_terminator


class DialogueError(ValueError):
    """Bytes that break SMTP's grammar; `offset` is where the offending line starts in its side's stream."""

    def __init__(self, side: str, offset: int, message: str) -> None:
        super().__init__(message)
        self.side = side
        self.offset = offset


class Wait(enum.Enum):
    """Why no event could be given: more bytes of that side are needed, or (client side only) what the
    client sends next depends on a reply not read yet."""

    NEED_DATA = "need data"
    PAUSED = "paused"


NEED_DATA = Wait.NEED_DATA
PAUSED = Wait.PAUSED


@dataclass(frozen=True)
class Connected:
    """What the greeting answers: the connection itself."""


@dataclass(frozen=True)
class Command:
    """One command line. `raw` is the line as sent, `start` and `end` its place in the client's stream;
    `pipelined`: replies to earlier commands were still owed when it was read (RFC 2920). Its repr
    leaves the line out: an AUTH command may carry a secret."""

    raw: bytes = field(repr=False)
    start: int
    end: int
    pipelined: bool

    @property
    def line(self) -> bytes:
        return strip_terminator(self.raw)

    @property
    def text(self) -> str:
        return self.line.decode("utf-8", "replace")

    @property
    def verb(self) -> str:
        return self.text.split(" ", 1)[0].upper()

    @property
    def auth(self) -> str | None:
        """The mechanism of an AUTH command (never what else is on its line, which may be a secret)."""
        return syntax.auth_mechanism(self.text) if self.verb == "AUTH" else None


@dataclass(frozen=True)
class AuthAnswer:
    """A line that answers the server's 334 challenge: a secret, whatever it looks like."""

    raw: bytes = field(repr=False)
    start: int
    end: int
    mechanism: str


@dataclass(frozen=True)
class MessageData:
    """A piece of a DATA message as sent (dot-stuffed): complete lines, passed on as they come."""

    raw: bytes = field(repr=False)
    start: int
    end: int


@dataclass(frozen=True)
class EndOfMessage:
    """The ``.`` line that ends a DATA message; `message` is the whole message as sent, with the CRLF
    of its last line and without the dot line."""

    raw: bytes
    start: int
    end: int
    message: bytes = field(repr=False)


@dataclass(frozen=True)
class Chunk:
    """A BDAT chunk, whole, after its command."""

    raw: bytes = field(repr=False)
    start: int
    end: int
    command: Command
    last: bool


Asked = Connected | Command | AuthAnswer | EndOfMessage | Chunk
"""What a reply answers."""
ClientEvent = Command | AuthAnswer | MessageData | EndOfMessage | Chunk
_Asked = TypeVar("_Asked", Command, AuthAnswer, EndOfMessage, Chunk)


@dataclass(frozen=True)
class Answer:
    """A complete reply and what it answers (None for a reply nobody asked for, a 421 before closing).
    `tls`: the 220 to STARTTLS, after which both sides speak TLS."""

    reply: Reply
    answers: Asked | None
    start: int
    end: int
    tls: bool = False


class _Client(enum.Enum):
    COMMAND = enum.auto()
    PAUSED = enum.auto()  # what comes next depends on the reply to the last thing read
    MESSAGE = enum.auto()
    CHUNK = enum.auto()
    AUTH_ANSWER = enum.auto()


class _Buffer:
    """Bytes of one side not yet split. What was split is let go of in large steps only, so that a
    whole capture fed at once is split in linear time."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._pos = 0  # where the bytes not yet split start in _data
        self._base = 0  # where _data starts in the side's stream

    def __len__(self) -> int:
        return len(self._data) - self._pos

    @property
    def offset(self) -> int:
        """Where the bytes not yet split start in the side's stream."""
        return self._base + self._pos

    def add(self, data: bytes) -> None:
        if self._pos > 65536 and self._pos * 2 > len(self._data):
            del self._data[: self._pos]
            self._base += self._pos
            self._pos = 0
        self._data += data

    def find(self, needle: bytes) -> int:
        """Where `needle` is, counted from the first byte not yet split; -1 when it is not there."""
        found = self._data.find(needle, self._pos)
        return found - self._pos if found >= 0 else -1

    def rfind(self, needle: bytes) -> int:
        found = self._data.rfind(needle, self._pos)
        return found - self._pos if found >= 0 else -1

    def startswith(self, prefix: bytes) -> bool:
        return self._data.startswith(prefix, self._pos)

    def line(self) -> tuple[bytes, int] | None:
        """The next line with its terminator (a bare LF ends a line too) and where it starts."""
        end = self.find(b"\n")
        return None if end < 0 else self.take(end + 1)

    def peek(self) -> bytes:
        return bytes(self._data[self._pos :])

    def take(self, size: int) -> tuple[bytes, int]:
        """The next `size` bytes, and where they start in the stream."""
        start = self.offset
        taken = bytes(self._data[self._pos : self._pos + size])
        self._pos += len(taken)
        return taken, start


class Dialogue:
    """Both sides of one SMTP connection, split. `tls_visible`: the bytes after STARTTLS's 220 are what
    went inside TLS (a transcript that shows them, or a proxy that terminates TLS and feeds what it
    decrypts); otherwise the splitter stops there (`encrypted`). `max_line` bounds how many bytes a line
    may take before it is refused, so that a runaway peer cannot make a live caller buffer without end."""

    def __init__(self, *, tls_visible: bool = False, max_line: int | None = None) -> None:
        self.tls_visible = tls_visible
        self.max_line = max_line
        self.encrypted = False
        self._client = _Buffer()
        self._server = _Buffer()
        self._owed: deque[Asked] = deque([Connected()])
        self._state = _Client.COMMAND
        self._deciding: Asked | None = None  # what the client waits on the reply to
        self._chunk: Command | None = None
        self._chunk_size = 0
        self._message = bytearray()
        self._replies = ReplyLines()

    # --- input -----------------------------------------------------------------------------------

    def receive_client(self, data: bytes) -> None:
        self._client.add(data)

    def receive_server(self, data: bytes) -> None:
        self._server.add(data)

    @property
    def waiting(self) -> tuple[Asked, ...]:
        """What the server still owes a reply to, in order."""
        return tuple(self._owed)

    @property
    def unread(self) -> tuple[int, int]:
        """How many bytes of the client and of the server have not been split (yet, or ever: the
        encrypted rest of a session)."""
        return len(self._client), len(self._server)

    def server_partial(self) -> bytes:
        """What the server has sent of a reply not yet complete (or not SMTP)."""
        return bytes(self._replies.received) + self._server.peek()

    def client_partial(self) -> bytes:
        """What the client has sent that no event has handed out yet."""
        return self._client.peek()

    def inside_tls(self) -> bytes:
        """Go on with the dialogue inside TLS, which the caller now feeds decrypted. What the client
        sent in clear after STARTTLS is never part of it (CVE-2011-0411): it is dropped and returned."""
        dropped, _ = self._client.take(len(self._client))
        self._server.take(len(self._server))
        self.encrypted = False
        return dropped

    # --- the client ------------------------------------------------------------------------------

    def next_client_event(self) -> ClientEvent | Wait:
        if self.encrypted:
            return NEED_DATA
        if self._state is _Client.PAUSED:
            return PAUSED
        if self._state is _Client.CHUNK:
            return self._chunk_event()
        if self._state is _Client.MESSAGE:
            return self._message_event()
        got = self._client.line()
        if got is None:
            self._check_length(self._client, "client")
            return NEED_DATA
        raw, start = got
        if self._state is _Client.AUTH_ANSWER:
            assert isinstance(self._deciding, Command | AuthAnswer)
            mechanism = (
                self._deciding.mechanism if isinstance(self._deciding, AuthAnswer) else self._deciding.auth
            )
            return self._ask(
                AuthAnswer(raw, start, self._client.offset, mechanism or "UNKNOWN"), decides=True
            )
        command = Command(raw, start, self._client.offset, pipelined=bool(self._owed))
        if (bdat := syntax.bdat(command.text)) is not None:
            self._chunk, self._chunk_size = command, bdat[0]
            self._state = _Client.CHUNK
            return command
        return self._ask(command, decides=command.verb in ("AUTH", "DATA", "STARTTLS"))

    def _ask(self, asked: _Asked, *, decides: bool = False) -> _Asked:
        self._owed.append(asked)
        if decides:
            self._deciding = asked
            self._state = _Client.PAUSED
        return asked

    def _chunk_event(self) -> Chunk | Wait:
        assert self._chunk is not None
        if len(self._client) < self._chunk_size:
            return NEED_DATA
        data, start = self._client.take(self._chunk_size)
        bdat = syntax.bdat(self._chunk.text)
        chunk = Chunk(data, start, self._client.offset, self._chunk, last=bdat is not None and bdat[1])
        self._chunk = None
        self._state = _Client.COMMAND
        return self._ask(chunk)

    def _message_event(self) -> MessageData | EndOfMessage | Wait:
        # Only <CRLF>.<CRLF> ends the message (RFC 5321 4.1.1.4): a bare LF around the dot is message
        # content to a strict server, and taking it otherwise would misplace every reply after it
        # (SMTP smuggling).
        buffer = self._client
        at_line_start = not self._message or self._message.endswith(b"\r\n")
        if at_line_start and buffer.startswith(b".\r\n"):
            position = 0
        elif (found := buffer.find(b"\r\n.\r\n")) >= 0:
            position = found + 2  # the lines before the dot line
        else:
            position = buffer.rfind(b"\n") + 1  # every complete line, passed on as it comes
            if position == 0:
                self._check_length(buffer, "client")
                return NEED_DATA
        if position > 0:
            piece, start = self._client.take(position)
            self._message += piece
            return MessageData(piece, start, self._client.offset)
        dot, start = self._client.take(3)
        message = bytes(self._message)
        self._message.clear()
        self._state = _Client.COMMAND
        return self._ask(EndOfMessage(dot, start, self._client.offset, message))

    # --- the server ------------------------------------------------------------------------------

    def next_server_event(self) -> Answer | Wait:
        if self.encrypted:
            return NEED_DATA
        while (got := self._server.line()) is not None:
            raw, start = got
            try:
                reply = self._replies.add(raw)
            except MalformedReply as exc:
                line = strip_terminator(raw)[:80]
                raise DialogueError("server", start, f"the server sent {line!r}, {exc.reason}") from None
            if reply is not None:
                return self._answer(reply, self._server.offset - len(reply.raw))
        self._check_length(self._server, "server")
        return NEED_DATA

    def _answer(self, reply: Reply, start: int) -> Answer:
        asked = self._owed.popleft() if self._owed else None
        tls = False
        if asked is not None and asked is self._deciding:
            self._deciding = None
            self._state = _Client.COMMAND
            if isinstance(asked, AuthAnswer) or (isinstance(asked, Command) and asked.verb == "AUTH"):
                if reply.code == 334:
                    self._deciding = asked
                    self._state = _Client.AUTH_ANSWER
            elif isinstance(asked, Command) and asked.verb == "DATA" and reply.code == 354:
                self._state = _Client.MESSAGE
            elif isinstance(asked, Command) and asked.verb == "STARTTLS" and reply.code == 220:
                tls = True
                self.encrypted = not self.tls_visible
        return Answer(reply, asked, start, self._server.offset, tls)

    def _check_length(self, buffer: _Buffer, side: str) -> None:
        if self.max_line is not None and len(buffer) > self.max_line:
            raise DialogueError(
                side, buffer.offset, f"the {side} sent a line longer than {self.max_line} bytes"
            )
