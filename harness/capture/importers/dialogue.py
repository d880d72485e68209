"""An SMTP dialogue from the two byte streams of one connection, as a file shows them: split by
`harness.smtp.dialogue` (commands, DATA messages, BDAT chunks, AUTH answers, replies paired with what
they answer) into the exchanges of a recorded session.

The capture importer, the swaks importer and the protocol-log importer build these streams (swaks's
lines joined with CRLF, a log's commands and codes written out as they went on the wire); every piece
of a stream remembers where it came from ("packet 12", "line 7") and when, so that an error names its
place in the input and pipelining (a command sent before the previous reply arrived) shows.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

from harness.capture.importers import BadInput
from harness.capture.recorded import RecordedSession
from harness.smtp import syntax
from harness.smtp.dialogue import (
    Answer,
    AuthAnswer,
    Chunk,
    ClientEvent,
    Command,
    Dialogue,
    DialogueError,
    EndOfMessage,
    Wait,
)


@dataclass
class Stream:
    """One direction of a connection, in order. `marks` holds, for each piece, the offset where it
    starts, its time (capture time, or only an order) and where it came from in the input."""

    data: bytearray = field(default_factory=bytearray)
    marks: list[tuple[int, float, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _starts: list[int] = field(default_factory=list, repr=False)  # the marks' offsets, to search

    def add(self, data: bytes, time: float, where: str) -> None:
        if data:
            self.marks.append((len(self.data), time, where))
            self._starts.append(len(self.data))
            self.data += data

    def _mark(self, offset: int) -> tuple[int, float, str]:
        index = bisect.bisect_right(self._starts, offset) - 1
        return self.marks[max(index, 0)]

    def time_at(self, offset: int) -> float:
        return self._mark(offset)[1] if self.marks else 0.0

    def where(self, offset: int) -> str:
        return self._mark(offset)[2] if self.marks else ""


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
    try:
        _Pairing(session, client, server, tls_visible).run()
    except DialogueError as exc:
        stream = server if exc.side == "server" else client
        raise BadInput(source, stream.where(exc.offset), str(exc)) from None


@dataclass
class _Auth:
    """An AUTH command whose challenges are being answered: one exchange once the last reply is in."""

    command: Command
    pipelined: bool
    lines: list[str]


class _Pairing:
    """The split dialogue made exchanges, each added when its reply is read, as the recorder adds them.
    Commands are split before the reply to them is read, as a server reads them: which client bytes
    are a message or an AUTH answer depends on those replies."""

    def __init__(self, session: RecordedSession, client: Stream, server: Stream, tls_visible: bool) -> None:
        self.session = session
        self.client = client
        self.server = server
        self.dialogue = Dialogue(tls_visible=tls_visible)
        self.dialogue.receive_client(bytes(client.data))
        self.dialogue.receive_server(bytes(server.data))
        self.answered = 0.0  # when the reply before the one being paired arrived
        self.auth: _Auth | None = None
        self.cut: str | None = None  # what the client stream ends inside of

    def run(self) -> None:
        greeting = self.dialogue.next_server_event()
        if isinstance(greeting, Wait):
            self.session.notes.append("the server sent no greeting")
            return
        self.session.add(None, list(greeting.reply.lines))
        self.answered = self.server.time_at(greeting.end - 1)
        while True:
            while not isinstance(event := self.dialogue.next_client_event(), Wait):
                self._sent(event)
            answer = self.dialogue.next_server_event()
            if isinstance(answer, Wait):
                break
            self._answer(answer)
            if self.dialogue.encrypted:
                unread_client, unread_server = self.dialogue.unread
                self.session.notes.append(
                    "the session is encrypted after STARTTLS: "
                    f"{unread_client} bytes from the client and {unread_server} from the server "
                    "were not imported"
                )
                return
        self._finish()

    def _sent(self, event: ClientEvent) -> None:
        if isinstance(event, Command):
            text = event.text
            if "\ufffd" in text and b"\xef\xbf\xbd" not in event.line:
                self.session.notes.append(f"the command {text!r} was not UTF-8; it is replayed with U+FFFD")
            if syntax.bdat(text) is not None:
                self.cut = f"the capture ends inside the chunk of {text!r}"
        elif isinstance(event, Chunk | EndOfMessage):
            self.cut = None

    def _answer(self, answer: Answer) -> None:
        asked, lines = answer.answers, list(answer.reply.lines)
        # Sent before the previous reply had arrived: the client pipelined it (RFC 2920).
        pipelined = isinstance(asked, Command | Chunk) and self._sent_at(asked) < self.answered
        self.answered = self.server.time_at(answer.end - 1)
        if isinstance(asked, Command) and asked.auth is not None:
            # SASL answers are secrets (LOGIN's user name and password, PLAIN's initial response):
            # only the mechanism is kept, and the reply that ends the challenges.
            self.auth = _Auth(asked, pipelined, lines)
        elif isinstance(asked, AuthAnswer) and self.auth is not None:
            self.auth.lines = lines
        elif isinstance(asked, Chunk):
            self.session.add(asked.command.text, lines, message=asked.raw, pipelined=pipelined)
        elif isinstance(asked, EndOfMessage):
            # The message is an exchange of its own, as the recorder has it: no command, the message
            # as sent, and the reply to its end.
            self.session.add(None, lines, message=asked.message)
        elif isinstance(asked, Command):
            self.session.add(asked.text, lines, pipelined=pipelined, tls=answer.tls)
            if asked.verb == "DATA" and answer.reply.code == 354:
                self.cut = "the capture ends inside a DATA message"
        else:  # the greeting, or what the server said unasked (a 421 before closing, say)
            self.session.add(None, lines)
        if self.auth is not None and answer.reply.code != 334:
            self._auth_done()

    def _auth_done(self) -> None:
        assert self.auth is not None
        mechanism = self.auth.command.auth or ""
        self.session.add(
            f"AUTH {mechanism}".rstrip(),
            self.auth.lines,
            auth=mechanism or None,
            pipelined=self.auth.pipelined,
        )
        self.auth = None

    def _finish(self) -> None:
        """The end of the server's stream: what was cut off is said, and the first thing that got no
        reply is an exchange without one."""
        if self.cut is not None:
            self.session.notes.append(self.cut)
        unanswered = self.dialogue.waiting[:1]
        if self.auth is not None:
            if unanswered and isinstance(unanswered[0], AuthAnswer):
                self.auth.lines = []
            self._auth_done()
        elif unanswered and isinstance(first := unanswered[0], Command | Chunk | EndOfMessage):
            self._answer_nothing(first)

    def _answer_nothing(self, asked: Command | Chunk | EndOfMessage) -> None:
        if isinstance(asked, EndOfMessage):
            self.session.add(None, [], message=asked.message)
            return
        pipelined = self._sent_at(asked) < self.answered
        if isinstance(asked, Chunk):
            self.session.add(asked.command.text, [], message=asked.raw, pipelined=pipelined)
        elif asked.auth is not None:
            self.session.add(f"AUTH {asked.auth}", [], auth=asked.auth, pipelined=pipelined)
        else:
            self.session.add(asked.text, [], pipelined=pipelined)

    def _sent_at(self, asked: Command | Chunk) -> float:
        command = asked.command if isinstance(asked, Chunk) else asked
        return self.client.time_at(command.end - 1)
