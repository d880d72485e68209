"""The virtual server against clients that misbehave in ways a trace cannot time exactly: input left
behind a reply that closes the session, a TLS handshake that never comes, bad DSN parameter values,
and per-session state that must not leak into other sessions. Real sockets on loopback throughout."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.judge.evidence import Evidence
from harness.lab import config as lab_config
from harness.lab.runtime import Lab
from reference_mta import replies
from reference_mta.dsn import make_dsn
from reference_mta.mailmsg import MailMsg
from reference_mta.smtp_server import UNLIMITED_MESSAGE_CEILING, VirtualServerHandler
from reference_mta.topology import VirtualServer

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"
BASE = f"127.{20 + int(os.environ.get('PYTEST_XDIST_WORKER', 'gw0')[2:] or 0) % 10}.0.0"
QUICK = "Lenient TLS SMTP Virtual Server"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    # The lenient TLS virtual server gets a one-second idle time-out, so that a stalled handshake ends
    # within the test.
    text = LAB.read_text(encoding="utf-8").replace("../directory/", f"{LAB.parent.parent}/directory/")
    marker = f"        - name: {QUICK}\n"
    assert marker in text
    text = text.replace(marker, f"{marker}          connection_timeout: 1\n", 1)
    lab_file = tmp_path_factory.mktemp("hardening") / "contoso.yaml"
    lab_file.write_text(text, encoding="utf-8")
    with Lab(lab_config.load(lab_file, base=BASE, port_offset=27000)) as running:
        yield running


def virtual_server(lab: Lab, name: str = "Default SMTP Virtual Server", server: str = "EX1") -> VirtualServer:
    (found,) = (vs for vs in lab.config.organization.server(server).virtual_servers if vs.name == name)
    return found


def exchange(lab: Lab, vs: VirtualServer, *writes: bytes, wait: float = 1.5) -> bytes:
    """Each write after the server's answer to the one before (the greeting first); then everything it
    says until it closes or falls silent."""
    client = lab.config.host("internet").address
    received = b""
    with socket.create_connection((vs.address, vs.port), timeout=3, source_address=(client, 0)) as sock:
        sock.settimeout(wait)
        for data in (b"", *writes):
            if data:
                sock.sendall(data)
            with contextlib.suppress(TimeoutError):
                received += sock.recv(65536)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


def stored(lab: Lab) -> int:
    """Message files in every server's queue directory, plus deliveries made."""
    assert lab.settle(timeout=10)
    on_disk = sum(len(list(server.aq.directory.path.glob("*.eml"))) for server in lab.servers.values())
    return on_disk + len(Evidence.collect(lab).deliveries)


def test_a_chunk_left_behind_a_sync_error_is_never_run(lab: Lab) -> None:
    before = stored(lab)
    reply = exchange(
        lab,
        virtual_server(lab),
        b"EHLO x.example\r\n",
        b"MAIL FROM:<a@fabrikam.com>\r\nRCPT TO:<alice@contoso.com>\r\n"
        b"NOOP\r\nBDAT 12 LAST\r\nSubject: x\r\n",
    )
    assert replies.SYNC_ERROR.encode() in reply, reply
    assert b"2.6.0" not in reply, reply
    assert stored(lab) == before


def test_commands_behind_an_oversized_chunk_are_not_run(lab: Lab) -> None:
    before = stored(lab)
    reply = exchange(
        lab,
        virtual_server(lab),
        b"EHLO x.example\r\n",
        b"MAIL FROM:<a@fabrikam.com>\r\nRCPT TO:<alice@contoso.com>\r\nBDAT 99999999999 LAST\r\n"
        b"BDAT 31 LAST\r\nSubject: behind\r\n\r\nsmuggled\r\n",
    )
    assert replies.CHUNK_TOO_BIG.encode() in reply, reply
    assert b"2.6.0" not in reply, reply
    assert stored(lab) == before


def test_a_handshake_that_never_comes_ends_with_the_idle_time_out(lab: Lab) -> None:
    vs = virtual_server(lab, QUICK)
    client = lab.config.host("internet").address
    with socket.create_connection((vs.address, vs.port), timeout=5, source_address=(client, 0)) as sock:
        sock.recv(4096)
        sock.sendall(b"EHLO x.example\r\n")
        time.sleep(0.2)
        sock.recv(4096)
        sock.sendall(b"STARTTLS\r\n")
        assert sock.recv(4096).startswith(b"220 ")
        # No ClientHello: after the idle time-out the server must have let go of the connection.
        sock.settimeout(4)
        assert sock.recv(4096) == b""
    handler = next(h for h in lab.servers["EX1"]._handlers if h.vs.name == QUICK)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(
        s._handler_coroutine is not None and not s._handler_coroutine.done() for s in list(handler.sessions)
    ):
        time.sleep(0.05)
    assert not any(
        s._handler_coroutine is not None and not s._handler_coroutine.done() for s in list(handler.sessions)
    ), "a session task outlived its connection"


