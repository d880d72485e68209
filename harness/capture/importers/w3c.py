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
from dataclasses import dataclass
from pathlib import Path

from harness.capture.importers import BadInput
from harness.capture.recorded import RecordedSession
from harness.smtp import syntax

_REQUIRED = ("c-ip", "cs-method", "sc-status")
_OUTBOUND = ("OutboundConnectionCommand", "OutboundConnectionResponse")
_QUIT_STATUS = 240


@dataclass
class _Open:
    session: RecordedSession
    helo: str | None = None


def read(path: Path) -> list[RecordedSession]:
    """Every inbound session in the log at `path`, in the order they began."""
    fields: list[str] | None = None
    sessions: list[RecordedSession] = []
    open_: dict[str, _Open] = {}
    outbound = 0
    raw = path.read_bytes()
    for number, line_bytes in enumerate(raw.splitlines(), 1):
        line = _decode(line_bytes)
        if not line.strip():
            continue
        if line.startswith("#"):
            if line.startswith("#Fields:"):
                fields = line.removeprefix("#Fields:").split()
                missing = [name for name in _REQUIRED if name not in fields]
                if missing:
                    raise BadInput(path, f"line {number}", f"#Fields lacks {', '.join(missing)}")
            continue
        if fields is None:
            raise BadInput(path, f"line {number}", "a log line before any #Fields directive")
        values = line.split()
        if len(values) != len(fields):
            raise BadInput(
                path,
                f"line {number}",
                f"{len(values)} fields where #Fields names {len(fields)}: {line[:80]!r}",
            )
        row = dict(zip(fields, values, strict=True))
        username = _value(row.get("cs-username", "-"))
        if username in _OUTBOUND:
            outbound += 1
            continue
        status = row["sc-status"]
        if not status.isdigit() or not 100 <= int(status) <= 599:
            raise BadInput(path, f"line {number}", f"sc-status {status!r} is no SMTP reply code")
        client = row["c-ip"]
        current = open_.get(client)
        if current is not None and current.helo is not None and username is None:
            current = None  # a new connection from the same address, before its HELO
        if current is None:
            current = _Open(_new_session(row))
            open_[client] = current
            sessions.append(current.session)
        current.helo = username or current.helo
        verb = row["cs-method"].upper()
        # QUIT's query is the client's HELO name, not an argument it sent.
        arguments = "" if verb == "QUIT" else _arguments(row.get("cs-uri-query", "-"))
        if (bdat := syntax.bdat(f"{verb} {arguments}")) is not None and bdat[0] > MAX_CHUNK:
            # The stand-in chunk is made up to the logged size: a hostile size must not exhaust memory.
            raise BadInput(path, f"line {number}", f"a BDAT chunk of {bdat[0]} bytes (at most {MAX_CHUNK})")
        _add(current.session, verb, arguments, int(status))
        if verb == "QUIT":
            del open_[client]
    if outbound:
        for session in sessions:
            session.notes.append(f"{outbound} line(s) of outbound sessions in the log were left out")
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
    session.add(None, ["220"])
    session.notes.append("the protocol log holds reply codes only, and no greeting: 220 is assumed")
    return session


def _add(session: RecordedSession, verb: str, arguments: str, code: int) -> None:
    command = f"{verb} {arguments}" if arguments else verb
    if verb == "QUIT" and code == _QUIT_STATUS:
        code = 221
    if verb == "XXXX":
        session.notes.append(
            f"the log writes an unknown command as xxxx: replayed as {command!r}, its verb is lost"
        )
    if verb == "DATA" and arguments.startswith("<"):
        # A logged Message-ID: the message was taken. The log has no content; a stand-in carries the ID.
        session.add("DATA", ["354"])
        session.add(None, [str(code)], message=_stand_in(arguments))
        session.notes.append(f"the message {arguments} is not in the log: a stand-in is sent")
    elif verb == "AUTH":
        mechanism = syntax.auth_mechanism(command)
        session.add(f"AUTH {mechanism}", [str(code)], auth=mechanism)
    elif (bdat := syntax.bdat(command)) is not None:
        session.add(command, [str(code)], message=_filler(bdat[0]))
    else:
        exchange = session.add(command, [str(code)])
        exchange.tls = verb == "STARTTLS" and code == 220


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
