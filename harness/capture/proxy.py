"""The recording proxy: `mailflow record --listen ADDR:PORT --upstream HOST:PORT -o FILE` relays live SMTP
sessions transparently and keeps each one as a `RecordedSession` (harness/capture/recorded.py), written as a
trace when the session ends.

Bytes are passed on as they arrive, a command or reply at a time, and parsed on the way: client lines
(DATA bodies up to the final dot, BDAT chunks by their size) and server replies (multi-line ones whole),
paired in order, so pipelined commands get their own replies. STARTTLS is terminated on both sides: once
the server has said 220, the proxy does the TLS handshake with the server as a client and with the
client as a server (a certificate from the lab's CA for the server's name), and records the dialogue
inside. AUTH secrets never reach the recording: AUTH's initial response and the lines that answer its
334 challenges are replaced before anything is kept.

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

from harness.capture.recorded import RecordedSession
from harness.run.replay import unread
from harness.smtp import syntax

SCRUBBED = "<scrubbed>"
MAX_LINE = 1 << 20  # longer lines end the session, said in the trace: no server takes them either
DRAIN_TIMEOUT = 10.0  # how long the server may take to answer what a client sent before it closed


async def _line(reader: asyncio.StreamReader, dialogue: _Dialogue, side: str) -> bytes:
    """One line from `side`, or b"" when it has closed; a line longer than MAX_LINE ends the session
    with a note, instead of an exception in the middle of the relay."""
    try:
        return await reader.readline()
    except ValueError:
        dialogue.session.notes.append(f"the {side} sent a line longer than {MAX_LINE} bytes")
        return b""
    except ConnectionError as exc:
        dialogue.session.notes.append(f"the {side} connection broke: {exc}")
        return b""


@dataclass
class _Pending:
    """A client command waiting for its reply."""

    sent: str | None
    message: bytes | None = None
    auth: str | None = None
    tls: bool = False
    data: bool = False
    pause: float = 0.0
    pipelined: bool = False


@dataclass
class _Dialogue:
    session: RecordedSession
    pending: asyncio.Queue[_Pending] = field(default_factory=asyncio.Queue)
    in_auth: str | None = None  # the mechanism while the server's 334 challenges are being answered
    answered: float = field(default_factory=time.monotonic)  # when the last reply went to the client
    last_code: str = ""  # of the last reply the server sent
    client_reader: asyncio.StreamReader | None = None
    # Set by the server pump when it has the reply to STARTTLS (did TLS start?) or DATA (354?): the
    # client pump waits for it, since what the client sends next depends on that reply.
    decided: asyncio.Future[bool] | None = None


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
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_LINE)
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
            upstream_reader, upstream_writer = await asyncio.open_connection(
                *self.upstream, local_addr=local, limit=MAX_LINE
            )
        except OSError as exc:
            session.notes.append(f"the upstream server {self.upstream[0]}:{self.upstream[1]} refused: {exc}")
            client_writer.close()
            self.on_session(session)
            return
        dialogue = _Dialogue(session, client_reader=client_reader)
        await dialogue.pending.put(_Pending(None))  # the greeting answers the connection
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
                while not dialogue.pending.empty() and not pumps[1].done() and time.monotonic() < deadline:
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
        # Each command is noted as waiting for its reply before it goes on: the reply cannot overtake it.
        while True:
            line = await _line(reader, dialogue, "client")
            if not line:
                return
            # How long the client took after the last reply: a trace replays a slow client as slow.
            pause = max(0.0, time.monotonic() - dialogue.answered)
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = text.split(" ", 1)[0].upper()
            challenged = dialogue.in_auth is not None and dialogue.last_code == "334"
            decide = verb in ("DATA", "STARTTLS") and not challenged
            if decide:
                dialogue.decided = asyncio.get_running_loop().create_future()
            # A command sent while earlier replies are still owed was pipelined (RFC 2920).
            pipelined = not dialogue.pending.empty()
            if challenged:
                # An answer to the server's 334 challenge: a secret, whatever it looks like.
                dialogue.pending.put_nowait(_Pending(SCRUBBED, auth=dialogue.in_auth))
            elif chunk_size := syntax.bdat(text):
                chunk = await reader.readexactly(chunk_size[0])
                dialogue.pending.put_nowait(_Pending(text, message=chunk))
                line += chunk
            elif verb == "AUTH":
                # Only a mechanism's name is kept: anything else on the line (an initial response, or a
                # secret where the name should be) is never recorded.
                dialogue.in_auth = syntax.auth_mechanism(text)
                dialogue.pending.put_nowait(_Pending(f"AUTH {dialogue.in_auth}", auth=dialogue.in_auth))
            else:
                dialogue.pending.put_nowait(
                    _Pending(
                        text, data=verb == "DATA", tls=verb == "STARTTLS", pause=pause, pipelined=pipelined
                    )
                )
            upstream.write(line)
            await upstream.drain()
            if decide and dialogue.decided is not None and await dialogue.decided and verb == "DATA":
                await self._data(dialogue, reader, upstream)

    async def _data(
        self, dialogue: _Dialogue, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter
    ) -> None:
        """The message after a 354, up to the line with the final dot; kept with the final reply."""
        body = bytearray()
        while True:
            line = await _line(reader, dialogue, "client")
            if not line:
                return
            # Only <CRLF>.<CRLF> ends the message (RFC 5321 4.1.1.4): a bare LF around the dot is
            # message content to a strict server, and recording it otherwise would misplace every
            # reply after it (SMTP smuggling).
            end = line == b".\r\n" and (not body or body.endswith(b"\r\n"))
            if end:
                dialogue.pending.put_nowait(_Pending(None, message=bytes(body)))
            else:
                body += line
            upstream.write(line)
            await upstream.drain()
            if end:
                return

    async def _from_server(
        self,
        dialogue: _Dialogue,
        reader: asyncio.StreamReader,
        client: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
    ) -> None:
        while True:
            raw = bytearray()
            lines: list[str] = []
            while True:
                line = await _line(reader, dialogue, "server")
                if not line:
                    if raw:
                        client.write(bytes(raw))  # a reply cut off when the server closed: passed on
                        dialogue.session.notes.append(f"the server closed inside a reply: {raw[:80]!r}")
                    return
                raw += line
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                lines.append(text)
                if len(text) < 4 or text[3] != "-":
                    break
            # A reply nobody asked for (a 421 before closing) answers no command.
            pending = dialogue.pending.get_nowait() if not dialogue.pending.empty() else _Pending("")
            exchange = dialogue.session.add(
                pending.sent,
                lines,
                message=pending.message,
                auth=pending.auth,
                pause=pending.pause,
                pipelined=pending.pipelined,
            )
            dialogue.last_code = lines[-1][:3]
            code = lines[-1][:3]
            if pending.auth is not None and code != "334":
                dialogue.in_auth = None
            if pending.tls and code == "220":
                # The client starts its handshake as soon as it has the 220: from now on its bytes must
                # reach the TLS layer, not the plain stream.
                transport = client.transport
                if isinstance(transport, asyncio.Transport):
                    transport.pause_reading()
            client.write(bytes(raw))
            await client.drain()
            dialogue.answered = time.monotonic()
            if pending.tls:
                exchange.tls = code == "220"
                await self._upgrade(dialogue, code == "220", client, upstream)
            elif pending.data and dialogue.decided is not None:
                dialogue.decided.set_result(code == "354")

    async def _upgrade(
        self, dialogue: _Dialogue, agreed: bool, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter
    ) -> None:
        assert dialogue.decided is not None
        if agreed and (self.server_tls is None or self.client_tls is None):
            dialogue.session.notes.append("STARTTLS: the proxy has no certificate; the rest is not recorded")
            agreed = False
            client.close()
        if (
            agreed
            and dialogue.client_reader is not None
            and (leftover := await unread(dialogue.client_reader))
        ):
            # Sent in clear after STARTTLS, before the handshake: never to be relayed inside TLS
            # (CVE-2011-0411). Dropped, and said in the trace.
            dialogue.session.notes.append(
                f"{len(leftover)} bytes the client sent after STARTTLS were dropped"
            )
        if agreed:
            assert self.client_tls is not None and self.server_tls is not None
            await upstream.start_tls(self.client_tls, server_hostname=self.upstream_name)
            await client.start_tls(self.server_tls)
        dialogue.decided.set_result(agreed)
