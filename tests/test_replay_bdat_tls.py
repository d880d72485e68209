"""The replay client's bdat (RFC 3030 CHUNKING) and tls_handshake steps, over real loopback sockets.

The reference MTA does not speak BDAT, so the servers here are small asyncio servers that keep the exact
bytes they receive and answer canned replies. The TLS servers sit behind a wire tap (a TCP relay that
keeps every byte the client sends) so that a test can see that what follows the handshake is encrypted.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from harness.corpus.script import Bdat, Expect, ScriptError, parse_script
from harness.run.replay import SessionResult, run_session
from harness.smtp.reply import ReplyMatcher

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
WAIT = 5.0
"""Upper bound for a test server to finish after the session; reached only when something is broken."""


class Server:
    """Base of the test servers: `done` is set when the handler has finished, whatever happened."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.done = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.converse(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError):
                self.received += exc.partial
        finally:
            writer.close()
            self.done.set()

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class Capture(Server):
    """Sends a banner, then keeps everything until the client closes."""

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx.test\r\n")
        while chunk := await reader.read(65536):
            self.received += chunk


class Chunking(Server):
    """Just enough RFC 3030: ``BDAT <n> [LAST]`` then exactly n bytes, answered 250; QUIT answered 221.

    With `hold_replies` the replies wait until the LAST chunk and then go out in one write, so a client
    that waited for a reply between chunks would hang.
    """

    def __init__(self, *, hold_replies: bool = False) -> None:
        super().__init__()
        self.hold_replies = hold_replies
        self.chunks: list[tuple[bytes, bytes]] = []

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx.test ESMTP CHUNKING\r\n")
        held = b""
        while True:
            line = await reader.readuntil(b"\r\n")
            self.received += line
            if line == b"QUIT\r\n":
                writer.write(b"221 2.0.0 bye\r\n")
                return
            match = re.fullmatch(rb"BDAT (\d+)( LAST)?\r\n", line)
            if match is None:
                writer.write(b"500 5.5.1 unrecognised\r\n")
                continue
            chunk = await reader.readexactly(int(match[1]))
            self.received += chunk
            self.chunks.append((line, chunk))
            accepted = ", message accepted" if match[2] else ""
            held += f"250 2.0.0 {len(chunk)} octets{accepted}\r\n".encode()
            if not self.hold_replies or match[2]:
                writer.write(held)
                held = b""


