"""The recording proxy: `mailflow record --listen ADDR:PORT --upstream HOST:PORT -o FILE` relays live SMTP
sessions transparently and keeps each one as a `RecordedSession` (harness/capture/recorded.py), written as a
trace when the session ends.

Bytes are passed on as they arrive, a command or reply at a time, split on the way by
`harness.smtp.dialogue` (client lines, DATA messages up to the final dot, BDAT chunks by their size,
server replies whole, each paired with what it answers, so pipelined commands get their own replies).
STARTTLS is terminated on both sides: once the server has said 220, the proxy does the TLS handshake
with the server as a client and with the client as a server (a certificate from the lab's CA for the
server's name), and records the dialogue inside. AUTH secrets never reach the recording: AUTH's initial
response and the lines that answer its 334 challenges are replaced before anything is kept.

asyncio streams are used directly: no proxy library relays SMTP with STARTTLS in the middle and parses
what passes (mitmproxy cannot upgrade a raw TCP stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.capture.recorded import RecordedSession
from harness.run.replay import unread
from harness.smtp.dialogue import (
    PAUSED,
    Answer,
    AuthAnswer,
    Chunk,
    Command,
    Dialogue,
    DialogueError,
    EndOfMessage,
    Wait,
)

SCRUBBED = "<scrubbed>"
MAX_LINE = 1 << 20  # longer lines end the session, said in the trace: no server takes them either
DRAIN_TIMEOUT = 10.0  # how long the server may take to answer what a client sent before it closed
READ_SIZE = 1 << 16


async def _read(reader: asyncio.StreamReader, dialogue: _Dialogue, side: str) -> bytes:
    """What `side` sent next, or b"" when it has closed (a broken connection is said in the trace,
    instead of an exception in the middle of the relay)."""
    try:
        return await reader.read(READ_SIZE)
    except ConnectionError as exc:
        dialogue.session.notes.append(f"the {side} connection broke: {exc}")
        return b""


async def _copy(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dialogue: _Dialogue, side: str
) -> None:
    while data := await _read(reader, dialogue, side):
        writer.write(data)
        await writer.drain()


@dataclass
class _Dialogue:
    session: RecordedSession
    split: Dialogue = field(default_factory=lambda: Dialogue(max_line=MAX_LINE))
    answered: float = field(default_factory=time.monotonic)  # when the last reply went to the client
    pauses: dict[Command, float] = field(default_factory=dict)  # how long the client took to send each
    replied: asyncio.Event = field(default_factory=asyncio.Event)  # set each time a reply is relayed
    blind: bool = False  # the server broke the reply grammar: the rest is relayed as it comes, unrecorded
    client_reader: asyncio.StreamReader | None = None

    def owed(self) -> bool:
        """Whether the server still owes replies (unknown, so no, once it broke the reply grammar)."""
        return not self.blind and bool(self.split.waiting)

    def record(self, answer: Answer) -> None:
        """The exchange a relayed reply closes: what it answers, as a trace replays it. AUTH's answers
        to 334 challenges are secrets, whatever they look like: only the mechanism is kept."""
        asked = answer.answers
        extra: dict[str, Any] = {}
        if asked is None:  # a reply nobody asked for (a 421 before closing) answers no command
            sent: str | None = ""
        elif isinstance(asked, Command) and asked.auth is not None:
            sent, extra = f"AUTH {asked.auth}", {"auth": asked.auth}
        elif isinstance(asked, Command):
            sent = asked.text
            extra = {"pause": self.pauses.pop(asked, 0.0), "pipelined": asked.pipelined}
        elif isinstance(asked, AuthAnswer):
            sent, extra = SCRUBBED, {"auth": asked.mechanism}
        elif isinstance(asked, Chunk):
            sent, extra = asked.command.text, {"message": asked.raw}
        elif isinstance(asked, EndOfMessage):
            sent, extra = None, {"message": asked.message}
        else:  # the greeting answers the connection
            sent = None
        exchange = self.session.add(sent, list(answer.reply.lines), **extra)
        exchange.tls = answer.tls


class RecordingProxy:
    """Relays every connection to `upstream` and hands each finished session to `on_session`."""

    def __init__(
        self,
        upstream: tuple[str, int],
        on_session: Callable[[RecordedSession], None],
        server_tls: ssl.SSLContext | None = None,
        client_tls: ssl.SSLContext | None = None,
        upstream_name: str | None = None,
        source_address: str | None = None,
    ) -> None:
        self.upstream = upstream
        self.on_session = on_session
        self.server_tls = server_tls  # towards the client: the proxy presents the lab's certificate
        self.client_tls = client_tls  # towards the upstream server
        self.upstream_name = upstream_name
        self.source_address = source_address
        self._server: asyncio.Server | None = None
        # asyncio's stream server drops its reference to a session's task when the client's connection
        # is lost, and a task that only its awaited future refers to may be garbage-collected while it
        # still closes the upstream connection: the sessions in progress are held here.
        self._sessions: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port)
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        this = asyncio.current_task()
        if this is not None:
            self._sessions.add(this)
            this.add_done_callback(self._sessions.discard)
        peer = client_writer.get_extra_info("peername")
        session = RecordedSession(client=str(peer[0]), server=self.upstream[0], server_port=self.upstream[1])
        session.started = time.time()
        try:
            local = (self.source_address, 0) if self.source_address else None
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream, local_addr=local)
        except OSError as exc:
            session.notes.append(f"the upstream server {self.upstream[0]}:{self.upstream[1]} refused: {exc}")
            client_writer.close()
            self.on_session(session)
            return
        dialogue = _Dialogue(session, client_reader=client_reader)
        pumps = [
            asyncio.create_task(self._from_client(dialogue, client_reader, upstream_writer)),
            asyncio.create_task(self._from_server(dialogue, upstream_reader, client_writer, upstream_writer)),
        ]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            if pumps[0] in done and not pumps[1].done():
                # The client has finished sending (or half-closed): the server still owes replies to
                # what it got, which are relayed and recorded until none is owed, or it goes quiet.
                deadline = time.monotonic() + DRAIN_TIMEOUT
                while dialogue.owed() and not pumps[1].done() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            for pump in done:
                if not pump.cancelled() and (error := pump.exception()) is not None:
                    session.notes.append(f"the session ended on an error: {error}")
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_writer, upstream_writer):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            self.on_session(session)

    async def _from_client(
        self, dialogue: _Dialogue, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter
    ) -> None:
        """Split what the client sends and pass it on a piece at a time. Each command is noted as
        waiting for its reply before it goes on: the reply cannot overtake it."""
        while not dialogue.blind:
            try:
                event = dialogue.split.next_client_event()
            except DialogueError as exc:
                dialogue.session.notes.append(str(exc))
                return
            if event is PAUSED:
                # What the client sends next depends on a reply (to DATA, AUTH or STARTTLS).
                await dialogue.replied.wait()
                dialogue.replied.clear()
            elif isinstance(event, Wait):
                data = await _read(reader, dialogue, "client")
                if not data:
                    return
                dialogue.split.receive_client(data)
            else:
                if isinstance(event, Command):
                    # How long the client took after the last reply: a trace replays a slow client as slow.
                    dialogue.pauses[event] = max(0.0, time.monotonic() - dialogue.answered)
                upstream.write(event.raw)
                await upstream.drain()
        upstream.write(dialogue.split.client_partial())
        await _copy(reader, upstream, dialogue, "client")

    async def _from_server(
        self,
        dialogue: _Dialogue,
        reader: asyncio.StreamReader,
        client: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
    ) -> None:
        while True:
            try:
                answer = dialogue.split.next_server_event()
            except DialogueError as exc:
                # Not SMTP: the proxy stays transparent, and the recording ends there.
                dialogue.session.notes.append(f"{exc}: the rest of the session was relayed, not recorded")
                dialogue.blind = True
                dialogue.replied.set()
                client.write(dialogue.split.server_partial())
                await _copy(reader, client, dialogue, "server")
                return
            if isinstance(answer, Wait):
                data = await _read(reader, dialogue, "server")
                if not data:
                    if partial := dialogue.split.server_partial():
                        client.write(partial)  # a reply cut off when the server closed: passed on
                        dialogue.session.notes.append(f"the server closed inside a reply: {partial[:80]!r}")
                    return
                dialogue.split.receive_server(data)
                continue
            dialogue.record(answer)
            if answer.tls:
                # The client starts its handshake as soon as it has the 220: from now on its bytes must
                # reach the TLS layer, not the plain stream.
                transport = client.transport
                if isinstance(transport, asyncio.Transport):
                    transport.pause_reading()
            client.write(answer.reply.raw)
            await client.drain()
            dialogue.answered = time.monotonic()
            if answer.tls:
                await self._upgrade(dialogue, client, upstream)
            dialogue.replied.set()

    async def _upgrade(
        self, dialogue: _Dialogue, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter
    ) -> None:
        if self.server_tls is None or self.client_tls is None:
            dialogue.session.notes.append("STARTTLS: the proxy has no certificate; the rest is not recorded")
            client.close()
            return
        leftover = dialogue.split.inside_tls()
        if dialogue.client_reader is not None:
            leftover += await unread(dialogue.client_reader)
        if leftover:
            # Sent in clear after STARTTLS, before the handshake: never to be relayed inside TLS
            # (CVE-2011-0411). Dropped, and said in the trace.
            dialogue.session.notes.append(
                f"{len(leftover)} bytes the client sent after STARTTLS were dropped"
            )
        await upstream.start_tls(self.client_tls, server_hostname=self.upstream_name)
        await client.start_tls(self.server_tls)
