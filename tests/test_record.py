"""The recording proxy between a real SMTP client and a lab server: it passes the session on unchanged,
records it, keeps AUTH secrets out of what it writes, terminates STARTTLS on both sides, and the trace it
writes replays green against the reference MTA in a fresh lab."""

from __future__ import annotations

import asyncio
import base64
import os
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import targets
from harness.capture.importers.to_trace import Converted, to_trace
from harness.capture.proxy import RecordingProxy
from harness.capture.recorded import RecordedSession
from harness.lab import config as lab_config
from harness.lab.runtime import Lab
from harness.run.runner import run_trace
from harness.smtp.masking import Normalizer

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
BASE = f"127.{190 + WORKER % 10}.0.0"
PROXY_PORT = 26000 + WORKER


class Recording:
    """A proxy in front of EX1 on its own thread's event loop, from the Internet host's address."""

    def __init__(self, lab: Lab) -> None:
        self.sessions: list[RecordedSession] = []
        self.finished = threading.Event()
        ex1 = lab.config.organization.server("EX1")
        self.address = lab.config.host("internet").address
        server_tls = lab.certificates.server_context(ex1.fqdn)
        client_tls = lab.certificates.client_context()
        client_tls.check_hostname = False
        vs = ex1.default_virtual_server
        self.proxy = RecordingProxy(
            (vs.address, vs.port), self._keep, server_tls, client_tls, ex1.fqdn, self.address
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _keep(self, session: RecordedSession) -> None:
        self.sessions.append(session)
        self.finished.set()

    def __enter__(self) -> Recording:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(self.address, PROXY_PORT), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def client(self) -> smtplib.SMTP:
        return smtplib.SMTP(self.address, PROXY_PORT, source_address=(self.address, 0), timeout=10)


def converted(session: RecordedSession, trace_id: str) -> Converted:
    config = lab_config.load(LAB)
    return to_trace(
        [session], trace_id=trace_id, title="t", source="the test", lab=str(LAB), config=config, server="EX1"
    )


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(lab_config.load(LAB, base=BASE, port_offset=28000), tmp_path) as running:
        yield running


def test_a_recorded_session_replays_green_in_a_fresh_lab(lab: Lab, tmp_path: Path) -> None:
    with Recording(lab) as recording, recording.client() as smtp:
        smtp.ehlo("mail-out.fabrikam.com")
        assert (
            smtp.sendmail("ann@fabrikam.com", ["alice@contoso.com"], "Subject: recorded\r\n\r\n.dot\r\n")
            == {}
        )
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail("ann@fabrikam.com", ["nancy@northwind.example"], "Subject: relay\r\n\r\nx\r\n")
        smtp.quit()
        assert recording.finished.wait(10)
    (session,) = recording.sessions
    sent = [(e.sent or "").upper().split(" SIZE=")[0] for e in session.exchanges]
    assert sent[:4] == [
        "",
        "EHLO MAIL-OUT.FABRIKAM.COM",
        "MAIL FROM:<ANN@FABRIKAM.COM>",
        "RCPT TO:<ALICE@CONTOSO.COM>",
    ]
    assert session.exchanges[5].message == b"Subject: recorded\r\n\r\n..dot\r\n"  # as on the wire
    trace = converted(session, "recorded/example").write(tmp_path / "example.yaml")
    text = (tmp_path / "example.yaml").read_text()
    assert "expect: {code: 220, masked: 220 <host-1> <banner>}" in text and "<queue-id-1>" in text
    result = run_trace(trace, targets.REFERENCE)
    assert result.passed, "\n".join(result.failures())


def test_starttls_is_terminated_and_auth_secrets_are_never_written(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "Alice-P@ss1"
    with Recording(lab) as recording, recording.client() as smtp:
        smtp.ehlo("wks01.contoso.com")
        context = lab.certificates.client_context()
        context.check_hostname = False
        assert smtp.starttls(context=context)[0] == 220
        smtp.ehlo("wks01.contoso.com")
        smtp.login("alice", secret)
        assert (
            smtp.sendmail("alice@contoso.com", ["bob@contoso.com"], "Subject: inside TLS\r\n\r\nx\r\n") == {}
        )
        smtp.quit()
        assert recording.finished.wait(10)
    (session,) = recording.sessions
    assert [e.tls for e in session.exchanges].count(True) == 1
    path = tmp_path / "tls.yaml"
    trace = converted(session, "recorded/tls").write(path)
    written = path.read_text()
    for leak in (secret, base64.b64encode(f"\0alice\0{secret}".encode()).decode(), "alice\0"):
        assert leak not in written and leak not in repr(session)
    assert "starttls: true" in written and "${MAILFLOW_AUTH_PASSWORD}" in written
    monkeypatch.setenv("MAILFLOW_AUTH_USER", "alice")
    monkeypatch.setenv("MAILFLOW_AUTH_PASSWORD", secret)
    result = run_trace(trace, targets.REFERENCE)
    assert result.passed, "\n".join(result.failures())
    transcripts = "\n".join(run.result.transcript for run in result.sessions)
    assert secret not in transcripts and "<credentials from the environment>" in transcripts


def test_masks_keep_identity_across_a_trace() -> None:
    normalizer = Normalizer()
    first = normalizer.reply(["250 2.6.0 <EX1F64ED19C956C4D21@ex1.contoso.com> Queued mail for delivery"])
    again = normalizer.reply(["250 2.6.0 <EX1F64ED19C956C4D21@ex1.contoso.com> Queued mail for delivery"])
    other = normalizer.reply(["250 2.6.0 <EX10000000000000001@ex1.contoso.com> Queued mail for delivery"])
    assert first == again != other
    assert "<queue-id-1>" in first and "<queue-id-2>" in other


def test_ports_after_addresses_are_placeholders_too() -> None:
    masked = Normalizer().reply(["250-ex1.contoso.com Hello [198.18.10.200]:41234", "250 at 12:30"])
    assert masked == "250-<host-1> Hello [<address-1>]:<port-1>\n250 at 12:30"


def test_a_client_that_paused_is_replayed_with_its_pause(lab: Lab, tmp_path: Path) -> None:
    with Recording(lab) as recording, recording.client() as smtp:
        smtp.ehlo("mail-out.fabrikam.com")
        time.sleep(1.3)
        smtp.noop()
        smtp.quit()
        assert recording.finished.wait(10)
    (session,) = recording.sessions
    script = converted(session, "recorded/slow").document["sessions"][0]["script"]
    (where,) = [number for number, step in enumerate(script) if "wait" in step]
    assert 1.3 <= script[where]["wait"] < 3 and script[where + 1] == {"send": "noop"}


def raw_session(recording: Recording, data: bytes) -> bytes:
    """What the server says to a client that says EHLO, then writes `data` at once and half-closes
    (EHLO ends a pipelined group, RFC 2920: the rest may go together)."""
    with socket.create_connection((recording.address, PROXY_PORT), timeout=10) as sock:
        stream = sock.makefile("rb")
        stream.readline()  # the greeting
        sock.sendall(b"EHLO a.example\r\n")
        while stream.readline()[3:4] != b" ":
            pass
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return stream.read()


def test_a_client_that_pipelines_and_half_closes_gets_and_leaves_every_reply(lab: Lab) -> None:
    with Recording(lab) as recording:
        replies = raw_session(recording, b"MAIL FROM:<ann@fabrikam.com>\r\nQUIT\r\n")
        assert recording.finished.wait(10)
    assert replies.startswith(b"250 ") and b"\r\n221 " in replies
    (session,) = recording.sessions
    assert [e.sent for e in session.exchanges] == [
        None,
        "EHLO a.example",
        "MAIL FROM:<ann@fabrikam.com>",
        "QUIT",
    ]
    assert [e.pipelined for e in session.exchanges] == [False, False, False, True]


def test_bytes_sent_in_clear_after_starttls_are_dropped_not_relayed_inside_tls(lab: Lab) -> None:
    with Recording(lab) as recording:
        raw_session(recording, b"STARTTLS\r\nRSET injected\r\n")
        assert recording.finished.wait(10)
    (session,) = recording.sessions
    assert not [e for e in session.exchanges if (e.sent or "").startswith("RSET")]
    assert any("after STARTTLS were dropped" in note for note in session.notes)


def test_only_crlf_dot_crlf_ends_a_recorded_message(lab: Lab) -> None:
    smuggled = b"Subject: s\r\n\r\nhello\n.\nRSET\r\n.\r\n"
    with Recording(lab) as recording:
        raw_session(
            recording,
            b"MAIL FROM:<ann@fabrikam.com>\r\nRCPT TO:<alice@contoso.com>\r\nDATA\r\n"
            + smuggled
            + b"QUIT\r\n",
        )
        assert recording.finished.wait(10)
    (session,) = recording.sessions
    body = next(e for e in session.exchanges if e.message is not None)
    assert body.message == smuggled.removesuffix(b".\r\n") and body.reply[0].startswith("250")
    assert session.exchanges[-1].sent == "QUIT" and session.exchanges[-1].reply[0].startswith("221")
