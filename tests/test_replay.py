"""Tests for the replay client (harness.run.replay) and its building blocks (harness.smtp.reply,
harness.corpus.script).

Sessions run over real loopback sockets: against aiosmtpd for realistic SMTP behaviour, and against
tiny hand-written asyncio servers where we need to see the exact bytes or misbehave on purpose.
Server and client share one event loop per test, driven by asyncio.run.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from harness.corpus.script import (
    Bdat,
    Close,
    Data,
    Expect,
    ExpectClose,
    Pipeline,
    ScriptError,
    Send,
    SendRaw,
    TlsHandshake,
    Wait,
    crlf_line_ends,
    dot_stuff,
    parse_script,
    parse_step,
    unescape,
)
from harness.run.replay import ConnectError, SessionResult, run_session
from harness.smtp.reply import (
    ConnectionClosed,
    MalformedReply,
    Reply,
    ReplyMatcher,
    ReplyTimeout,
    read_reply,
    show_bytes,
)

T = TypeVar("T")
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# --- servers -------------------------------------------------------------------------------------


class Recorder:
    """aiosmtpd handler that rejects nobody@ and keeps every accepted message."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.peers: list[str] = []

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        peer: Any = session.peer  # typed as str by aiosmtpd, but a (host, port) tuple for TCP
        self.peers.append(peer[0])
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 Queued"


