"""SMTP sessions from the protocol log an Exchange 2003 (IIS 6) SMTP virtual server writes in W3C
extended log file format (`exYYMMDD.log`; `reference_mta.protocol_log` writes the same).

What the log holds is one line per command: the verb (cs-method), its arguments with spaces written as
`+` (cs-uri-query), the reply code (sc-status), the client's address (c-ip) and HELO name
(cs-username). Not the reply texts, not the greeting, not the message: so the imported trace expects
codes only, assumes the greeting was 220, and sends a stand-in message (with the logged Message-ID)
where DATA was accepted. IIS writes 240 for QUIT whatever it answered: that is read as 221.

Nothing in a line names its connection. Lines are grouped by client address; a session ends at its
QUIT, or when a line from the same address comes without a HELO name after one that had it (a new
connection that has not said HELO yet). Two connections from one address at the same time cannot be
told apart. Lines of sessions this server opened itself (cs-username OutboundConnectionCommand or
OutboundConnectionResponse) are left out.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.capture.importers import BadInput
from harness.capture.importers.dialogue import Stream, pair
from harness.capture.recorded import RecordedSession
from harness.smtp import syntax

_REQUIRED = ("c-ip", "cs-method", "sc-status")
_OUTBOUND = ("OutboundConnectionCommand", "OutboundConnectionResponse")
_QUIT_STATUS = 240


@dataclass
class _Open:
    """A session still being read: the dialogue the log's lines stand for, written out as it went on
    the wire, for `dialogue.pair` to split as it splits a capture's."""

    session: RecordedSession
    client: Stream = field(default_factory=Stream)
    server: Stream = field(default_factory=Stream)
    helo: str | None = None


def read(path: Path) -> list[RecordedSession]:
    """Every inbound session in the log at `path`, in the order they began."""
    log = _Log(path)
    for number, line_bytes in enumerate(path.read_bytes().splitlines(), 1):
        line = _decode(line_bytes)
        if line.startswith("#"):
            log.directive(number, line)
        elif line.strip():
            log.command(number, line)
    return log.sessions()


class _Log:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] | None = None
        self.opened: list[_Open] = []
        self.open: dict[str, _Open] = {}  # by client address
        self.outbound = 0

    def directive(self, number: int, line: str) -> None:
        if line.startswith("#Fields:"):
            self.fields = line.removeprefix("#Fields:").split()
            missing = [name for name in _REQUIRED if name not in self.fields]
            if missing:
                raise BadInput(self.path, f"line {number}", f"#Fields lacks {', '.join(missing)}")

    def command(self, number: int, line: str) -> None:
        row = self._row(number, line)
        username = _value(row.get("cs-username", "-"))
        if username in _OUTBOUND:
            self.outbound += 1
            return
        status = row["sc-status"]
        if not status.isdigit() or not 100 <= int(status) <= 599:
            raise BadInput(self.path, f"line {number}", f"sc-status {status!r} is no SMTP reply code")
        current = self._session(number, row, username)
        verb = row["cs-method"].upper()
        # QUIT's query is the client's HELO name, not an argument it sent.
        arguments = "" if verb == "QUIT" else _arguments(row.get("cs-uri-query", "-"))
        if (bdat := syntax.bdat(f"{verb} {arguments}")) is not None and bdat[0] > MAX_CHUNK:
            # The stand-in chunk is made up to the logged size: a hostile size must not exhaust memory.
            raise BadInput(
                self.path, f"line {number}", f"a BDAT chunk of {bdat[0]} bytes (at most {MAX_CHUNK})"
            )
        _write(current, number, verb, arguments, int(status))
        if verb == "QUIT":
            del self.open[row["c-ip"]]

    def _row(self, number: int, line: str) -> dict[str, str]:
        if self.fields is None:
            raise BadInput(self.path, f"line {number}", "a log line before any #Fields directive")
        values = line.split()
        if len(values) != len(self.fields):
            raise BadInput(
                self.path,
                f"line {number}",
                f"{len(values)} fields where #Fields names {len(self.fields)}: {line[:80]!r}",
            )
        return dict(zip(self.fields, values, strict=True))

    def _session(self, number: int, row: dict[str, str], username: str | None) -> _Open:
        client = row["c-ip"]
        current = self.open.get(client)
        if current is not None and current.helo is not None and username is None:
            current = None  # a new connection from the same address, before its HELO
        if current is None:
            current = _Open(_new_session(row))
            # The log has no greeting: it was 220, or the client would not have gone on.
            current.server.add(b"220\r\n", number, f"line {number}")
            self.open[client] = current
            self.opened.append(current)
        current.helo = username or current.helo
        return current

    def sessions(self) -> list[RecordedSession]:
        sessions = []
        for opened in self.opened:
            pair(opened.session, opened.client, opened.server, self.path, tls_visible=True)
            if self.outbound:
                opened.session.notes.append(
                    f"{self.outbound} line(s) of outbound sessions in the log were left out"
                )
            sessions.append(opened.session)
        return sessions