@contextlib.asynccontextmanager
async def serving(handler: StreamHandler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def replay(script: list[dict[str, object]], port: int, base_dir: Path, **kwargs: Any) -> SessionResult:
    return await run_session(
        parse_script(script),
        host="127.0.0.1",
        port=port,
        source_address=None,
        base_dir=base_dir,
        timeout=kwargs.pop("timeout", 5.0),
        **kwargs,
    )


async def replay_against(
    server: Server, script: list[dict[str, object]], base_dir: Path, **kwargs: Any
) -> SessionResult:
    async with serving(server) as port:
        result = await replay(script, port, base_dir, **kwargs)
        await asyncio.wait_for(server.done.wait(), WAIT)
    return result


# --- bdat ----------------------------------------------------------------------------------------


def test_bdat_last_sends_the_command_and_the_crlf_chunk(tmp_path: Path) -> None:
    server = Chunking()
    script: list[dict[str, object]] = [
        {"expect": 220},
        {"bdat": {"inline": "Subject: hi\n\n.dot\nbare cr\rbody", "last": True}},
        {"expect": {"code": 250, "contains": "message accepted"}},
        {"send": "QUIT"},
        {"expect": 221},
    ]
    result = asyncio.run(replay_against(server, script, tmp_path))
    assert result.passed, result.transcript
    # CRLF line ends as for DATA, but no dot-stuffing and no CRLF added after the last line.
    chunk = b"Subject: hi\r\n\r\n.dot\r\nbare cr\r\nbody"
    assert bytes(server.received) == b"BDAT 34 LAST\r\n" + chunk + b"QUIT\r\n"
    assert server.chunks == [(b"BDAT 34 LAST\r\n", chunk)]
    bdat = result.exchanges[1]
    assert bdat.title == "C: BDAT 34 LAST (inline, 34 bytes)"
    assert bdat.sent == b"BDAT 34 LAST\r\n" + chunk
    assert bdat.reply is None  # the reply belongs to the next expect
    assert result.exchanges[2].reply is not None and result.exchanges[2].reply.code == 250
    for line in ("C: BDAT 34 LAST", "C: .dot", "C: bare cr", "C: body [no line end]", "C: QUIT"):
        assert re.search(rf"^\+\d+\.\d{{3}} {re.escape(line)}$", result.transcript, re.MULTILINE), line


def test_pipelined_bdat_chunks_go_out_one_write_each_before_any_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = Chunking(hold_replies=True)
    writes: list[bytes] = []
    ports: list[int] = []
    write = asyncio.StreamWriter.write

    def spy(self: asyncio.StreamWriter, data: bytes | bytearray | memoryview) -> None:
        # Only the client's writer is connected to the server's port.
        if self.get_extra_info("peername")[1] in ports:
            writes.append(bytes(data))
        write(self, data)

    monkeypatch.setattr(asyncio.StreamWriter, "write", spy)
    script: list[dict[str, object]] = [
        {"expect": 220},
        {"bdat": {"inline": "Subject: a\n\n"}},
        {"bdat": {"inline": "body\n", "last": True}},
        {"expect": {"code": 250, "text": "2.0.0 14 octets"}},
        {"expect": {"code": 250, "text": "2.0.0 6 octets, message accepted"}},
        {"send": "QUIT"},
        {"expect": 221},
    ]

    async def main() -> SessionResult:
        async with serving(server) as port:
            ports.append(port)
            result = await replay(script, port, tmp_path, timeout=2.0)
            await asyncio.wait_for(server.done.wait(), WAIT)
        return result

    result = asyncio.run(main())
    assert result.passed, result.transcript
    assert writes == [b"BDAT 14\r\nSubject: a\r\n\r\n", b"BDAT 6 LAST\r\nbody\r\n", b"QUIT\r\n"]
    assert bytes(server.received) == b"".join(writes)
    assert [e.title for e in result.exchanges[1:3]] == [
        "C: BDAT 14 (inline, 14 bytes)",
        "C: BDAT 6 LAST (inline, 6 bytes)",
    ]


def test_bdat_size_override_raw_and_empty_chunks(tmp_path: Path) -> None:
    server = Capture()
    script: list[dict[str, object]] = [
        {"expect": 220},
        {"bdat": {"inline": "hello", "size": 10}},
        {"bdat": {"inline": "a\nb\r", "raw": True, "size": 2, "last": True}},
        {"bdat": {"inline": "", "last": True}},
        {"bdat": {"inline": "x", "size": 0}},
        {"close": True},
    ]
    result = asyncio.run(replay_against(server, script, tmp_path))
    assert result.passed, result.transcript
    assert bytes(server.received) == (
        b"BDAT 10\r\nhello" + b"BDAT 2 LAST\r\na\nb\r" + b"BDAT 0 LAST\r\n" + b"BDAT 0\r\nx"
    )
    assert [e.title for e in result.exchanges[1:5]] == [
        "C: BDAT 10 (inline, 5 bytes)",
        "C: BDAT 2 LAST (inline, raw, 4 bytes)",
        "C: BDAT 0 LAST (inline, 0 bytes)",
        "C: BDAT 0 (inline, 1 bytes)",
    ]
    assert result.exchanges[1].sent == b"BDAT 10\r\nhello"


def test_bdat_files_are_found_like_data_files(tmp_path: Path) -> None:
    messages = tmp_path / "fixtures" / "messages"
    messages.mkdir(parents=True)
    (messages / "head.eml").write_bytes(b"Subject: file\n\n.dot\n")
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "tail.bin").write_bytes(b"bare\rlf\n\xff\r\n")
    server = Chunking()
    script: list[dict[str, object]] = [
        {"expect": 220},
        {"bdat": {"file": "head.eml"}},
        {"bdat": {"file": "tail.bin", "raw": True, "last": True}},
        {"expect": 250},
        {"expect": 250},
        {"send": "QUIT"},
        {"expect": 221},
    ]
    result = asyncio.run(replay_against(server, script, tmp_path / "traces", search_dirs=[messages]))
    assert result.passed, result.transcript
    assert server.chunks == [
        (b"BDAT 23\r\n", b"Subject: file\r\n\r\n.dot\r\n"),
        (b"BDAT 11 LAST\r\n", b"bare\rlf\n\xff\r\n"),
    ]
    assert result.exchanges[1].title == "C: BDAT 23 (head.eml, 23 bytes)"
    assert result.exchanges[2].title == "C: BDAT 11 LAST (tail.bin, raw, 11 bytes)"


def test_a_bdat_step_that_does_not_run_is_listed_with_its_command(tmp_path: Path) -> None:
    script: list[dict[str, object]] = [{"expect": 554}, {"bdat": {"inline": "hello", "last": True}}]
    result = asyncio.run(replay_against(Capture(), script, tmp_path))
    assert not result.passed
    assert "not run: step 2: C: BDAT 5 LAST (inline, 5 bytes)" in result.transcript


def test_missing_bdat_file_raises_before_connecting(tmp_path: Path) -> None:
    steps = [Expect(ReplyMatcher(code=220)), Bdat("nope.eml", None, last=True)]
    with pytest.raises(ScriptError, match=r"step 1: message file 'nope\.eml' not found") as info:
        # Port 1: nothing listens there, and the error must come before any attempt to connect.
        asyncio.run(run_session(steps, host="127.0.0.1", port=1, source_address=None, base_dir=tmp_path))
    assert (info.value.index, info.value.key) == (1, "bdat")


# --- tls_handshake -------------------------------------------------------------------------------

INJECTED = b"STARTTLS\r\nRSET\r\n"