@contextlib.asynccontextmanager
async def smtpd(handler: Recorder) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="mx.test", loop=loop), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@contextlib.asynccontextmanager
async def raw_server(handler: StreamHandler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def replay(
    script: list[dict[str, object]],
    port: int,
    base_dir: Path,
    *,
    timeout: float = 5.0,
    **kwargs: Any,
) -> SessionResult:
    return await run_session(
        parse_script(script),
        host="127.0.0.1",
        port=port,
        source_address=kwargs.pop("source_address", None),
        base_dir=base_dir,
        timeout=timeout,
        **kwargs,
    )


# --- sessions against aiosmtpd -------------------------------------------------------------------

INLINE_MESSAGE = "Subject: dots\n\n.leading dot\n..two dots\r\nbare cr\rlast line"


def test_full_session_passes_and_delivers_unstuffed_content(tmp_path: Path) -> None:
    recorder = Recorder()
    script: list[dict[str, object]] = [
        {"expect": 220},
        {"send": "EHLO client.test"},
        {"expect": {"code": 250, "contains": "8BITMIME"}},
        {"send": "MAIL FROM:<a@example.com>"},
        {"expect": "250"},
        {"send": "RCPT TO:<b@example.org>"},
        {"expect": {"code": 250, "enhanced": "2.1.5"}},
        {"data": {"inline": INLINE_MESSAGE}},
        {"expect": "2xx"},
        {"send": "QUIT"},
        {"expect": 221},
    ]

    async def main() -> SessionResult:
        async with smtpd(recorder) as port:
            return await replay(script, port, tmp_path)

    result = run(main())
    assert result.passed, result.transcript
    assert [e.passed for e in result.exchanges] == [True] * len(script)
    assert recorder.messages == [
        (
            "a@example.com",
            ["b@example.org"],
            b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\nbare cr\r\nlast line\r\n",
        )
    ]
    data = result.exchanges[7]
    assert data.title == f"C: DATA (inline, {len(INLINE_MESSAGE)} bytes)"
    assert data.reply is not None and data.reply.code == 354
    assert data.sent == (
        b"DATA\r\nSubject: dots\r\n\r\n..leading dot\r\n...two dots\r\nbare cr\r\nlast line\r\n.\r\n"
    )
    assert "C: ...two dots" in result.transcript
    assert re.search(r"^\+\d+\.\d{3} C: EHLO client\.test$", result.transcript, re.MULTILINE)
    assert re.search(r"^\+\d+\.\d{3} S: 221 Bye$", result.transcript, re.MULTILINE)


def test_multiline_ehlo_reply_is_parsed(tmp_path: Path) -> None:
    script: list[dict[str, object]] = [
        {"expect": 220},
        {"send": "EHLO client.test"},
        {"expect": {"prefix": "250-mx.test", "regex": r"^250[ -]8BITMIME$"}},
    ]

    async def main() -> SessionResult:
        async with smtpd(Recorder()) as port:
            return await replay(script, port, tmp_path)

    result = run(main())
    assert result.passed, result.transcript
    reply = result.exchanges[2].reply
    assert reply is not None
    assert reply.code == 250
    assert len(reply.lines) >= 3
    assert reply.first == "250-mx.test"
    assert reply.lines[-1].startswith("250 ")
    assert all(line.startswith("250-") for line in reply.lines[:-1])
    assert reply.raw == "".join(line + "\r\n" for line in reply.lines).encode()
    assert "8BITMIME" in reply.text.split("\n")


def test_wrong_expectation_fails_readably_and_stops(tmp_path: Path) -> None:
    recorder = Recorder()
    script: list[dict[str, object]] = [
        {"expect": 220},
        {"send": "HELO client.test"},
        {"expect": 250},
        {"send": "MAIL FROM:<a@example.com>"},
        {"expect": 250},
        {"send": "RCPT TO:<nobody@example.org>"},
        {"expect": 250},
        {"data": {"inline": "Subject: never\n\nsent\n"}},
        {"expect": 250},
    ]

    async def main() -> SessionResult:
        async with smtpd(recorder) as port:
            return await replay(script, port, tmp_path)

    result = run(main())
    assert not result.passed
    assert len(result.exchanges) == 7
    failed = result.exchanges[6]
    assert failed.title == "S: expect 250"
    assert failed.failures == ["expected code 250, got 550"]
    assert failed.error is None
    assert failed.reply == Reply(550, ("550 5.1.1 No such user",))
    assert "!! step 7 failed: expected code 250, got 550" in result.transcript
    assert "not run: step 8: C: DATA (inline, 21 bytes)" in result.transcript
    assert "not run: step 9: S: expect 250" in result.transcript
    assert "C: DATA" not in result.transcript.replace("not run: step 8: C: DATA", "")
    assert recorder.messages == []
    assert result.closed_by == "none"


def test_data_step_requires_354(tmp_path: Path) -> None:
    script: list[dict[str, object]] = [
        {"expect": 220},
        {"send": "HELO client.test"},
        {"expect": 250},
        {"send": "MAIL FROM:<a@example.com>"},
        {"expect": 250},
        {"data": {"inline": "Subject: x\n\nno recipients\n"}},
        {"expect": 250},
    ]

    async def main() -> SessionResult:
        async with smtpd(Recorder()) as port:
            return await replay(script, port, tmp_path)

    result = run(main())
    assert not result.passed
    data = result.exchanges[-1]
    assert data.index == 5
    assert data.failures == ["expected code 354, got 503"]
    assert data.sent == b"DATA\r\n"
    assert "no recipients" not in result.transcript.split("!! step 6")[0]


def test_pipeline_against_aiosmtpd(tmp_path: Path) -> None:
    recorder = Recorder()
    script: list[dict[str, object]] = [
        {"expect": 220},
        {"send": "EHLO client.test"},
        {"expect": 250},
        {"pipeline": ["MAIL FROM:<a@example.com>", "RCPT TO:<b@example.org>", "DATA"]},
        {"expect": 250},
        {"expect": {"code": 250, "enhanced": "2.1.5"}},
        {"expect": 354},
        {"send_raw": r"Subject: piped\r\n\r\nbody\r\n.\r\n"},
        {"expect": {"code": 250, "text": "2.0.0 Queued", "lines": 1}},
        {"send": "QUIT"},
        {"expect": 221},
        {"expect_close": True},
    ]

    async def main() -> SessionResult:
        async with smtpd(recorder) as port:
            return await replay(script, port, tmp_path)

    result = run(main())
    assert result.passed, result.transcript
    assert result.exchanges[3].sent == b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
    assert result.exchanges[3].title == (
        "C: [pipeline] MAIL FROM:<a@example.com> | RCPT TO:<b@example.org> | DATA"
    )
    assert recorder.messages == [("a@example.com", ["b@example.org"], b"Subject: piped\r\n\r\nbody\r\n")]
    assert result.closed_by == "server"


def test_pipelined_replies_arriving_in_one_segment(tmp_path: Path) -> None:
    received = bytearray()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw\r\n")
        received.extend(await reader.readuntil(b"DATA\r\n"))
        writer.write(b"250 2.1.0 a\r\n250-b1\r\n250 2.1.5 b2\r\n354 go\r\n")
        await reader.read()
        writer.close()

    script: list[dict[str, object]] = [
        {"expect": 220},
        {"pipeline": ["MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA"]},
        {"expect": {"enhanced": "2.1.0"}},
        {"expect": {"code": 250, "lines": 2, "text": "b1\n2.1.5 b2"}},
        {"expect": 354},
        {"close": True},
    ]

    async def main() -> SessionResult:
        async with raw_server(server) as port:
            return await replay(script, port, tmp_path)

    result = run(main())
    assert result.passed, result.transcript
    assert bytes(received) == b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
    assert result.closed_by == "client"


def test_expect_close_after_quit(tmp_path: Path) -> None:
    script: list[dict[str, object]] = [
        {"expect": 220},
        {"send": "QUIT"},
        {"expect": "221"},
        {"expect_close": True},
    ]

    async def main() -> SessionResult:
        async with smtpd(Recorder()) as port:
            return await replay(script, port, tmp_path)

    result = run(main())
    assert result.passed, result.transcript
    assert result.closed_by == "server"
    assert result.exchanges[3].title == "S: expect close"
    assert "connection closed by the server" in result.transcript


def test_source_address_is_bound(tmp_path: Path) -> None:
    recorder = Recorder()
    script: list[dict[str, object]] = [{"expect": 220}, {"send": "EHLO client.test"}, {"expect": 250}]

    async def main() -> SessionResult:
        async with smtpd(recorder) as port:
            return await replay(script, port, tmp_path, source_address="127.0.0.2")

    result = run(main())
    assert result.passed, result.transcript
    assert recorder.peers == ["127.0.0.2"]
    assert result.local_address[0] == "127.0.0.2"
    assert result.transcript.startswith("+0.000 -- connected from 127.0.0.2:")


def test_data_from_file_in_search_dir(tmp_path: Path) -> None:
    messages = tmp_path / "fixtures" / "messages"
    messages.mkdir(parents=True)
    (messages / "plain.eml").write_bytes(b"Subject: file\n\n.dot\nend\n")
    recorder = Recorder()
    script: list[dict[str, object]] = [
        {"expect": 220},
        {"send": "HELO c"},
        {"expect": 250},
        {"send": "MAIL FROM:<a@b.test>"},
        {"expect": 250},
        {"send": "RCPT TO:<c@d.test>"},
        {"expect": 250},
        {"data": "plain.eml"},
        {"expect": 250},
    ]

    async def main() -> SessionResult:
        async with smtpd(recorder) as port:
            return await replay(script, port, tmp_path / "traces", search_dirs=[messages])

    result = run(main())
    assert result.passed, result.transcript
    assert result.exchanges[7].title == "C: DATA (plain.eml, 24 bytes)"
    assert recorder.messages[0][2] == b"Subject: file\r\n\r\n.dot\r\nend\r\n"


# --- sessions against raw servers ----------------------------------------------------------------


def capture_all(received: bytearray) -> StreamHandler:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw\r\n")
        while chunk := await reader.read(65536):
            received.extend(chunk)
        writer.close()

    return server


def test_send_raw_reaches_server_byte_exact(tmp_path: Path) -> None:
    received = bytearray()
    script: list[dict[str, object]] = [
        {"expect": 220},
        {"send_raw": r"MAIL FROM:<a@b>\x00\xff\\\t\n"},
        {"send_raw": "Ünï\\r"},
        {"send": "RCPT TO:<ü@b>"},
        {"close": True},
    ]

    async def main() -> SessionResult:
        async with raw_server(capture_all(received)) as port:
            result = await replay(script, port, tmp_path)
            await asyncio.sleep(0.05)
            return result

    result = run(main())
    assert result.passed, result.transcript
    expected = b"MAIL FROM:<a@b>\x00\xff\\\t\n" + "Ünï".encode() + b"\r" + "RCPT TO:<ü@b>\r\n".encode()
    assert bytes(received) == expected
    assert result.closed_by == "client"
    assert result.exchanges[1].sent == b"MAIL FROM:<a@b>\x00\xff\\\t\n"
    assert result.exchanges[1].title == r"C: [raw] MAIL FROM:<a@b>\x00\xff\\\t\n"
    assert r"C: MAIL FROM:<a@b>\x00\xff\\\t\n" in result.transcript
    assert r"C: \xc3\x9cn\xc3\xaf\r" in result.transcript


def test_raw_data_file_sent_byte_exact(tmp_path: Path) -> None:
    payload = b"Subject: raw\n\n.not stuffed\nbare\rcr\r\n.\r\n"
    (tmp_path / "raw.eml").write_bytes(payload)
    received = bytearray()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw\r\n")
        received.extend(await reader.readuntil(b"DATA\r\n"))
        writer.write(b"354 go ahead\r\n")
        received.extend(await reader.readuntil(b"\r\n.\r\n"))
        writer.write(b"250 2.0.0 queued\r\n")
        received.extend(await reader.read())
        writer.close()

    script: list[dict[str, object]] = [
        {"expect": 220},
        {"data": {"file": "raw.eml", "raw": True}},
        {"expect": {"code": 250, "enhanced": "2.0.0"}},
        {"close": True},
    ]

    async def main() -> SessionResult:
        async with raw_server(server) as port:
            result = await replay(script, port, tmp_path)
            await asyncio.sleep(0.05)
            return result

    result = run(main())
    assert result.passed, result.transcript
    assert bytes(received) == b"DATA\r\n" + payload
    assert result.exchanges[1].title == f"C: DATA (raw.eml, raw, {len(payload)} bytes)"
    assert result.exchanges[1].sent == b"DATA\r\n" + payload


def test_reply_timeout_names_step_and_shows_what_arrived(tmp_path: Path) -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220-first line\r\n220 par")
        await reader.read()
        writer.close()

    script: list[dict[str, object]] = [{"expect": 220}, {"send": "QUIT"}]

    async def main() -> SessionResult:
        async with raw_server(server) as port:
            return await replay(script, port, tmp_path, timeout=0.3)

    result = run(main())
    assert not result.passed
    (exchange,) = result.exchanges
    assert exchange.error is not None
    assert exchange.failures == [exchange.error]
    assert exchange.error == (
        r"timed out after 0.3 s waiting for a reply (220); received '220-first line\r\n220 par'"
    )
    assert f"!! step 1 failed: {exchange.error}" in result.transcript
    assert "S: 220-first line\n" in result.transcript
    assert "S: 220 par [no line end]" in result.transcript
    assert "not run: step 2: C: QUIT" in result.transcript


def test_malformed_reply_from_raw_server(tmp_path: Path) -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello there\r\n")
        await reader.read()
        writer.close()

    async def main() -> SessionResult:
        async with raw_server(server) as port:
            return await replay([{"expect": 220}], port, tmp_path)

    result = run(main())
    assert not result.passed
    assert result.exchanges[0].error == "malformed reply line: 'hello there'"
    assert "S: hello there" in result.transcript


def test_server_closing_mid_script(tmp_path: Path) -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hi\r\n421-going\r\n")
        await writer.drain()
        writer.close()

    async def main() -> SessionResult:
        async with raw_server(server) as port:
            return await replay([{"expect": 220}, {"expect": 250}], port, tmp_path)

    result = run(main())
    assert not result.passed
    assert result.exchanges[1].error == (
        "connection closed by the server in the middle of a reply (waiting for a reply (250)); "
        r"received '421-going\r\n'"
    )
    assert result.closed_by == "server"


def test_expect_close_fails_when_server_talks(tmp_path: Path) -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hi\r\n")
        await reader.readuntil(b"QUIT\r\n")
        writer.write(b"250 not closing\r\n")
        await reader.read()
        writer.close()

    script: list[dict[str, object]] = [{"expect": 220}, {"send": "QUIT"}, {"expect_close": True}]

    async def main() -> SessionResult:
        async with raw_server(server) as port:
            return await replay(script, port, tmp_path, timeout=1.0)

    result = run(main())
    assert not result.passed
    assert result.exchanges[2].failures == [
        r"expected the server to close the connection, but it sent '250 not closing\r\n'"
    ]
    assert "S: 250 not closing" in result.transcript


def test_expect_close_times_out_when_server_stays_open(tmp_path: Path) -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hi\r\n")
        await reader.read()
        writer.close()

    async def main() -> SessionResult:
        async with raw_server(server) as port:
            return await replay([{"expect": 220}, {"expect_close": True}], port, tmp_path, timeout=0.2)

    result = run(main())
    assert result.exchanges[1].failures == [
        "expected the server to close the connection within 0.2 s, but it stayed open"
    ]


def test_wait_step(tmp_path: Path) -> None:
    async def main() -> SessionResult:
        async with raw_server(capture_all(bytearray())) as port:
            return await replay([{"expect": 220}, {"wait": 0.1}], port, tmp_path)

    result = run(main())
    assert result.passed
    assert result.exchanges[1].title == "wait 0.1 s"
    assert "-- wait 0.1 s" in result.transcript


def test_connect_error_names_target() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens on it once closed
    with pytest.raises(ConnectError, match=rf"127\.0\.0\.1:{port} from 127\.0\.0\.1"):
        run(
            run_session(
                [Expect(ReplyMatcher(code=220))],
                host="127.0.0.1",
                port=port,
                source_address="127.0.0.1",
                base_dir=Path("."),
            )
        )


def test_missing_message_file_raises_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match=r"step 1: message file 'nope\.eml' not found") as info:
        run(
            run_session(
                [Expect(ReplyMatcher(code=220)), Data("nope.eml", None, False)],
                host="127.0.0.1",
                port=1,  # never reached
                source_address=None,
                base_dir=tmp_path,
            )
        )
    assert info.value.index == 1