def _new_session(row: dict[str, str]) -> RecordedSession:
    port = row.get("s-port", "0")
    session = RecordedSession(
        client=row["c-ip"],
        server=_value(row.get("s-ip", "-")) or "",
        server_port=int(port) if port.isdigit() and int(port) else 25,
        started=_started(row),
        reply_texts=False,
    )
    session.notes.append("the protocol log holds reply codes only, and no greeting: 220 is assumed")
    return session


def _write(current: _Open, number: int, verb: str, arguments: str, code: int) -> None:
    """One logged command as it went on the wire: the command (and what it carried), then its reply.
    The log says the server went on inside TLS after STARTTLS, so the dialogue does too."""
    where = f"line {number}"
    command = f"{verb} {arguments}" if arguments else verb
    if verb == "QUIT" and code == _QUIT_STATUS:
        code = 221
    if verb == "XXXX":
        current.session.notes.append(
            f"the log writes an unknown command as xxxx: replayed as {command!r}, its verb is lost"
        )
    sent = f"{command}\r\n".encode()
    if verb == "DATA" and arguments.startswith("<"):
        # A logged Message-ID: the message was taken. The log has no content; a stand-in carries the ID.
        current.client.add(b"DATA\r\n", number, where)
        current.server.add(b"354\r\n", number, where)
        sent = _stand_in(arguments) + b".\r\n"
        current.session.notes.append(f"the message {arguments} is not in the log: a stand-in is sent")
    elif (bdat := syntax.bdat(command)) is not None:
        sent += _filler(bdat[0])
    current.client.add(sent, number, where)
    current.server.add(f"{code}\r\n".encode(), number, where)


def _arguments(query: str) -> str:
    """cs-uri-query back to the command's arguments: `+` is a space, except inside <...>, where it is
    more likely part of an address (bob+tag@example.com) than a space."""
    value = _value(query) or ""
    value = value.removeprefix("+")  # the space between the verb and its arguments
    return re.sub(r"<[^<>]*>|\+", lambda m: " " if m[0] == "+" else m[0], value)


def _stand_in(message_id: str) -> bytes:
    return (
        f"Message-ID: {message_id}\r\nSubject: stand-in for a message from a protocol log\r\n\r\n"
        "The protocol log holds no message content.\r\n"
    ).encode()


MAX_CHUNK = 64 << 20  # a larger logged BDAT chunk is refused, not made up


def _filler(size: int) -> bytes:
    """`size` bytes of text for a BDAT chunk the log only gives the size of."""
    line = b"x" * 76 + b"\r\n"
    return (line * (size // len(line) + 1))[:size]


def _started(row: dict[str, str]) -> float | None:
    try:
        when = datetime.datetime.strptime(f"{row['date']} {row['time']}", "%Y-%m-%d %H:%M:%S")
    except (KeyError, ValueError):
        return None
    return when.replace(tzinfo=datetime.UTC).timestamp()


def _value(text: str) -> str | None:
    return None if text == "-" else text


def _decode(line: bytes) -> str:
    # IIS writes the system's ANSI code page; UTF-8 first, Latin-1 (which never fails) otherwise.
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("latin-1")
