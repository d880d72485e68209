"""Importers of captured SMTP sessions (harness/capture/importers) and `mailflow import`.

The TCP reassembler and the dialogue splitter get crafted segment orders and byte streams; the three
importers get inputs produced for real: a session against a running lab captured with tcpdump, a swaks
transcript, the W3C protocol log the reference MTA writes. Each imported trace must replay green against
the reference MTA.
"""

from __future__ import annotations

import base64
import dataclasses
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest
from capturing import Tcpdump, frame
from click.testing import CliRunner

from harness import targets
from harness.capture.importers import BadInput, pcap, swaks, w3c
from harness.capture.importers.dialogue import Stream, pair
from harness.capture.importers.tcp import Reassembler
from harness.capture.importers.to_trace import reply_expectation, to_trace
from harness.capture.recorded import RecordedSession
from harness.cli.app import main
from harness.cli.importing import import_group
from harness.corpus.claims import claims
from harness.corpus.trace import load
from harness.lab import config as lab_config
from harness.lab.config import LabConfig
from harness.lab.placement import relocation
from harness.lab.runtime import Lab
from harness.run.runner import run_trace
from harness.smtp.masking import Normalizer

CLIENT = ("127.0.0.200", 40000)
SERVER = ("127.0.0.11", 25)
RELAY_USER, RELAY_PASSWORD = "relayuser", "Relay-P@ss1"  # fixtures/directory/contoso.ldif


# --- the TCP reassembler -------------------------------------------------------------------------


def _handshake(tcp: Reassembler, client: tuple[str, int] = CLIENT, isn: int = 1000) -> None:
    tcp.segment(client, SERVER, isn, "S", b"", 0.0, "packet 1")
    tcp.segment(SERVER, client, 5000, "SA", b"", 0.0, "packet 2")


def test_segments_out_of_order_duplicated_and_overlapping_give_the_bytes_sent() -> None:
    tcp = Reassembler(frozenset({25}))
    _handshake(tcp)
    pieces = [(1001, b"EHLO a\r\n"), (1009, b"MAIL FROM:<a@b>\r\n"), (1026, b"QUIT\r\n")]
    tcp.segment(CLIENT, SERVER, 1026, "A", b"QUIT\r\n", 3.0, "packet 5")  # arrives first
    tcp.segment(CLIENT, SERVER, 1001, "A", b"EHLO a\r\n", 1.0, "packet 3")
    tcp.segment(CLIENT, SERVER, 1001, "A", b"EHLO a\r\n", 1.5, "packet 4")  # a retransmission
    tcp.segment(CLIENT, SERVER, 1005, "A", b" a\r\nMAIL FROM:<a@b>\r\n", 2.0, "packet 6")  # overlaps
    (connection,) = tcp.connections
    client, _ = connection.streams()
    assert bytes(client.data) == b"".join(piece for _, piece in pieces)
    assert client.notes == []
    assert client.where(len(b"EHLO a\r\nMAIL")) == "packet 6"


def test_a_hole_ends_the_stream_with_a_note() -> None:
    tcp = Reassembler(frozenset({25}))
    _handshake(tcp)
    tcp.segment(CLIENT, SERVER, 1001, "A", b"EHLO a\r\n", 1.0, "packet 3")
    tcp.segment(CLIENT, SERVER, 1020, "A", b"QUIT\r\n", 2.0, "packet 4")
    client, _ = tcp.connections[0].streams()
    assert bytes(client.data) == b"EHLO a\r\n"
    assert "misses 11 bytes of the client stream after byte 8 (before packet 4)" in client.notes[0]


def test_sequence_numbers_wrap_around() -> None:
    tcp = Reassembler(frozenset({25}))
    _handshake(tcp, isn=(1 << 32) - 3)
    tcp.segment(CLIENT, SERVER, (1 << 32) - 2, "A", b"EH", 1.0, "packet 3")
    tcp.segment(CLIENT, SERVER, 0, "A", b"LO a\r\n", 1.1, "packet 4")
    assert bytes(tcp.connections[0].streams()[0].data) == b"EHLO a\r\n"


