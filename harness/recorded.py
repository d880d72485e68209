"""A recorded SMTP session, whatever it was recorded from (the recording proxy, a pcap, a protocol log,
a swaks transcript), and how it becomes a trace: every client command a `send`, every reply an `expect`,
in order, with its volatile values masked (harness/normalize.py) so that it replays against another run
or another server without false failures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.normalize import Mask, Normalizer


@dataclass
class Exchange:
    """What the client sent (None for the greeting, which answers the connection) and the reply's lines
    as the server wrote them (without CRLF). `message` is a DATA body as sent (dot-stuffed, without the
    final dot line); `tls` marks the STARTTLS command whose 220 started TLS."""

    sent: str | None
    reply: list[str]
    message: bytes | None = None
    tls: bool = False
    auth: str | None = None  # the AUTH mechanism, when `sent` is an AUTH command (its secrets scrubbed)
    pipelined: bool = False  # sent before the reply to the exchange before it had arrived (RFC 2920)


@dataclass
class RecordedSession:
    """One SMTP session in the order it happened. Addresses are as seen on the wire; `started` is the
    Unix time of the connection when known."""

    client: str
    server: str
    server_port: int = 25
    exchanges: list[Exchange] = field(default_factory=list)
    started: float | None = None
    notes: list[str] = field(default_factory=list)  # what could not be recorded, said in the trace
    reply_texts: bool = True  # False when only the reply codes were recorded (a W3C protocol log)

    def add(self, sent: str | None, reply: Sequence[str], **extra: Any) -> Exchange:
        exchange = Exchange(sent, list(reply), **extra)
        self.exchanges.append(exchange)
        return exchange


def to_document(
    session: RecordedSession,
    *,
    trace_id: str,
    title: str,
    lab: str,
    client: str,
    connect: dict[str, str],
    spec: Sequence[str] = ("IN-3",),
    masks: Sequence[Mask] = (),
    description: str = "",
) -> dict[str, Any]:
    """A recorded session as a trace document (harness/tracefile.write): the client's commands in order,
    each reply expected by its code and its masked text. AUTH becomes an `auth` step whose credentials
    come from MAILFLOW_AUTH_USER and MAILFLOW_AUTH_PASSWORD when it is replayed, never from the file."""
    normalizer = Normalizer(masks)
    script: list[dict[str, Any]] = []
    exchanges = session.exchanges
    index = 0
    while index < len(exchanges):
        exchange = exchanges[index]
        index += 1
        if exchange.auth is not None:
            # The challenges and their (scrubbed) answers belong to the auth step; its last reply is
            # the one the trace expects.
            while exchange.reply[-1][:3] == "334" and index < len(exchanges) and exchanges[index].auth:
                normalizer.reply(exchange.reply)
                exchange = exchanges[index]
                index += 1
            script.append({"auth": {"mechanism": exchange.auth, **AUTH_FROM_ENVIRONMENT}})
        elif exchange.sent is None and exchange.message is not None:
            continue  # a message body: written with the DATA before it
        elif (
            exchange.sent is not None and exchange.sent.upper() == "DATA" and exchange.reply[-1][:3] == "354"
        ):
            normalizer.reply(exchange.reply)
            body = exchanges[index] if index < len(exchanges) else None
            if body is None or body.message is None:
                session.notes.append("the session ended before the message was sent")
                break
            script.append({"data": {"inline": _unstuffed(body.message)}})
            exchange = body
            index += 1
        elif exchange.tls:
            normalizer.reply(exchange.reply)
            script.append({"starttls": True})
            continue
        elif exchange.sent is not None and exchange.message is not None:
            script.append({"send_raw": _escaped(exchange.sent.encode() + b"\r\n" + exchange.message)})
        elif exchange.sent is not None:
            script.append({"send": exchange.sent})
        greeting = exchange.sent is None and exchange.message is None
        script.append({"expect": expectation(exchange.reply, normalizer.reply(exchange.reply, greeting))})
    notes = "\n".join(f"Not recorded: {note}" for note in session.notes)
    document: dict[str, Any] = {
        "id": trace_id,
        "title": title,
        "description": "\n".join(part for part in (description, notes) if part),
        "spec": list(spec),
        "lab": lab,
        "masks": [{"name": m.name, "regex": m.pattern.pattern} for m in masks],
        "sessions": [{"client": client, "connect": connect, "script": script}],
        "outcome": {},
    }
    return {key: value for key, value in document.items() if value or key in ("sessions", "outcome")}


# Where a replayed AUTH finds its credentials (harness/replay.py resolves ${NAME} from the environment).
AUTH_FROM_ENVIRONMENT = {"user": "${MAILFLOW_AUTH_USER}", "password": "${MAILFLOW_AUTH_PASSWORD}"}


def expectation(reply: Sequence[str], masked: str) -> dict[str, Any]:
    """What a recorded trace expects of one reply: its code, and its text with volatile values masked.
    The one place a recorded reply becomes an expectation, for the recorder and every importer."""
    return {"code": int(reply[-1][:3]), "masked": masked}


def _unstuffed(message: bytes) -> str:
    lines = message.decode("utf-8", "replace").split("\r\n")
    return "\n".join(line[1:] if line.startswith("..") else line for line in lines).removesuffix("\n")


_ESCAPES = {0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t", 0x5C: "\\\\"}


def _escaped(data: bytes) -> str:
    """Bytes as a send_raw string, escaped as harness/script.py's `unescape` reads them back."""
    return "".join(
        _ESCAPES.get(byte) or (chr(byte) if 0x20 <= byte < 0x7F else f"\\x{byte:02x}") for byte in data
    )
