"""The recording proxy in front of a server that stops speaking SMTP: it stays transparent (both sides
keep getting each other's bytes), and the recording ends there with a note saying why."""

from __future__ import annotations

import asyncio

from harness.capture.proxy import RecordingProxy
from harness.capture.recorded import RecordedSession

HOST = "127.0.0.1"


async def _not_quite_smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Greets, answers EHLO, then answers like a web server and echoes whatever comes after."""
    writer.write(b"220 mx ready\r\n")
    await reader.readline()
    writer.write(b"250 mx\r\n")
    await reader.readline()
    writer.write(b"HTTP/1.1 400 Bad Request\r\n")
    while line := await reader.readline():
        writer.write(b"echo " + line)
        await writer.drain()
    writer.close()


async def _session() -> tuple[bytes, list[RecordedSession]]:
    upstream = await asyncio.start_server(_not_quite_smtp, HOST, 0)
    sessions: list[RecordedSession] = []
    proxy = RecordingProxy(upstream.sockets[0].getsockname()[:2], sessions.append)
    host, port = await proxy.start(HOST, 0)
    reader, writer = await asyncio.open_connection(host, port)
    received = bytearray()
    async with asyncio.timeout(10):
        received += await reader.readline()
        writer.write(b"EHLO a.example\r\n")
        received += await reader.readline()
        writer.write(b"NOOP\r\n")
        received += await reader.readline()
        writer.write(b"still there?\r\n")
        received += await reader.readline()
        writer.close()
        while not sessions:
            await asyncio.sleep(0.01)
    await proxy.stop()
    upstream.close()
    return bytes(received), sessions


def test_a_server_that_breaks_the_reply_grammar_is_still_relayed_and_the_recording_says_so() -> None:
    received, (session,) = asyncio.run(_session())
    assert received == b"220 mx ready\r\n250 mx\r\nHTTP/1.1 400 Bad Request\r\necho still there?\r\n"
    assert [(e.sent, e.reply) for e in session.exchanges] == [
        (None, ["220 mx ready"]),
        ("EHLO a.example", ["250 mx"]),
    ]
    (note,) = session.notes
    assert note.startswith("the server sent b'HTTP/1.1 400 Bad Request', which is no SMTP reply line")
    assert "relayed, not recorded" in note