class StartTlsServer(Server):
    """Reads `before_tls` (STARTTLS and the RSET injected after it), answers 220, then does the server
    side of the handshake and answers each command that arrives over TLS.

    `keeps_injected` models the CVE-2011-0411 bug: the RSET received before the handshake is answered
    after it. `plaintext_after_220` is sent in clear right after the 220, as a server that answers the
    RSET before the handshake would.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        before_tls: bytes = INJECTED,
        keeps_injected: bool = False,
        plaintext_after_220: bytes = b"",
    ) -> None:
        super().__init__()
        self.context = context
        self.before_tls = before_tls
        self.keeps_injected = keeps_injected
        self.plaintext_after_220 = plaintext_after_220
        self.over_tls: list[bytes] = []

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx.test ESMTP\r\n")
        self.received += await reader.readexactly(len(self.before_tls))
        writer.write(b"220 2.0.0 Ready to start TLS\r\n" + self.plaintext_after_220)
        await writer.start_tls(self.context)
        if self.keeps_injected:
            writer.write(b"250 2.0.0 reset\r\n")
        while line := await reader.readline():
            self.over_tls.append(line)
            if line == b"QUIT\r\n":
                writer.write(b"221 2.0.0 bye\r\n")
                return
            writer.write(b"250 mx.test over TLS\r\n")


@contextlib.asynccontextmanager
async def tapped(port: int, client_bytes: bytearray) -> AsyncIterator[int]:
    """A TCP relay to `port` that keeps every byte the client sends, exactly as it is on the wire."""

    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, keep: bytearray | None) -> None:
        try:
            while data := await source.read(65536):
                if keep is not None:
                    keep += data
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pump(reader, upstream_writer, client_bytes), pump(upstream_reader, writer, None))

    async with serving(relay) as relay_port:
        yield relay_port


def run_tls(
    server_kind: dict[str, Any], script: list[dict[str, object]]
) -> tuple[SessionResult, StartTlsServer, bytes]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.test").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_bytes = bytearray()

    async def main() -> tuple[SessionResult, StartTlsServer]:
        server = StartTlsServer(server_context, **server_kind)
        async with serving(server) as port, tapped(port, client_bytes) as relay_port:
            result = await replay(
                script, relay_port, Path("."), tls_context=client_context, server_hostname="mx.test"
            )
            await asyncio.wait_for(server.done.wait(), WAIT)
        return result, server

    result, server = asyncio.run(main())
    return result, server, bytes(client_bytes)


INJECTION_SCRIPT: list[dict[str, object]] = [
    {"expect": 220},
    {"send_raw": r"STARTTLS\r\nRSET\r\n"},
    {"expect": 220},
    {"tls_handshake": True},
    {"send": "EHLO client.test"},
    {"expect": {"code": 250, "contains": "over TLS"}},
    {"send": "QUIT"},
    {"expect": 221},
]


def test_tls_handshake_without_starttls_then_everything_is_encrypted() -> None:
    result, server, wire = run_tls({}, INJECTION_SCRIPT)
    assert result.passed, result.transcript
    handshake = result.exchanges[3]
    assert handshake.title == "C: TLS handshake (no STARTTLS sent)"
    assert handshake.sent == b""
    assert "TLS established (TLSv1.3, server mx.test)" in result.transcript
    # No second STARTTLS: the injected bytes are followed at once by a TLS handshake record (0x16).
    assert bytes(server.received) == INJECTED
    assert wire.startswith(INJECTED + b"\x16\x03")
    assert b"EHLO" not in wire and b"QUIT" not in wire
    assert server.over_tls == [b"EHLO client.test\r\n", b"QUIT\r\n"]


def test_a_reply_to_the_injected_command_after_the_handshake_fails_the_trace() -> None:
    result, _, _ = run_tls({"keeps_injected": True}, INJECTION_SCRIPT)
    assert not result.passed
    assert result.exchanges[3].passed  # the handshake itself succeeded
    assert result.exchanges[5].failures == ["expected reply to contain 'over TLS', got '250 2.0.0 reset'"]


@pytest.mark.parametrize(
    ("before_tls", "script"),
    [(INJECTED, INJECTION_SCRIPT[:4]), (b"STARTTLS\r\n", [{"expect": 220}, {"starttls": True}])],
    ids=["tls_handshake", "starttls"],
)
def test_plaintext_left_unread_before_the_handshake_fails_the_step(
    before_tls: bytes, script: list[dict[str, object]]
) -> None:
    # Read after the handshake, these bytes would pass for the server's first reply over TLS.
    result, _, wire = run_tls(
        {"before_tls": before_tls, "plaintext_after_220": b"250 2.0.0 reset\r\n"}, script
    )
    assert not result.passed
    failed = result.exchanges[-1]
    assert failed.failures == [
        r"the server sent '250 2.0.0 reset\r\n' in plaintext that no step has read, before the TLS handshake"
    ]
    assert "S: 250 2.0.0 reset" in result.transcript
    assert "TLS established" not in result.transcript
    assert b"\x16\x03" not in wire  # no handshake was attempted
