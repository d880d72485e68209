"""SMTP sinks over real loopback sockets: captures, rules (reply, delay, disconnect, times), DSN
parameters, the session transcript, and the loopback-only guard.

aiosmtplib plays the MTA handing mail to an Internet host; a raw stream is used where a real client
would give up too early to show what the sink says (a refused greeting).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiosmtplib
import pytest

from harness.lab import config as lab_config
from harness.lab.captures import Capture
from harness.lab.config import Host, SinkRule
from harness.lab.sinks import ACTIONS, COMMANDS, SinkHost

ROOT = Path(__file__).resolve().parents[1]
# Per-process port so parallel runs (xdist workers, other checkouts) do not collide.
PORT = 30000 + os.getpid() % 5000
CLIENT = "127.77.9.200"
TIMEOUT = 5.0

T = TypeVar("T")


def sink_host(last_octet: int, *rules: SinkRule, fqdn: str = "mx.example.net") -> Host:
    return Host(f"sink-{last_octet}", fqdn, f"127.77.9.{last_octet}", "internet", tuple(rules))


def rule(
    command: str,
    reply: str | None = None,
    *,
    match: str | None = None,
    action: str | None = None,
    delay: float = 0.0,
    times: int | None = None,
) -> SinkRule:
    return SinkRule(command, match, reply, action or ("reply" if reply else "delay"), delay, times)


def run(sink: SinkHost, scenario: Callable[[SinkHost], Awaitable[T]]) -> T:
    async def main() -> T:
        await sink.start()
        try:
            return await scenario(sink)
        finally:
            await sink.stop()

    return asyncio.run(asyncio.wait_for(main(), 30))


def client(sink: SinkHost) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname=sink.address,
        port=sink.port,
        local_hostname="client.example",
        source_address=(CLIENT, 0),
        start_tls=False,
        timeout=TIMEOUT,
    )


async def send(sink: SinkHost, sender: str, recipients: list[str], data: bytes) -> None:
    smtp = client(sink)
    await smtp.connect()
    try:
        await smtp.mail(sender)
        for recipient in recipients:
            await smtp.rcpt(recipient)
        await smtp.data(data)
    finally:
        smtp.close()


async def raw_dialogue(sink: SinkHost, lines: list[bytes]) -> list[bytes]:
    """The greeting, then one reply line per command sent; b"" once the sink has hung up."""
    reader, writer = await asyncio.open_connection(sink.address, sink.port, local_addr=(CLIENT, 0))
    try:
        replies = [await asyncio.wait_for(reader.readline(), TIMEOUT)]
        for line in lines:
            writer.write(line)
            await writer.drain()
            replies.append(await asyncio.wait_for(reader.readline(), TIMEOUT))
        return replies
    finally:
        writer.close()


MESSAGE = (
    b"From: alice@contoso.com\r\nTo: bob@fabrikam.com\r\nSubject: exact bytes\r\n\r\n"
    b".a line that starts with a dot\r\n..two dots\r\n\xe9t\xe9 in eight bits\r\n\r\n"
)


# --- captures --------------------------------------------------------------------------------------


def test_captures_envelope_and_exact_content() -> None:
    async def scenario(sink: SinkHost) -> aiosmtplib.SMTPResponse:
        smtp = client(sink)
        banner = await smtp.connect()
        ehlo = await smtp.ehlo()
        await smtp.mail("alice@contoso.com", options=["BODY=8BITMIME", f"SIZE={len(MESSAGE)}"])
        await smtp.rcpt("bob@fabrikam.com")
        await smtp.rcpt("carol@fabrikam.com")
        await smtp.data(MESSAGE)
        await smtp.quit()
        assert banner.message == "mx.example.net ESMTP mailflow sink"
        return ehlo

    ehlo = run(sink := SinkHost(sink_host(1), PORT), scenario)
    assert ehlo.code == 250
    assert ehlo.message.split("\n") == ["mx.example.net", "SIZE 33554432", "8BITMIME", "DSN", "HELP"]
    (capture,) = sink.captures
    assert isinstance(capture, Capture)
    assert capture.host == "sink-1"
    assert capture.peer == CLIENT
    assert capture.helo == "client.example"
    assert capture.mail_from == "alice@contoso.com"
    assert capture.rcpt_tos == ("bob@fabrikam.com", "carol@fabrikam.com")
    assert capture.data == MESSAGE
    assert capture.mail_options == ("BODY=8BITMIME", f"SIZE={len(MESSAGE)}")
    assert capture.rcpt_options == ()
    assert capture.time == pytest.approx(time.time(), abs=60)
    (session,) = sink.sessions
    assert session.peer == CLIENT
    assert session.commands == [
        "EHLO client.example",
        f"MAIL FROM:<alice@contoso.com> BODY=8BITMIME SIZE={len(MESSAGE)}",
        "RCPT TO:<bob@fabrikam.com>",
        "RCPT TO:<carol@fabrikam.com>",
        "DATA",
        f"<message of {len(MESSAGE)} bytes>",
        "QUIT",
    ]
    assert session.replies[0] == "220 mx.example.net ESMTP mailflow sink"
    assert session.replies[-1] == "221 Bye"
    sink.clear()
    assert sink.captures == [] and sink.sessions == []


def test_a_long_running_sink_keeps_its_newest_captures_and_sessions() -> None:
    async def scenario(sink: SinkHost) -> None:
        for index in range(12):
            await send(
                sink, "alice@contoso.com", [f"user{index}@fabrikam.com"], b"Subject: load\r\n\r\nx\r\n"
            )

    run(sink := SinkHost(sink_host(61), PORT, log_limit=5), scenario)
    assert [c.rcpt_tos for c in sink.captures] == [(f"user{index}@fabrikam.com",) for index in range(7, 12)]
    assert len(sink.sessions) == 5


def test_null_sender_is_captured_as_empty() -> None:
    async def scenario(sink: SinkHost) -> None:
        await send(sink, "", ["postmaster@fabrikam.com"], b"Subject: bounce\r\n\r\nbody\r\n")

    run(sink := SinkHost(sink_host(2), PORT), scenario)
    (capture,) = sink.captures
    assert capture.mail_from == ""
    assert capture.rcpt_tos == ("postmaster@fabrikam.com",)


def test_dsn_parameters_are_accepted_and_recorded_as_sent() -> None:
    async def scenario(sink: SinkHost) -> None:
        smtp = client(sink)
        await smtp.connect()
        await smtp.mail("alice@contoso.com", options=["RET=HDRS", "ENVID=Q1w2-E3", "BODY=7BIT"])
        await smtp.rcpt(
            "bob@fabrikam.com", options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob@Fabrikam.com"]
        )
        await smtp.rcpt("carol@fabrikam.com", options=["NOTIFY=NEVER"])
        await smtp.data(b"Subject: dsn\r\n\r\nbody\r\n")
        await smtp.quit()

    run(sink := SinkHost(sink_host(3), PORT), scenario)
    (capture,) = sink.captures
    assert capture.mail_options == ("RET=HDRS", "ENVID=Q1w2-E3", "BODY=7BIT")
    assert capture.rcpt_options == ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob@Fabrikam.com", "NOTIFY=NEVER")


def test_without_dsn_the_parameters_are_refused() -> None:
    async def scenario(sink: SinkHost) -> str:
        smtp = client(sink)
        await smtp.connect()
        ehlo = await smtp.ehlo()
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.mail("alice@contoso.com", options=["RET=HDRS"])
        assert refused.value.code == 555
        await smtp.mail("alice@contoso.com")
        await smtp.quit()
        return ehlo.message

    ehlo = run(SinkHost(sink_host(4), PORT, advertise_dsn=False), scenario)
    assert "DSN" not in ehlo


# --- rules -----------------------------------------------------------------------------------------


def test_rcpt_rule_rejects_only_the_matching_address() -> None:
    async def scenario(sink: SinkHost) -> None:
        smtp = client(sink)
        await smtp.connect()
        await smtp.mail("alice@contoso.com")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await smtp.rcpt("Nobody@Fabrikam.com")
        assert (refused.value.code, refused.value.message) == (550, "5.1.1 User unknown")
        await smtp.rcpt("bob@fabrikam.com")
        await smtp.data(b"Subject: x\r\n\r\nbody\r\n")
        await smtp.quit()

    host = sink_host(5, rule("RCPT", "550 5.1.1 User unknown", match="<nobody@fabrikam.com>"))
    run(sink := SinkHost(host, PORT), scenario)
    (capture,) = sink.captures
    assert capture.rcpt_tos == ("bob@fabrikam.com",)


def test_lab_file_rules_fail_data_once_then_accept_the_retry() -> None:
    # flaky-mx of the Contoso lab: RCPT <nobody@slow.net> → 550, DATA → 451 the first time only.
    lab = lab_config.load(ROOT / "fixtures" / "labs" / "contoso.yaml", base="127.77.9.0")
    host = lab.host("flaky-mx")
    assert host.address == "127.77.9.108"

    async def scenario(sink: SinkHost) -> None:
        with pytest.raises(aiosmtplib.SMTPRecipientRefused):
            await send(sink, "alice@contoso.com", ["nobody@slow.net"], b"Subject: x\r\n\r\n1\r\n")
        with pytest.raises(aiosmtplib.SMTPDataError) as failed:
            await send(sink, "alice@contoso.com", ["someone@slow.net"], b"Subject: x\r\n\r\n2\r\n")
        assert (failed.value.code, failed.value.message) == (451, "4.3.0 Try again later")
        assert sink.captures == []
        # The retry comes on a new connection, as an MTA's would: the rule's one time is used up.
        await send(sink, "alice@contoso.com", ["someone@slow.net"], b"Subject: x\r\n\r\n3\r\n")

    run(sink := SinkHost(host, PORT), scenario)
    (capture,) = sink.captures
    assert capture.data.endswith(b"3\r\n")
    refused_data = sink.sessions[1]
    assert refused_data.commands[-1] == "DATA"
    assert refused_data.replies[-1] == "451 4.3.0 Try again later"
    assert "354 End data with <CR><LF>.<CR><LF>" not in refused_data.replies


def test_dot_rule_refuses_the_message_and_it_is_not_captured() -> None:
    async def scenario(sink: SinkHost) -> None:
        smtp = client(sink)
        await smtp.connect()
        await smtp.mail("alice@contoso.com")
        await smtp.rcpt("bob@fabrikam.com")
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.data(b"Subject: buy now\r\nX-Spam: YES\r\n\r\nbody\r\n")
        assert refused.value.code == 554
        # Same session, a clean message: the rule matches message text only.
        await smtp.mail("alice@contoso.com")
        await smtp.rcpt("bob@fabrikam.com")
        await smtp.data(b"Subject: hello\r\n\r\nbody\r\n")
        await smtp.quit()

    host = sink_host(6, rule("DOT", "554 5.7.1 Message refused", match="x-spam: yes"))
    run(sink := SinkHost(host, PORT), scenario)
    (capture,) = sink.captures
    assert capture.data.startswith(b"Subject: hello")
    assert "554 5.7.1 Message refused" in sink.sessions[0].replies


def test_connect_rule_replaces_the_greeting_and_only_quit_is_served() -> None:
    async def scenario(sink: SinkHost) -> list[bytes]:
        with pytest.raises(aiosmtplib.SMTPConnectResponseError) as refused:
            await client(sink).connect()
        assert refused.value.code == 554
        return await raw_dialogue(
            sink, [b"EHLO client.example\r\n", b"MAIL FROM:<a@b.example>\r\n", b"QUIT\r\n"]
        )

    host = sink_host(7, rule("CONNECT", "554 5.7.1 No SMTP service here"))
    replies = run(sink := SinkHost(host, PORT), scenario)
    assert replies == [
        b"554 5.7.1 No SMTP service here\r\n",
        b"503 5.5.1 Bad sequence of commands\r\n",
        b"503 5.5.1 Bad sequence of commands\r\n",
        b"221 Bye\r\n",
    ]
    assert len(sink.sessions) == 2


def test_connect_rule_can_match_the_client_address() -> None:
    async def scenario(sink: SinkHost) -> None:
        await send(sink, "alice@contoso.com", ["bob@fabrikam.com"], b"Subject: x\r\n\r\nbody\r\n")

    host = sink_host(8, rule("CONNECT", "554 5.7.1 Not you", match="127.77.9.201"))
    run(sink := SinkHost(host, PORT), scenario)
    assert len(sink.captures) == 1


def test_disconnect_action_hangs_up_without_a_reply() -> None:
    async def scenario(sink: SinkHost) -> list[bytes]:
        smtp = client(sink)
        await smtp.connect()
        await smtp.mail("alice@contoso.com")
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await smtp.rcpt("bob@fabrikam.com")
        return await raw_dialogue(sink, [b"EHLO raw.example\r\n"])

    host = sink_host(9, rule("RCPT", action="disconnect"), rule("EHLO", match="raw.", action="disconnect"))
    replies = run(sink := SinkHost(host, PORT), scenario)
    assert sink.captures == []
    first = sink.sessions[0]
    assert first.commands[-1] == "RCPT TO:<bob@fabrikam.com>"
    assert first.transcript[-1] == ("*", "connection closed by the sink")
    assert first.replies[-1] == "250 OK"  # the MAIL reply: nothing was said to the RCPT
    assert replies == [b"220 mx.example.net ESMTP mailflow sink\r\n", b""]


def test_content_rule_hangs_up_in_the_middle_of_the_data_stream() -> None:
    async def scenario(sink: SinkHost) -> None:
        smtp = client(sink)
        await smtp.connect()
        await smtp.mail("alice@contoso.com")
        await smtp.rcpt("bob@fabrikam.com")
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await smtp.data(MESSAGE * 200)
        # The rule was for one message: the next session's message is taken.
        await send(sink, "alice@contoso.com", ["bob@fabrikam.com"], MESSAGE)

    run(sink := SinkHost(sink_host(19, rule("CONTENT", action="disconnect", times=1)), PORT), scenario)
    (capture,) = sink.captures
    assert capture.data == MESSAGE
    first = sink.sessions[0]
    assert first.replies[-1].startswith("354")
    assert first.transcript[-3:] == [
        ("C", "<first line of the message, 25 bytes>"),
        ("*", "rule CONTENT disconnect"),
        ("*", "connection closed by the sink"),
    ]


def test_dot_disconnect_hangs_up_after_the_final_dot_without_a_reply() -> None:
    async def scenario(sink: SinkHost) -> None:
        smtp = client(sink)
        await smtp.connect()
        await smtp.mail("alice@contoso.com")
        await smtp.rcpt("bob@fabrikam.com")
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await smtp.data(MESSAGE)

    run(sink := SinkHost(sink_host(20, rule("DOT", action="disconnect")), PORT), scenario)
    assert sink.captures == []
    (session,) = sink.sessions
    assert session.commands[-1] == f"<message of {len(MESSAGE)} bytes>"
    assert session.replies[-1].startswith("354")


def test_disconnect_at_connect() -> None:
    async def scenario(sink: SinkHost) -> None:
        with pytest.raises(aiosmtplib.SMTPConnectError):
            await client(sink).connect()

    run(sink := SinkHost(sink_host(10, rule("CONNECT", action="disconnect")), PORT), scenario)
    (session,) = sink.sessions
    assert session.replies == []


def test_delay_action_answers_normally_after_the_delay() -> None:
    async def scenario(sink: SinkHost) -> tuple[float, aiosmtplib.SMTPResponse]:
        smtp = client(sink)
        await smtp.connect()
        began = time.monotonic()
        reply = await smtp.mail("alice@contoso.com")
        elapsed = time.monotonic() - began
        await smtp.quit()
        return elapsed, reply

    elapsed, reply = run(SinkHost(sink_host(11, rule("MAIL", delay=0.3)), PORT), scenario)
    assert reply.code == 250
    assert elapsed >= 0.25


def test_reply_rule_with_a_delay_replies_late() -> None:
    async def scenario(sink: SinkHost) -> float:
        smtp = client(sink)
        await smtp.connect()
        await smtp.mail("alice@contoso.com")
        await smtp.rcpt("bob@fabrikam.com")
        began = time.monotonic()
        with pytest.raises(aiosmtplib.SMTPDataError) as failed:
            await smtp.data(b"Subject: x\r\n\r\nbody\r\n")
        assert failed.value.code == 452
        return time.monotonic() - began

    host = sink_host(12, rule("DOT", "452 4.3.1 Insufficient system storage", delay=0.3))
    assert run(SinkHost(host, PORT), scenario) >= 0.25


def test_421_reply_closes_the_connection() -> None:
    async def scenario(sink: SinkHost) -> list[bytes]:
        return await raw_dialogue(sink, [b"HELO client.example\r\n", b"NOOP\r\n"])

    replies = run(SinkHost(sink_host(13, rule("HELO", "421 4.3.2 Service shutting down")), PORT), scenario)
    assert replies[1:] == [b"421 4.3.2 Service shutting down\r\n", b""]


def test_ehlo_rule_makes_the_client_fall_back_to_helo() -> None:
    async def scenario(sink: SinkHost) -> None:
        await send(sink, "alice@contoso.com", ["bob@fabrikam.com"], b"Subject: x\r\n\r\nbody\r\n")

    run(sink := SinkHost(sink_host(14, rule("EHLO", "502 5.5.2 Command not implemented")), PORT), scenario)
    (capture,) = sink.captures
    assert capture.helo == "client.example"
    assert sink.sessions[0].commands[:2] == ["EHLO client.example", "HELO client.example"]


def test_rules_at_run_time_and_times_counted_across_sessions() -> None:
    async def scenario(sink: SinkHost) -> list[int]:
        codes = []
        for _ in range(3):
            try:
                await send(sink, "alice@contoso.com", ["bob@fabrikam.com"], b"Subject: x\r\n\r\nbody\r\n")
                codes.append(250)
            except aiosmtplib.SMTPSenderRefused as refused:
                codes.append(refused.code)
        sink.clear_rules()
        await send(sink, "alice@contoso.com", ["bob@fabrikam.com"], b"Subject: x\r\n\r\nbody\r\n")
        return codes

    sink = SinkHost(sink_host(15), PORT)
    sink.add_rule(rule("MAIL", "452 4.5.3 Too many", times=2))
    sink.add_rule(rule("MAIL", "550 5.7.1 Never", match="nobody@"))
    assert run(sink, scenario) == [452, 452, 250]
    assert len(sink.captures) == 2
    assert sink.rules == []
    sink.reset_rules()
    assert sink.rules == []  # the host had no rules of its own


def test_rset_and_quit_rules() -> None:
    async def scenario(sink: SinkHost) -> list[bytes]:
        return await raw_dialogue(sink, [b"HELO client.example\r\n", b"RSET\r\n", b"QUIT\r\n"])

    host = sink_host(16, rule("RSET", "250 2.0.0 Reset done"), rule("QUIT", "221 2.0.0 See you"))
    replies = run(SinkHost(host, PORT), scenario)
    assert replies[2:] == [b"250 2.0.0 Reset done\r\n", b"221 2.0.0 See you\r\n"]


def test_stop_closes_open_sessions() -> None:
    async def scenario(sink: SinkHost) -> bytes:
        reader, writer = await asyncio.open_connection(sink.address, sink.port)
        await reader.readline()
        await sink.stop()
        rest = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        return rest

    assert run(SinkHost(sink_host(17), PORT), scenario) == b""


# --- guards ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.1.25", "8.8.8.8", "::1", "mx.example.net"])
def test_refuses_addresses_outside_the_lab(address: str) -> None:
    with pytest.raises(ValueError, match="not a lab address"):
        SinkHost(Host("outside", "mx.example.net", address, "internet"), PORT)


def test_accepts_the_network_namespace_range() -> None:
    assert SinkHost(Host("netns", None, "198.18.0.25", "internet"), PORT).fqdn == "netns"


@pytest.mark.parametrize(
    "bad",
    [
        rule("HELLO", "250 ok"),
        rule("RCPT", None, action="reply"),
        rule("RCPT", "250 ok", action="explode"),
        rule("RCPT", "ok then"),
        rule("RCPT", "550 no", delay=-1),
        rule("RCPT", "550 no", times=0),
        rule("CONTENT", "451 4.3.0 too late"),
        rule("CONTENT", match="Subject", action="disconnect"),
    ],
)
def test_rejects_malformed_rules(bad: SinkRule) -> None:
    with pytest.raises(ValueError, match="sink rule"):
        SinkHost(sink_host(18), PORT).add_rule(bad)
    with pytest.raises(ValueError, match="sink rule"):
        SinkHost(sink_host(18, bad), PORT)


@pytest.mark.parametrize("schema", ["lab.schema.json", "trace.schema.json"])
def test_the_schemas_name_the_sinks_commands_and_actions(schema: str) -> None:
    """A lab file's rules and a trace's sink_rule action are checked by schema before a sink sees them:
    the schemas must offer what the sinks do, no more and no less."""
    (rule_schema,) = _rule_schemas(json.loads((ROOT / "harness" / "schemas" / schema).read_text()))
    assert tuple(rule_schema["command"]["enum"]) == COMMANDS
    assert tuple(rule_schema["action"]["enum"]) == ACTIONS


def _rule_schemas(node: object) -> list[dict[str, dict[str, list[str]]]]:
    """The property schemas of every object that has both a command and an action."""
    if isinstance(node, list):
        return [found for value in node for found in _rule_schemas(value)]
    if not isinstance(node, dict):
        return []
    properties = node.get("properties")
    own = [properties] if isinstance(properties, dict) and {"command", "action"} <= properties.keys() else []
    return own + [found for value in node.values() for found in _rule_schemas(value)]