# --- read_reply ----------------------------------------------------------------------------------


def read_from(data: bytes, *, eof: bool = True, count: int = 1, timeout: float = 1.0) -> list[Reply]:
    async def main() -> list[Reply]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        return [await read_reply(reader, timeout) for _ in range(count)]

    return run(main())


def test_read_reply_leaves_next_reply_in_the_stream() -> None:
    first, second = read_from(b"250-mx.test\r\n250 2.1.0 ok\r\n354 go\r\n", count=2)
    assert first == Reply(250, ("250-mx.test", "250 2.1.0 ok"))
    assert first.raw == b"250-mx.test\r\n250 2.1.0 ok\r\n"
    assert first.text == "mx.test\n2.1.0 ok"
    assert first.enhanced is None  # only the first line's text counts
    assert second.code == 354


def test_reply_properties() -> None:
    reply = Reply(550, ("550 5.1.1 <x@y>: no such user",))
    assert reply.first == "550 5.1.1 <x@y>: no such user"
    assert reply.enhanced == "5.1.1"
    assert reply.text == "5.1.1 <x@y>: no such user"
    assert Reply(250, ("250 2.1.0ok",)).enhanced is None
    assert Reply(250, ("250 3.1.0 x",)).enhanced is None


def test_read_reply_accepts_bare_lf_and_code_only_line() -> None:
    (reply,) = read_from(b"250-a\n250\r\n")
    assert reply.lines == ("250-a", "250")
    assert reply.text == "a\n"


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"250-a\r\n251 b\r\n", MalformedReply, "reply code changed from 250 to 251"),
        (b"hello\r\n", MalformedReply, "malformed reply line: 'hello'"),
        (b"25 x\r\n", MalformedReply, "malformed reply line: '25 x'"),
        (b"250x\r\n", MalformedReply, "malformed reply line: '250x'"),
        (b"250 " + b"x" * 5000 + b"\r\n", MalformedReply, "longer than 4096 bytes"),
        (b"", ConnectionClosed, "before a reply"),
        (b"250-a\r\n25", ConnectionClosed, "in the middle of a reply"),
    ],
)
def test_read_reply_errors(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        read_from(data)


def test_read_reply_line_length_limit_is_4096() -> None:
    (reply,) = read_from(b"250 " + b"x" * 4092 + b"\r\n")
    assert len(reply.first) == 4096
    with pytest.raises(MalformedReply):
        read_from(b"250 " + b"x" * 4093 + b"\r\n")


def test_read_reply_timeout_keeps_partial_bytes() -> None:
    with pytest.raises(ReplyTimeout) as info:
        read_from(b"250-a\r\n250 b", eof=False, timeout=0.05)
    assert info.value.received == b"250-a\r\n250 b"


def test_closed_error_keeps_partial_bytes() -> None:
    with pytest.raises(ConnectionClosed) as info:
        read_from(b"250-a\r\n25")
    assert info.value.received == b"250-a\r\n25"


def test_show_bytes() -> None:
    assert show_bytes(b"a\\b\r\n\t\x00\xff~") == r"a\\b\r\n\t\x00\xff~"


# --- ReplyMatcher --------------------------------------------------------------------------------

OK = Reply(250, ("250-mx.test greets you", "250 2.1.0 Sender ok"))
REJECT = Reply(550, ("550 5.1.1 No such user",))


@pytest.mark.parametrize(
    ("spec", "reply", "problems"),
    [
        (250, OK, []),
        (250, REJECT, ["expected code 250, got 550"]),
        ("2xx", OK, []),
        ("5XX", REJECT, []),
        ("4xx", REJECT, ["expected class 4xx, got 550"]),
        ("250-mx", OK, []),
        ("250 2.1.0", OK, ["expected first line to start with '250 2.1.0', got '250-mx.test greets you'"]),
        ("550 5.1.1", REJECT, []),
        ({"code": 550, "enhanced": "5.1.1"}, REJECT, []),
        ({"enhanced": "2.1.0"}, REJECT, ["expected enhanced code 2.1.0, got 5.1.1"]),
        ({"enhanced": "2.1.0"}, OK, ["expected enhanced code 2.1.0, got none"]),
        ({"class": "5xx", "text": "5.1.1 No such user"}, REJECT, []),
        ({"text": "nope"}, REJECT, ["expected text 'nope', got '5.1.1 No such user'"]),
        ({"prefix": "550 5."}, REJECT, []),
        ({"regex": r"^250 2\.1\.0"}, OK, []),
        (
            {"regex": r"^mx"},
            OK,
            ["expected reply to match /^mx/, got '250-mx.test greets you\\n250 2.1.0 Sender ok'"],
        ),
        ({"contains": "greets"}, OK, []),
        (
            {"contains": "Greets"},
            REJECT,
            ["expected reply to contain 'Greets', got '550 5.1.1 No such user'"],
        ),
        ({"lines": 2}, OK, []),
        ({"lines": 2}, REJECT, ["expected 2 lines, got 1"]),
        ({"code": 250, "lines": 2}, REJECT, ["expected code 250, got 550", "expected 2 lines, got 1"]),
    ],
)
def test_matcher_check(spec: object, reply: Reply, problems: list[str]) -> None:
    assert ReplyMatcher.parse(spec).check(reply) == problems


@pytest.mark.parametrize(
    ("spec", "description"),
    [
        (250, "250"),
        ("2xx", "2xx"),
        ("250 2.1.0", "prefix '250 2.1.0'"),
        ({"code": 250, "enhanced": "2.1.0"}, "250 enhanced 2.1.0"),
        ({"class": "5xx", "contains": "user", "lines": 1}, "5xx contains 'user' 1 line"),
        ({"regex": "a+", "text": "t"}, "text 't' regex /a+/"),
    ],
)
def test_matcher_describe(spec: object, description: str) -> None:
    assert ReplyMatcher.parse(spec).describe() == description


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (True, "not True"),
        (99, "from 100 to 599"),
        (2.5, "not float"),
        ("", "empty"),
        (None, "not NoneType"),
        ({}, "at least one key"),
        ({"cod": 250}, "unknown expectation key(s) cod"),
        ({"code": "250"}, "reply code must be an integer"),
        ({"class": "2yy"}, "class must be one of"),
        ({"code": 250, "class": "5xx"}, "can never be in class 5xx"),
        ({"enhanced": "2.1"}, "enhanced must be a status code"),
        ({"regex": "("}, "does not compile"),
        ({"lines": 0}, "lines must be a positive integer"),
        ({"contains": ""}, "contains must be a non-empty string"),
    ],
)
def test_matcher_parse_errors(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ReplyMatcher.parse(spec)


# --- script parsing and byte helpers -------------------------------------------------------------


def test_parse_script_all_step_kinds() -> None:
    steps = parse_script(
        [
            {"send": "EHLO x"},
            {"send_raw": r"DATA\r\n"},
            {"pipeline": ["MAIL FROM:<a@b>", "RCPT TO:<c@d>"]},
            {"data": "messages/plain.eml"},
            {"data": {"file": "m.eml", "raw": True}},
            {"data": {"inline": "Subject: hi\n\nbody\n"}},
            {"bdat": {"inline": "Subject: hi\n\n", "size": 0}},
            {"bdat": {"file": "m.eml", "last": True, "raw": True}},
            {"tls_handshake": True},
            {"expect": {"code": 250, "enhanced": "2.1.0"}},
            {"wait": 1},
            {"expect_close": True},
        ]
    )
    assert steps == [
        Send("EHLO x"),
        SendRaw(b"DATA\r\n"),
        Pipeline(("MAIL FROM:<a@b>", "RCPT TO:<c@d>")),
        Data("messages/plain.eml", None, False),
        Data("m.eml", None, True),
        Data(None, "Subject: hi\n\nbody\n", False),
        Bdat(None, "Subject: hi\n\n", raw=False, last=False, size=0),
        Bdat("m.eml", None, raw=True, last=True, size=None),
        TlsHandshake(),
        Expect(ReplyMatcher(code=250, enhanced="2.1.0")),
        Wait(1.0),
        ExpectClose(),
    ]
    assert parse_step({"close": True}) == Close()


@pytest.mark.parametrize(
    ("script", "index", "message"),
    [
        ([{"send": "EHLO x"}, {}], 1, "exactly one of"),
        ([{"send": "a", "expect": 250}], 0, "found send, expect"),
        ([{"sned": "EHLO"}], 0, "unknown step"),
        ([{"send": "EHLO x\r\nQUIT"}], 0, "use send_raw"),
        ([{"send": 5}], 0, "must be a string"),
        ([{"send_raw": r"bad \q"}], 0, r"unknown escape \q"),
        ([{"send_raw": r"bad \x4"}], 0, "two hex digits"),
        ([{"pipeline": []}], 0, "non-empty list"),
        ([{"data": {"file": "a", "inline": "b"}}], 0, "exactly one of file or inline"),
        ([{"data": {"inline": "b", "raw": "yes"}}], 0, "raw must be true or false"),
        ([{"data": {"path": "a"}}], 0, "unknown key(s) path"),
        ([{"expect": 250}, {"expect": {"code": 999}}], 1, "expect: reply code must be"),
        ([{"wait": -1}], 0, "seconds >= 0"),
        ([{"close": False}], 0, "must be true"),
        ([{"bdat": {"inline": "x", "size": -1}}], 0, "bdat: size must be an integer >= 0, not -1"),
        ([{"bdat": {"inline": "x", "size": True}}], 0, "size must be an integer >= 0, not True"),
        ([{"bdat": {"inline": "x", "size": 1.5}}], 0, "size must be an integer >= 0, not 1.5"),
        ([{"bdat": {"inline": "x", "size": None}}], 0, "size must be an integer >= 0, not None"),
        ([{"bdat": {"inline": "x", "file": "m.eml"}}], 0, "bdat: needs exactly one of file or inline"),
        ([{"bdat": {"last": True}}], 0, "bdat: needs exactly one of file or inline"),
        ([{"bdat": {"inline": "x", "last": "yes"}}], 0, "last must be true or false, not 'yes'"),
        ([{"bdat": {"inline": "x", "raw": 1}}], 0, "raw must be true or false"),
        ([{"bdat": {"file": ""}}], 0, "file must be a non-empty path"),
        ([{"bdat": {"inline": "x", "lats": True}}], 0, "unknown key(s) lats; allowed: file, inline, raw"),
        ([{"bdat": "m.eml"}], 0, "bdat: must be a mapping with file or inline"),
        ([{"tls_handshake": False}], 0, "tls_handshake: must be true, not False"),
        ([{"tls_handshake": "yes"}], 0, "tls_handshake: must be true, not 'yes'"),
        ([{"expect_close": True}, {"expect": 250}], 1, "no step can follow"),
        (["send"], 0, "must be a mapping"),
    ],
)
def test_parse_script_errors(script: list[Any], index: int, message: str) -> None:
    with pytest.raises(ScriptError, match=re.escape(message)) as info:
        parse_script(script)
    assert info.value.index == index
    assert str(info.value).startswith(f"step {index}: ")
    if info.value.key is not None:
        assert info.value.key == next(iter(script[index]))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"DATA\r\n", b"DATA\r\n"),
        (r"\x00\xFF\x7f", b"\x00\xff\x7f"),
        (r"a\\b\tc\0d", b"a\\b\tc\x00d"),
        ("plain", b"plain"),
        ("Ü\\n", "Ü".encode() + b"\n"),
        ("", b""),
    ],
)
def test_unescape(text: str, expected: bytes) -> None:
    assert unescape(text) == expected