def test_a_reused_client_port_after_fin_is_a_second_connection() -> None:
    tcp = Reassembler(frozenset({25}))
    _handshake(tcp, isn=1000)
    tcp.segment(CLIENT, SERVER, 1001, "A", b"QUIT\r\n", 1.0, "packet 3")
    tcp.segment(CLIENT, SERVER, 1007, "FA", b"", 1.1, "packet 4")
    _handshake(tcp, isn=90000)
    tcp.segment(CLIENT, SERVER, 90001, "A", b"NOOP\r\n", 2.0, "packet 7")
    assert [bytes(c.streams()[0].data) for c in tcp.connections] == [b"QUIT\r\n", b"NOOP\r\n"]


def test_a_connection_begun_before_the_capture_is_read_from_its_first_segment() -> None:
    tcp = Reassembler(frozenset({25}))
    tcp.segment(CLIENT, SERVER, 7777, "A", b"NOOP\r\n", 1.0, "packet 1")
    tcp.segment(SERVER, CLIENT, 1234, "A", b"250 OK\r\n", 1.1, "packet 2")
    client, server = tcp.connections[0].streams()
    assert (bytes(client.data), bytes(server.data)) == (b"NOOP\r\n", b"250 OK\r\n")
    assert "starts mid-way" in client.notes[0]


# --- splitting and pairing -----------------------------------------------------------------------


def _streams(*items: tuple[str, bytes]) -> tuple[Stream, Stream]:
    """Client (C) and server (S) pieces in the order they happened."""
    client, server = Stream(), Stream()
    for time_, (side, data) in enumerate(items):
        (client if side == "C" else server).add(data, float(time_), f"packet {time_ + 1}")
    return client, server


