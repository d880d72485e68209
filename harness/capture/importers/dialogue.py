"""An SMTP dialogue from the two byte streams of one connection: the client's split into commands (CRLF
lines, DATA bodies up to ``<CRLF>.<CRLF>``, BDAT chunks by their announced size, AUTH answers), the
server's into replies (``250-`` continuation lines up to the ``250 `` final one), paired in order.

The client's stream cannot be split on its own: whether the bytes after DATA are a message depends on
the server's 354, and the lines after AUTH are SASL answers only while the server says 334. So commands
are read one at a time and each takes the replies it gets, as a server reads them.

Both the capture importer and the swaks importer build these streams (swaks's lines joined with CRLF);
every piece of a stream remembers where it came from ("packet 12", "line 7") and when, so that an error
names its place in the input and pipelining (a command sent before the previous reply arrived) shows.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.capture.importers import BadInput
from harness.capture.recorded import RecordedSession
from harness.smtp import syntax

_REPLY_LINE = re.compile(rb"^(\d{3})([ -]|$)")


@dataclass
class Stream:
    """One direction of a connection, in order. `marks` holds, for each piece, the offset where it
    starts, its time (capture time, or only an order) and where it came from in the input."""

    data: bytearray = field(default_factory=bytearray)
    marks: list[tuple[int, float, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, data: bytes, time: float, where: str) -> None:
        if data:
            self.marks.append((len(self.data), time, where))
            self.data += data

    def _mark(self, offset: int) -> tuple[int, float, str]:
        index = bisect.bisect_right([m[0] for m in self.marks], offset) - 1
        return self.marks[max(index, 0)]

    def time_at(self, offset: int) -> float:
        return self._mark(offset)[1] if self.marks else 0.0

    def where(self, offset: int) -> str:
        return self._mark(offset)[2] if self.marks else ""


@dataclass
class _Reply:
    lines: list[str]
    code: int
    time: float


class _Cursor:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.stream.data) - self.pos

    def line(self) -> tuple[bytes, float, int] | None:
        """The next line without its CRLF (a bare LF ends a line too), the time its end arrived and
        where it started; None if no complete line is left."""
        end = self.stream.data.find(b"\n", self.pos)
        if end < 0:
            return None
        start, self.pos = self.pos, end + 1
        return bytes(self.stream.data[start:end]).removesuffix(b"\r"), self.stream.time_at(end), start

    def body(self) -> bytes | None:
        """A DATA body as sent (dot-stuffed, with the CRLF of its last line), up to the ``.`` line."""
        data = self.stream.data
        if data[self.pos : self.pos + 3] == b".\r\n":
            self.pos += 3
            return b""
        end = data.find(b"\r\n.\r\n", self.pos)
        if end < 0:
            return None
        body = bytes(data[self.pos : end + 2])
        self.pos = end + 5
        return body

    def take(self, size: int) -> bytes | None:
        if self.left < size:
            return None
        chunk = bytes(self.stream.data[self.pos : self.pos + size])
        self.pos += size
        return chunk


class _Replies:
    def __init__(self, stream: Stream, source: Path) -> None:
        self.cursor = _Cursor(stream)
        self.source = source

    def next(self) -> _Reply | None:
        """The next complete reply, or None at the end of what the server sent."""
        lines: list[str] = []
        code = 0
        while (got := self.cursor.line()) is not None:
            raw, time, start = got
            match = _REPLY_LINE.match(raw)
            where = self.cursor.stream.where(start)
            if match is None:
                raise BadInput(
                    self.source, where, f"the server sent {raw[:80]!r}, which is no SMTP reply line"
                )
            if lines and int(match[1]) != code:
                raise BadInput(
                    self.source, where, f"reply code changes from {code} within one reply: {raw!r}"
                )
            code = int(match[1])
            lines.append(raw.decode("utf-8", "replace"))
            if match[2] != b"-":
                return _Reply(lines, code, time)
        return None


def pair(
    session: RecordedSession,
    client: Stream,
    server: Stream,
    source: Path,
    *,
    tls_visible: bool = False,
) -> None:
    """Add the dialogue of `client` and `server` to `session`. With `tls_visible` (a transcript that
    shows what went inside TLS) the session goes on after STARTTLS; otherwise it ends at the 220."""
    session.notes.extend(client.notes + server.notes)
    replies = _Replies(server, source)
    commands = _Cursor(client)
    greeting = replies.next()
    if greeting is None:
        session.notes.append("the server sent no greeting")
        return
    session.add(None, greeting.lines)
    answered = greeting.time  # when the reply to the previous command (or the greeting) arrived
    while (got := commands.line()) is not None:
        raw, sent_at, _ = got
        text = raw.decode("utf-8", "replace")
        if "\ufffd" in text and b"\xef\xbf\xbd" not in raw:
            session.notes.append(f"the command {text!r} was not UTF-8; it is replayed with U+FFFD")
        # Sent before the previous reply had arrived: the client pipelined it (RFC 2920).
        pipelined = sent_at < answered
        verb = text.split(" ", 1)[0].upper()
        if verb == "AUTH":
            # SASL answers are secrets (LOGIN's user name and password, PLAIN's initial response):
            # only the mechanism is kept, and every line the client sends while the server says 334.
            mechanism = syntax.auth_mechanism(text)
            reply = replies.next()
            while reply is not None and reply.code == 334 and commands.line() is not None:
                reply = replies.next()
            exchange = session.add(f"AUTH {mechanism}".rstrip(), _lines(reply), auth=mechanism or None)
        elif (bdat := syntax.bdat(text)) is not None:
            chunk = commands.take(bdat[0])
            if chunk is None:
                session.notes.append(f"the capture ends inside the chunk of {text!r}")
                break
            reply = replies.next()
            exchange = session.add(text, _lines(reply), message=chunk)
        elif verb == "DATA" and text.upper() == "DATA":
            reply = replies.next()
            exchange = session.add(text, _lines(reply), pipelined=pipelined)
            if reply is not None and reply.code == 354:
                # The message is an exchange of its own, as the recorder has it: no command, the
                # message as sent, and the reply to its end.
                body = commands.body()
                if body is None:
                    session.notes.append("the capture ends inside a DATA message")
                    break
                reply = replies.next()
                exchange = session.add(None, _lines(reply), message=body)
                pipelined = False
        elif verb == "STARTTLS":
            reply = replies.next()
            exchange = session.add(text, _lines(reply))
            if reply is not None and reply.code == 220:
                exchange.tls = True
                exchange.pipelined = pipelined
                if not tls_visible:
                    session.notes.append(
                        "the session is encrypted after STARTTLS: "
                        f"{commands.left} bytes from the client and {replies.cursor.left} from the server "
                        "were not imported"
                    )
                    return
        else:
            reply = replies.next()
            exchange = session.add(text, _lines(reply))
        exchange.pipelined = pipelined
        if reply is None:
            break
        answered = reply.time
    # What the server said unasked (a 421 before closing, say) is expected all the same.
    while (extra := replies.next()) is not None:
        session.add(None, extra.lines)


def _lines(reply: _Reply | None) -> list[str]:
    return reply.lines if reply is not None else []