def test_the_tls_session_still_works_on_that_virtual_server(lab: Lab) -> None:
    vs = virtual_server(lab, QUICK)
    client = lab.config.host("internet").address
    context = lab.certificates.client_context()
    with socket.create_connection((vs.address, vs.port), timeout=5, source_address=(client, 0)) as raw:
        raw.recv(4096)
        raw.sendall(b"EHLO x.example\r\n")
        time.sleep(0.2)
        raw.recv(4096)
        raw.sendall(b"STARTTLS\r\n")
        assert raw.recv(4096).startswith(b"220 ")
        with context.wrap_socket(raw, server_hostname="ex1.contoso.com") as tls:
            tls.sendall(b"EHLO x.example\r\n")
            assert tls.recv(4096).startswith(b"250-ex1.contoso.com")


@pytest.mark.parametrize(
    "parameter",
    ["ENVID=abc+0D+0AX-Injected:+20yes", "ENVID=" + "x" * 101, "RET=BOGUS"],
)
def test_mail_parameters_outside_rfc_3461_are_refused(lab: Lab, parameter: str) -> None:
    mail = f"MAIL FROM:<a@fabrikam.com> {parameter}\r\n".encode()
    reply = exchange(lab, virtual_server(lab), b"EHLO x.example\r\n", mail, b"QUIT\r\n")
    assert replies.DSN_PARAMETER_INVALID.encode() in reply, reply


@pytest.mark.parametrize(
    "orcpt", ["rfc822;a+0Db@x.example", "rfc822", "rfc822;", "rfc822;j+C3+B6s@x.example"]
)
def test_orcpt_outside_rfc_3461_is_refused(lab: Lab, orcpt: str) -> None:
    rcpt = f"RCPT TO:<alice@contoso.com> ORCPT={orcpt}\r\n".encode()
    reply = exchange(
        lab, virtual_server(lab), b"EHLO x.example\r\n", b"MAIL FROM:<a@fabrikam.com>\r\n", rcpt, b"QUIT\r\n"
    )
    assert replies.DSN_PARAMETER_INVALID.encode() in reply, reply


def test_an_ndr_never_breaks_on_what_the_client_sent() -> None:
    original = MailMsg.new("ann@fabrikam.com", ["nobody@contoso.com"])
    original.properties["DSN_ENVID_VALUE"] = "id\r\nX-Injected: yes"
    recipient = original.recipients[0]
    recipient.orcpt = "rfc822;a\nb@x.example"
    recipient.fail("550 5.1.1 unknown\r\nmore", "5.1.1", 0)
    made = make_dsn(
        original,
        [recipient],
        b"Subject: x\r\n\r\nbody\r\n",
        "ex1.contoso.com",
        "pm@contoso.com",
        action="failed",
    )
    assert made is not None
    _, data = made
    assert b"\nX-Injected" not in data


def test_an_ndr_to_a_utf8_sender_names_it_in_utf8() -> None:
    original = MailMsg.new("josé@fabrikam.com", ["nobody@contoso.com"])
    recipient = original.recipients[0]
    recipient.fail("550 5.1.1 unknown", "5.1.1", 0)
    made = make_dsn(
        original,
        [recipient],
        "Subject: café\r\n\r\nbody\r\n".encode(),
        "ex1.contoso.com",
        "pm@contoso.com",
        action="failed",
    )
    assert made is not None
    _, data = made
    assert "To: josé@fabrikam.com\r\n".encode() in data  # not an RFC 2047 encoded word (SEC-1)
    assert b"message/global-delivery-status" in data and b"message/global-headers" in data
    assert "Subject: café".encode() in data


def test_sessions_do_not_share_command_size_limits(lab: Lab) -> None:
    handler: VirtualServerHandler = lab.servers["EX1"]._handlers[0]
    first, second = handler.protocol(), handler.protocol()
    first.command_size_limits["MAIL"] += 1000
    assert second.command_size_limits["MAIL"] == second.command_size_limit == 510


def test_no_size_limit_still_has_a_ceiling(lab: Lab) -> None:
    handler = lab.servers["EX1"]._handlers[0]
    unlimited = VirtualServerHandler(
        handler.organization,
        handler.server,
        dataclasses.replace(handler.vs, max_message_kb=0),
        handler.aq,
    )
    assert unlimited.protocol().data_size_limit == UNLIMITED_MESSAGE_CEILING