def test_pairing_splits_data_bdat_auth_and_pipelined_commands(tmp_path: Path) -> None:
    secret = base64.b64encode(b"\0ann\0s3cret")
    client, server = _streams(
        ("S", b"220 mx ready\r\n"),
        ("C", b"EHLO a\r\n"),
        ("S", b"250-mx\r\n250 PIPELINING\r\n"),
        ("C", b"AUTH PLAIN " + secret + b"\r\n"),
        ("S", b"235 2.7.0 ok\r\n"),
        ("C", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"),
        ("S", b"250 sender\r\n250 rcpt\r\n354 go\r\n"),
        ("C", b"Subject: x\r\n\r\n..dot\r\n.\r\n"),
        ("S", b"250 queued\r\n"),
        ("C", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 5 LAST\r\nab\r\nc"),
        ("S", b"250 sender\r\n250 rcpt\r\n250 5 bytes\r\n"),
        ("C", b"QUIT\r\n"),
        ("S", b"221 bye\r\n"),
    )
    session = RecordedSession("127.0.0.200", "127.0.0.11")
    pair(session, client, server, tmp_path / "x.pcap")
    sent = [(e.sent, e.reply[-1][:3], e.pipelined) for e in session.exchanges]
    assert sent == [
        (None, "220", False),
        ("EHLO a", "250", False),
        ("AUTH PLAIN", "235", False),
        ("MAIL FROM:<a@b>", "250", False),
        ("RCPT TO:<c@d>", "250", True),
        ("DATA", "354", True),
        (None, "250", False),
        ("MAIL FROM:<a@b>", "250", False),
        ("RCPT TO:<c@d>", "250", True),
        ("BDAT 5 LAST", "250", True),
        ("QUIT", "221", False),
    ]
    assert session.exchanges[6].message == b"Subject: x\r\n\r\n..dot\r\n"
    assert session.exchanges[9].message == b"ab\r\nc"
    assert session.exchanges[2].auth == "PLAIN"
    assert secret.decode() not in repr(session)


def test_auth_login_answers_are_never_kept(tmp_path: Path) -> None:
    user, password = base64.b64encode(b"relayuser"), base64.b64encode(b"Relay-P@ss1")
    client, server = _streams(
        ("S", b"220 mx\r\n"),
        ("C", b"AUTH LOGIN\r\n"),
        ("S", b"334 VXNlcm5hbWU6\r\n"),
        ("C", user + b"\r\n"),
        ("S", b"334 UGFzc3dvcmQ6\r\n"),
        ("C", password + b"\r\n"),
        ("S", b"535 5.7.3 no\r\n"),
    )
    session = RecordedSession("c", "s")
    pair(session, client, server, tmp_path / "x")
    assert [(e.sent, e.reply, e.auth) for e in session.exchanges[1:]] == [
        ("AUTH LOGIN", ["535 5.7.3 no"], "LOGIN")
    ]
    assert user.decode() not in repr(session) and password.decode() not in repr(session)


def test_a_session_ends_at_the_220_to_starttls_with_a_note(tmp_path: Path) -> None:
    client, server = _streams(
        ("S", b"220 mx\r\n"),
        ("C", b"STARTTLS\r\n"),
        ("S", b"220 go ahead\r\n"),
        ("C", b"\x16\x03\x01\x02\x00binary"),
        ("S", b"\x16\x03\x03\x00\x7abinary"),
    )
    session = RecordedSession("c", "s")
    pair(session, client, server, tmp_path / "x")
    assert session.exchanges[-1].tls and session.exchanges[-1].sent == "STARTTLS"
    assert "encrypted after STARTTLS: 11 bytes from the client and 11 from the server" in session.notes[0]


def test_a_malformed_reply_names_the_packet(tmp_path: Path) -> None:
    client, server = _streams(("S", b"220 mx\r\n"), ("C", b"NOOP\r\n"), ("S", b"HTTP/1.1 400 Bad\r\n"))
    with pytest.raises(BadInput, match=r"x\.pcap: packet 3: the server sent b'HTTP/1.1 400 Bad'"):
        pair(RecordedSession("c", "s"), client, server, tmp_path / "x.pcap")


# --- pcap files ----------------------------------------------------------------------------------


SYN, ACK, FIN = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN
CRAFTED = [  # a session whose client segments come out of order, one twice
    frame(CLIENT, SERVER, 100, SYN, b""),
    frame(SERVER, CLIENT, 900, SYN | ACK, b""),
    frame(SERVER, CLIENT, 901, ACK, b"220 mx ready\r\n"),
    frame(CLIENT, SERVER, 108, ACK, b"QUIT\r\n"),
    frame(CLIENT, SERVER, 101, ACK, b"NOOP\r\n\r\n"[:7]),
    frame(CLIENT, SERVER, 101, ACK, b"NOOP\r\n\r\n"[:7]),
    frame(SERVER, CLIENT, 915, ACK, b"250 OK\r\n221 bye\r\n"),
    frame(CLIENT, SERVER, 114, FIN | ACK, b""),
]


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_a_crafted_capture_of_either_kind_is_read(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"crafted.{kind}"
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f) if kind == "pcap" else dpkt.pcapng.Writer(f)
        for number, frame in enumerate(CRAFTED):
            writer.writepkt(frame, ts=1_700_000_000 + number / 10)
    (session,) = pcap.read(path).sessions
    assert (session.client, session.server, session.server_port) == ("127.0.0.200", "127.0.0.11", 25)
    # "NOOP\r\n\r" then "QUIT": the stray CR ends up in front of QUIT's line, as the server saw it.
    assert [(e.sent, e.reply) for e in session.exchanges] == [
        (None, ["220 mx ready"]),
        ("NOOP", ["250 OK"]),
        ("\rQUIT", ["221 bye"]),
    ]


def test_a_file_that_is_no_capture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(BadInput, match="not a pcap or pcapng capture"):
        pcap.read(path)


# --- W3C logs and swaks transcripts without a lab ------------------------------------------------

W3C_HEADER = """\
#Software: Microsoft Internet Information Services 6.0
#Version: 1.0
#Date: 2006-10-09 05:00:15
#Fields: date time c-ip cs-username s-sitename s-computername s-ip s-port cs-method cs-uri-stem \
cs-uri-query sc-status sc-win32-status sc-bytes cs-bytes time-taken cs-version cs-host cs(User-Agent) \
cs(Cookie) cs(Referer)
"""


def _w3c(when: str, client: str, user: str, verb: str, query: str, status: str, win32: str = "0") -> str:
    """A line as Exchange 2003 writes it (the byte counts and times do not matter here)."""
    return (
        f"2006-10-09 {when} {client} {user} SMTPSVC1 EX1 10.0.0.11 0 {verb} - {query} {status} {win32} "
        + ("48 13 0 SMTP - - - -\n")
    )


W3C_LOG = W3C_HEADER + "".join(
    [
        _w3c("05:00:15", "10.0.0.5", "mx.fabrikam.com", "EHLO", "+mx.fabrikam.com", "250"),
        _w3c("05:00:15", "10.0.0.9", "-", "xxxx", "+rr.com", "500"),
        _w3c("05:00:16", "10.0.0.5", "mx.fabrikam.com", "MAIL", "+FROM:+<ann+x@fabrikam.com>", "250"),
        _w3c("05:00:16", "1.2.3.4", "OutboundConnectionCommand", "EHLO", "+ex1", "0"),
        _w3c("05:00:16", "10.0.0.5", "mx.fabrikam.com", "RCPT", "+TO:<alice@contoso.com>", "250"),
        _w3c("05:00:19", "10.0.0.5", "mx.fabrikam.com", "DATA", "+<4F5002F2@fabrikam.com>", "250"),
        _w3c("05:00:19", "10.0.0.5", "mx.fabrikam.com", "QUIT", "mx.fabrikam.com", "240", "6219"),
        _w3c("05:00:20", "10.0.0.5", "-", "QUIT", "-", "240", "10"),
    ]
)


def test_a_w3c_log_becomes_sessions_by_client_with_codes_only(tmp_path: Path) -> None:
    path = tmp_path / "ex061009.log"
    path.write_text(W3C_LOG.replace("\n", "\r\n"))
    first, unknown, second = w3c.read(path)
    assert [(e.sent, e.reply, e.message is not None) for e in first.exchanges] == [
        (None, ["220"], False),
        ("EHLO mx.fabrikam.com", ["250"], False),
        ("MAIL FROM: <ann+x@fabrikam.com>", ["250"], False),
        ("RCPT TO:<alice@contoso.com>", ["250"], False),
        ("DATA", ["354"], False),
        (None, ["250"], True),
        ("QUIT", ["221"], False),
    ]
    assert not first.reply_texts and first.server == "10.0.0.11"
    assert b"Message-ID: <4F5002F2@fabrikam.com>" in (first.exchanges[5].message or b"")
    assert [e.sent for e in unknown.exchanges] == [None, "XXXX rr.com"]
    assert [e.sent for e in second.exchanges] == [None, "QUIT"]  # the same client, connected again
    assert any("1 line(s) of outbound sessions" in note for note in first.notes)


def test_a_w3c_line_with_the_wrong_number_of_fields_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "ex061009.log"
    path.write_text(W3C_LOG.replace(" 0 QUIT - - 240", " 0 QUIT - 240"))
    with pytest.raises(BadInput, match=r"ex061009\.log: line 12: 20 fields where #Fields names 21"):
        w3c.read(path)


def test_a_line_swaks_never_prints_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "swaks.txt"
    path.write_text("=== Trying 127.0.0.11:25...\n<-  220 mx\nhello there\n")
    with pytest.raises(BadInput, match=r"swaks\.txt: line 3: 'hello there' is not a line swaks prints"):
        swaks.read(path)


# --- the converter -------------------------------------------------------------------------------


def test_reply_expectations_are_the_code_and_the_masked_text() -> None:
    normalizer = Normalizer()
    greeting = reply_expectation(["220 ex1.contoso.com Microsoft ESMTP MAIL Service"], True, normalizer, True)
    assert greeting == {"code": 220, "masked": "220 <host-1> <banner>"}
    assert reply_expectation(["250 2.1.5 alice@contoso.com"], False, normalizer) == 250
    sender = "250 2.1.0 <ann@fabrikam.com>....Sender OK"
    assert reply_expectation([sender], True, normalizer) == {"code": 250, "masked": sender}
    queued = reply_expectation(
        ["250 2.6.0 <EX1F65D0DA90AA24666@ex1.contoso.com> Queued mail for delivery"], True, normalizer
    )
    assert queued == {"code": 250, "masked": "250 2.6.0 <<queue-id-1>@<host-1>> Queued mail for delivery"}


def test_pipelined_commands_become_one_pipeline_step(tmp_path: Path) -> None:
    config = lab_config.load(lab_config.lab_path("contoso"))
    session = RecordedSession("127.0.0.200", config.organization.server("EX1").virtual_servers[2].address)
    session.add(None, ["220 mx"])
    session.add("MAIL FROM:<a@b>", ["250 ok"])
    session.add("RCPT TO:<c@d>", ["250 ok"], pipelined=True)
    session.add("DATA", ["354 go"], pipelined=True)
    session.add(None, ["250 queued"], message=b"Subject: x\r\n\r\n..dot\r\n")
    document = to_trace(
        [session], trace_id="imported/x", title="x", source="x", lab="contoso", config=config, server="EX1"
    ).document
    (trace_session,) = document["sessions"]
    assert trace_session["connect"] == {"server": "EX1", "virtual_server": "Filtered SMTP Virtual Server"}
    assert trace_session["script"] == [
        {"expect": {"code": 220, "masked": "220 <banner>"}},
        {"pipeline": ["MAIL FROM:<a@b>", "RCPT TO:<c@d>"]},
        {"expect": {"code": 250, "masked": "250 ok"}},
        {"expect": {"code": 250, "masked": "250 ok"}},
        {"data": {"inline": "Subject: x\n\n.dot\n"}},
        {"expect": {"code": 250, "masked": "250 queued"}},
    ]


# --- inputs produced for real against a running lab ----------------------------------------------


@pytest.fixture
def lab_config_here() -> LabConfig:
    base, offset = relocation()
    return lab_config.load(lab_config.lab_path("contoso"), base=base, port_offset=offset)


def _swaks(config: LabConfig, *arguments: str, server: str = "EX1", check: bool = True) -> str:
    """Run swaks from the lab's internet host; with `check`, it must have delivered (exit 0)."""
    if shutil.which("swaks") is None:
        pytest.skip("swaks is not installed (scripts/install_mtas.sh installs it)")
    vs = config.organization.server(server).default_virtual_server
    result = subprocess.run(
        [
            "swaks",
            "--server",
            f"{vs.address}:{vs.port}",
            "--local-interface",
            config.host("internet").address,
            "--helo",
            "mail-out.fabrikam.com",
            "--from",
            "ann@fabrikam.com",
            "--to",
            "alice@contoso.com",
            *arguments,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=check,
    )
    return result.stdout


def _replay(trace_path: Path) -> None:
    # What the importer writes passes `mailflow check`: its spec: claims only what its replies show.
    assert not [claim.missing for claim in claims(load(trace_path)) if not claim.shown]
    result = run_trace(load(trace_path), targets.REFERENCE)
    assert result.passed, "\n".join(result.failures())


def _import(kind: str, source: Path, output: Path, *options: str) -> str:
    runner = CliRunner()
    outcome = runner.invoke(import_group, [kind, str(source), "-o", str(output), "--server", "EX1", *options])
    assert outcome.exit_code == 0, outcome.output + repr(outcome.exception)
    return outcome.output


def test_a_captured_session_replays_green(
    tmp_path: Path, lab_config_here: LabConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    vs = lab_config_here.organization.server("EX1").default_virtual_server
    capture = tmp_path / "prod.pcap"
    holes: list[str] = []
    # tcpdump on a busy lo now and then loses a segment; the reassembler notes the hole, and the capture
    # is taken again: a lossy capture says nothing about the importer.
    for _ in range(4):
        with Lab(lab_config_here):
            tcpdump = Tcpdump(capture, f"tcp port {vs.port} and host {vs.address}")
            try:
                # Pipelined, with AUTH LOGIN in clear; then a second connection that starts TLS.
                _swaks(lab_config_here, "--pipeline", "--auth", "LOGIN", "--auth-user", RELAY_USER,
                       "--auth-password", RELAY_PASSWORD)  # fmt: skip
                _swaks(lab_config_here, "--tls")
            finally:
                tcpdump.stop_when(closed=2, ports=[vs.port])
        holes = [n for s in pcap.read(capture, [vs.port]).sessions for n in s.notes if "capture misses" in n]
        if not holes:
            break
    assert not holes, holes
    output = _import("pcap", capture, tmp_path / "traces" / "prod.yaml", "--port", str(vs.port))
    trace_path = tmp_path / "traces" / "prod.yaml"
    assert f"wrote {trace_path}" in output
    text = trace_path.read_text()
    for secret in (RELAY_USER, RELAY_PASSWORD):
        assert base64.b64encode(secret.encode()).decode() not in text and secret not in text
    trace = load(trace_path)
    first, second = trace.sessions
    steps = [type(step).__name__ for step in first.steps]  # type: ignore[union-attr]
    assert "Pipeline" in steps and "Auth" in steps and "Data" in steps
    assert type(second.steps[-1]).__name__ == "StartTls", trace.description  # type: ignore[union-attr]
    assert "encrypted after STARTTLS" in trace.description
    monkeypatch.setenv("MAILFLOW_AUTH_USER", RELAY_USER)
    monkeypatch.setenv("MAILFLOW_AUTH_PASSWORD", RELAY_PASSWORD)
    _replay(trace_path)


def test_a_swaks_transcript_replays_green_tls_included(
    tmp_path: Path, lab_config_here: LabConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Lab(lab_config_here):
        transcript = _swaks(lab_config_here, "--tls", "--pipeline", "--auth", "LOGIN", "--auth-user",
                            RELAY_USER, "--auth-password", RELAY_PASSWORD)  # fmt: skip
    source = tmp_path / "swaks.txt"
    source.write_text(transcript)
    _import("swaks", source, tmp_path / "out")  # a folder: one trace per session
    trace_path = tmp_path / "out" / "swaks.yaml"
    (session,) = load(trace_path).sessions
    steps = [type(step).__name__ for step in session.steps]  # type: ignore[union-attr]
    assert steps.index("StartTls") < steps.index("Auth") < steps.index("Pipeline")
    assert base64.b64encode(RELAY_PASSWORD.encode()).decode() not in trace_path.read_text()
    monkeypatch.setenv("MAILFLOW_AUTH_USER", RELAY_USER)
    monkeypatch.setenv("MAILFLOW_AUTH_PASSWORD", RELAY_PASSWORD)
    _replay(trace_path)


def test_the_protocol_log_the_reference_mta_writes_replays_green(
    tmp_path: Path, lab_config_here: LabConfig
) -> None:
    organization = lab_config_here.organization
    ex1 = organization.server("EX1")
    logged = dataclasses.replace(ex1.default_virtual_server, logging="w3c")
    servers = tuple(
        dataclasses.replace(s, virtual_servers=(logged, *s.virtual_servers[1:])) if s is ex1 else s
        for s in organization.servers
    )
    config = dataclasses.replace(
        lab_config_here, organization=dataclasses.replace(organization, servers=servers)
    )
    with Lab(config, tmp_path / "lab"):
        _swaks(config, "--pipeline")
        # Refused (no relaying for the Internet), which swaks reports with its exit status.
        _swaks(config, "--to", "nobody@fabrikam.com", "--quit-after", "RCPT", check=False)
    (log,) = (tmp_path / "lab" / "EX1" / "LogFiles" / "SMTPSVC1").glob("ex*.log")
    lines = log.read_text().splitlines()
    assert lines[3].startswith("#Fields: date time c-ip cs-username s-sitename")
    assert " RCPT - +TO:<nobody@fabrikam.com> 550 " in log.read_text()
    assert " QUIT - mail-out.fabrikam.com 240 " in log.read_text()
    _import("w3c", log, tmp_path / "traces" / "logged.yaml", "--outcome")
    trace = load(tmp_path / "traces" / "logged.yaml")
    assert len(trace.sessions) == 2
    # The log shows one message accepted (the refused session never reached DATA): it is expected where
    # the lab delivers it, and nothing else.
    assert trace.outcome == {
        "delivered": [{"mailbox": "alice@contoso.com", "server": "EX1", "sender": "ann@fabrikam.com"}],
        "nothing_else_delivered": True,
    }
    _replay(tmp_path / "traces" / "logged.yaml")


def test_a_capture_cut_before_any_session_ended_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f)
        for frame in CRAFTED[:4]:
            writer.writepkt(frame, ts=1.0)
    path.write_bytes(path.read_bytes()[:-3])
    outcome = CliRunner().invoke(
        import_group, ["pcap", str(path), "-o", str(tmp_path / "out" / "t.yaml"), "--server", "EX1"]
    )
    assert outcome.exit_code == 2
    assert (
        "cut.pcap: no complete SMTP session found: the file ends inside packet 4, and every session was "
        "still open there"
    ) in outcome.output
    assert not (tmp_path / "out").exists()


@pytest.fixture(autouse=True)
def _no_stray_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MAILFLOW_AUTH_USER", raising=False)
    monkeypatch.delenv("MAILFLOW_AUTH_PASSWORD", raising=False)
    yield


def test_an_imported_trace_shows_its_default_claim_and_a_wider_one_is_warned_of(tmp_path: Path) -> None:
    """The default claim (IN-3: the answer to RCPT) is one a captured session shows, so `mailflow check`
    passes what the import wrote; a --spec the session cannot show is named at once, and kept."""
    log = tmp_path / "ex061009.log"
    log.write_text(W3C_LOG)
    plain = tmp_path / "plain.yaml"
    outcome = CliRunner().invoke(import_group, ["w3c", str(log), "-o", str(plain), "--server", "EX1"])
    assert outcome.exit_code == 0, outcome.output
    assert "warning" not in outcome.output
    assert CliRunner().invoke(main, ["check", str(plain)]).exit_code == 0
    wider = tmp_path / "wider.yaml"
    outcome = CliRunner().invoke(
        import_group,
        ["w3c", str(log), "-o", str(wider), "--server", "EX1", "--spec", "IN-3", "--spec", "IN-5"],
    )
    assert outcome.exit_code == 0, outcome.output
    (warning,) = [line for line in outcome.output.splitlines() if line.startswith("warning: ")]
    assert warning.startswith(f"warning: {wider}:") and "IN-5 needs an LDAP query" in warning
    assert warning.endswith("(set --spec to what it shows)") and wider.is_file()
    checked = CliRunner().invoke(main, ["check", str(wider)])
    assert checked.exit_code == 1 and "IN-5 needs an LDAP query" in checked.output