@pytest.mark.parametrize("text", ["trailing\\", r"\xg0", r"\x", r"\'"])
def test_unescape_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        unescape(text)


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
        (b"a\rb\r\n", b"a\r\nb\r\n.\r\n"),
        (b".x\n..y\n.\nz.\n", b"..x\r\n...y\r\n..\r\nz.\r\n.\r\n"),
        (b"a\r\n.\r\n", b"a\r\n..\r\n.\r\n"),
        (b"\n\n", b"\r\n\r\n.\r\n"),
        (b"", b".\r\n"),
        (b"\xff\x00 8bit\n", b"\xff\x00 8bit\r\n.\r\n"),
    ],
)
def test_dot_stuff(message: bytes, wire: bytes) -> None:
    assert dot_stuff(message) == wire


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"a\nb\rc\r\nd", b"a\r\nb\r\nc\r\nd"),
        (b".x\n", b".x\r\n"),
        (b"\r\r\n\n", b"\r\n\r\n\r\n"),
        (b"no end", b"no end"),
        (b"", b""),
    ],
)
def test_crlf_line_ends_neither_stuffs_nor_terminates(message: bytes, wire: bytes) -> None:
    assert crlf_line_ends(message) == wire


def test_lines_inside_a_message_are_text_and_the_reply_answers_the_end_of_data(tmp_path: Path) -> None:
    """Would-be commands smuggled inside a message's text get no reply of their own: the reply after the
    lone dot answers the end of data, which is what a failure record names."""
    script: list[dict[str, object]] = [
        {"expect": 220},
        {"send": "EHLO client.example"},
        {"expect": 250},
        {"send": "MAIL FROM:<a@b.example>"},
        {"expect": 250},
        {"send": "RCPT TO:<c@d.example>"},
        {"expect": 250},
        {"send": "DATA"},
        {"expect": 354},
        {
            "send_raw": "Subject: x\\r\\n\\r\\nhi\\r\\n. \\r\\n"
            "MAIL FROM:<a@b.example>\\r\\nRCPT TO:<e@f.example>\\r\\nDATA\\r\\n.\\r\\n"
        },
        {"expect": 451},  # wrong on purpose: the server accepts the message
        {"send": "QUIT"},
    ]

    async def main() -> SessionResult:
        async with smtpd(Recorder()) as port:
            return await replay(script, port, tmp_path)

    result = run(main())
    [record] = [r for e in result.exchanges for r in e.records]
    assert (record.command, record.expected, record.actual) == ("(end of data)", "451", "250")
