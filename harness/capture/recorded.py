"""A recorded SMTP session, whatever it was recorded from (the recording proxy, a pcap, a protocol log,
a swaks transcript). `capture/importers/to_trace.py` makes it a trace: every client command a step, every
reply an `expect` of its code and its text with volatile values masked (harness/smtp/masking.py), so that
it replays against another run or another server without false failures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


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
    pause: float = 0.0  # seconds the client waited after the previous reply before sending this


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


# Where a replayed AUTH finds its credentials (harness/run/replay.py resolves ${NAME} from the environment).
AUTH_FROM_ENVIRONMENT = {"user": "${MAILFLOW_AUTH_USER}", "password": "${MAILFLOW_AUTH_PASSWORD}"}


def expectation(reply: Sequence[str], masked: str) -> dict[str, Any]:
    """What a recorded trace expects of one reply: its code, and its text with volatile values masked.
    The one place a recorded reply becomes an expectation, for the recorder and every importer."""
    return {"code": int(reply[-1][:3]), "masked": masked}
