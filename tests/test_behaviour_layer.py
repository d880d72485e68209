"""Expectations in two layers: every target is judged on behaviour (reply class, code, enhanced status
code, EHLO keywords offered), and on Exchange 2003's wording (texts, line layout, keyword order) only
where its profile is the trace's wording. Sessions run over real loopback sockets against aiosmtpd and
against a hand-written server that words its replies its own way."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from harness import targets
from harness.corpus.script import parse_script
from harness.corpus.trace import load
from harness.judge.records import Kind
from harness.judge.replies import reply_failures
from harness.run.replay import SessionResult, run_session
from harness.run.runner import run_trace
from harness.smtp.reply import Reply, ReplyMatcher

ROOT = Path(__file__).resolve().parents[1]

# What Exchange 2003 says, written the way the corpus writes it.
EXCHANGE_SCRIPT: list[dict[str, object]] = [
    {"expect": {"regex": r"^220 ex1\.contoso\.com Microsoft ESMTP MAIL Service"}},
    {"send": "EHLO client.example"},
    {"expect": {"code": 250, "offers": ["PIPELINING", "8BITMIME"], "lacks": "CHUNKING"}},
    {"send": "MAIL FROM:<ann@fabrikam.com>"},
    {"expect": {"code": 250, "text": "2.1.0 ann@fabrikam.com....Sender OK"}},
    {"send": "RCPT TO:<bob@contoso.com>"},
    {"expect": {"code": 250, "text": "2.1.5 bob@contoso.com"}},
    {"send": "RCPT TO:<chris@fabrikam.com>"},
    {"expect": {"code": 550, "text": "5.7.1 Unable to relay for chris@fabrikam.com"}},
    {"data": {"inline": "Subject: hi\r\n\r\nhello\r\n"}},
    {"expect": {"regex": r"^250 2\.6\.0 <EX1[0-9A-F]{16}@ex1\.contoso\.com> Queued mail for delivery$"}},
    {"send": "QUIT"},
    {"expect": {"masked": "221 2.0.0 <host-1> Service closing transmission channel"}},
]


class Handler:
    """aiosmtpd answering in its own words: refuses chris@fabrikam.com as a relay, with `relay_reply`;
    offers PIPELINING, and ENHANCEDSTATUSCODES unless told not to (as Exim does not)."""

    def __init__(self, relay_reply: str = "550 5.7.1 Relaying denied", *, enhanced: bool = True) -> None:
        self.relay_reply = relay_reply
        self.enhanced = enhanced

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        extra = ["250-PIPELINING", *(["250-ENHANCEDSTATUSCODES"] if self.enhanced else [])]
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "221 2.0.0 Bye"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.endswith("@fabrikam.com"):
            return self.relay_reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 Ok: queued as 4Xyz"


@contextlib.asynccontextmanager
async def smtpd(handler: Handler) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="mx.test", ident="Other ESMTP", loop=loop, enable_SMTPUTF8=False),
        "127.0.0.1",
        0,
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def replay(
    script: list[dict[str, object]], tmp_path: Path, *, wording: bool, handler: Handler | None = None
) -> SessionResult:
    async def main() -> SessionResult:
        async with smtpd(handler or Handler()) as port:
            return await run_session(
                parse_script(script),
                host="127.0.0.1",
                port=port,
                source_address=None,
                base_dir=tmp_path,
                wording=wording,
            )

    return asyncio.run(main())


def kinds(result: SessionResult) -> list[Kind]:
    return [record.kind for exchange in result.exchanges for record in exchange.records]


def test_another_mta_that_behaves_alike_passes_on_behaviour_and_fails_on_wording(tmp_path: Path) -> None:
    behaviour = replay(EXCHANGE_SCRIPT, tmp_path, wording=False)
    assert behaviour.passed, behaviour.transcript

    wording = replay(EXCHANGE_SCRIPT, tmp_path, wording=True)
    assert not wording.passed
    # The greeting is the first step, and its wording is the first difference.
    assert kinds(wording) == [Kind.REGEX]


def test_a_different_code_under_the_words_fails_on_behaviour(tmp_path: Path) -> None:
    result = replay(
        EXCHANGE_SCRIPT, tmp_path, wording=False, handler=Handler("554 5.7.1 Relay access denied")
    )
    assert not result.passed
    [record] = [r for e in result.exchanges for r in e.records]
    assert (record.kind, record.expected, record.actual) == (Kind.CODE, "550", "554")


def test_an_enhanced_code_written_in_the_text_is_behaviour(tmp_path: Path) -> None:
    result = replay(EXCHANGE_SCRIPT, tmp_path, wording=False, handler=Handler("550 5.1.1 No such user"))
    assert not result.passed
    [record] = [r for e in result.exchanges for r in e.records]
    assert (record.kind, record.expected, record.actual) == (Kind.ENHANCED, "5.7.1", "5.1.1")


def test_without_enhancedstatuscodes_offered_no_enhanced_code_is_asked_for(tmp_path: Path) -> None:
    offered = replay(EXCHANGE_SCRIPT, tmp_path, wording=False, handler=Handler("550 Relaying denied"))
    assert kinds(offered) == [Kind.ENHANCED]

    handler = Handler("550 Relaying denied", enhanced=False)
    not_offered = replay(EXCHANGE_SCRIPT, tmp_path, wording=False, handler=handler)
    assert not_offered.passed, not_offered.transcript


def test_keywords_offered_and_lacking_are_checked_in_any_order(tmp_path: Path) -> None:
    script: list[dict[str, object]] = [
        {"expect": 220},
        {"send": "EHLO client.example"},
        {"expect": {"code": 250, "offers": ["8BITMIME", "SIZE"], "lacks": ["PIPELINING", "STARTTLS"]}},
    ]
    result = replay(script, tmp_path, wording=False)
    assert not result.passed
    [record] = [r for e in result.exchanges for r in e.records]
    # The server offers SIZE (with a value), 8BITMIME and PIPELINING, and no STARTTLS.
    assert (record.kind, record.expected) == (Kind.LACKS, "PIPELINING")


def test_a_success_s_enhanced_code_is_compared_by_class_in_the_behaviour_layer() -> None:
    queued = Reply.of(["250 2.0.0 Ok: queued as 4Xyz"])
    matcher = ReplyMatcher.parse({"code": 250, "enhanced": "2.6.0"})
    assert reply_failures(matcher, queued, wording=False) == []
    [record] = reply_failures(matcher, queued, wording=True)
    assert record.kind is Kind.ENHANCED

    refused = ReplyMatcher.parse({"code": 550, "enhanced": "5.7.1"})
    assert [r.kind for r in reply_failures(refused, Reply.of(["550 5.0.0 no"]), wording=False)] == [
        Kind.ENHANCED
    ]


@pytest.mark.parametrize(
    ("written", "code", "enhanced"),
    [
        ({"code": 250, "text": "2.1.5 bob@contoso.com"}, 250, "2.1.5"),
        ("250 2.1.0", 250, "2.1.0"),
        ({"regex": r"^550 5\.7\.1 Unable to relay for x$"}, 550, "5.7.1"),
        ({"masked": "221 2.0.0 <host-1> Service closing transmission channel"}, 221, "2.0.0"),
        ({"regex": r"\A250-ex1\.contoso\.com Hello"}, 250, None),
        ({"code": 250, "text": "OK"}, 250, None),
        ({"contains": "Queued"}, None, None),
    ],
)
def test_the_behaviour_layer_reads_the_codes_the_wording_starts_with(
    written: object, code: int | None, enhanced: str | None
) -> None:
    layer = ReplyMatcher.parse(written).behaviour()
    assert (layer.code, layer.enhanced) == (code, enhanced)
    assert layer.text is layer.prefix is layer.regex is layer.contains is layer.masked is None


def test_keyword_expectations_are_checked_when_the_trace_is_read() -> None:
    with pytest.raises(ValueError, match="both offered and lacking"):
        ReplyMatcher.parse({"offers": "STARTTLS", "lacks": ["STARTTLS"]})
    with pytest.raises(ValueError, match="EHLO keyword"):
        ReplyMatcher.parse({"offers": ["two  spaces"]})


def test_only_the_reference_mta_judges_the_corpus_wording() -> None:
    trace = load(ROOT / "traces" / "inbound" / "case-insensitive-proxy.yaml")
    assert trace.wording == "exchange"
    assert targets.REFERENCE.judges_wording(trace)
    for name in ("postfix", "exim", "opensmtpd"):
        assert not targets.get(name).judges_wording(trace)
    # A trace captured from another MTA keeps that MTA's words, judged where a target answers in them.
    captured = dataclasses.replace(trace, wording="staging-relay")
    assert not targets.REFERENCE.judges_wording(captured)
    assert dataclasses.replace(targets.POSTFIX, profile="staging-relay").judges_wording(captured)


def test_headers_in_the_trace_s_wording_are_checked_only_where_wording_is_judged(tmp_path: Path) -> None:
    """An NDR's subject is Exchange's words: a wrong one fails the trace where its wording is judged, and
    is not looked at elsewhere; the NDR's behaviour (its DSN status) is checked everywhere."""
    text = (ROOT / "traces" / "inbound" / "unknown-recipient-ndr.yaml").read_text(encoding="utf-8")
    worded = text.replace("Delivery Status Notification \\\\(Failure\\\\)", "Undeliverable")
    assert worded != text
    path = tmp_path / "ndr.yaml"
    path.write_text(worded, encoding="utf-8")
    missing = run_trace(load(path), targets.REFERENCE).records()[0]
    assert missing.kind is Kind.DELIVERY
    # The NDR came, and differs from the expected one by its subject alone.
    assert [(d.kind, d.field) for d in missing.near[0].differences] == [(Kind.HEADER, "Subject")]

    path.write_text(worded.replace("\nlab: ", "\nwording: captured\nlab: ", 1), encoding="utf-8")
    assert load(path).wording == "captured"
    assert run_trace(load(path), targets.REFERENCE).passed

    wrong_status = worded.replace("status: 5.1.1", "status: 5.1.2", 1)
    path.write_text(wrong_status.replace("\nlab: ", "\nwording: captured\nlab: ", 1), encoding="utf-8")
    missing = run_trace(load(path), targets.REFERENCE).records()[0]
    assert [(d.kind, d.field) for d in missing.near[0].differences] == [(Kind.DSN, "block")]


def test_a_refusal_where_a_success_is_expected_is_one_difference_its_code_s() -> None:
    accepted = ReplyMatcher.parse({"code": 250, "text": "2.1.5 ghost@contoso.com"})
    refused = Reply.of(["550 5.1.1 unknown"])
    assert [r.kind for r in reply_failures(accepted, refused, wording=False)] == [Kind.CODE]
    # Under the same class, the enhanced code says which refusal it is.
    relay = ReplyMatcher.parse({"code": 550, "text": "5.7.1 Unable to relay for x"})
    assert [r.kind for r in reply_failures(relay, Reply.of(["554 5.1.1 unknown"]), wording=False)] == [
        Kind.CODE,
        Kind.ENHANCED,
    ]
