"""Every reply of a virtual server, one line or many, leaves in one write: one TCP segment on loopback.

A client that reads once per command (as relay scanners do) must find the whole reply to that command
in that read, and nothing of the next. The server's side is counted from the client's socket: Linux's
TCP_INFO says how many segments carrying data arrived (tcpi_data_segs_in), and asyncio sets TCP_NODELAY
on the server's socket, so each write the server makes is a segment of its own. Real sockets, a real lab.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.lab import config as lab_config
from harness.lab.runtime import Lab
from reference_mta.topology import VirtualServer

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
BASE = f"127.{150 + WORKER % 10}.4.0"
# struct tcp_info (linux/tcp.h): tcpi_data_segs_in follows the counters up to min_rtt (Linux 4.6).
_DATA_SEGS_IN = 152

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO's segment counters are Linux's")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(lab_config.load(LAB, base=BASE, port_offset=27500)) as running:
        yield running


def default_virtual_server(lab: Lab) -> VirtualServer:
    return lab.config.organization.server("EX1").default_virtual_server


def data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    value: int = struct.unpack_from("I", info, _DATA_SEGS_IN)[0]
    return value


def read_reply(sock: socket.socket, deadline: float = 5.0) -> bytes:
    """Read until the reply's last line (a code followed by a space) has come, however it is cut."""
    received = b""
    until = time.monotonic() + deadline
    while not _complete(received):
        assert time.monotonic() < until, f"no complete reply within {deadline} s: {received!r}"
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection mid-reply: {received!r}"
        received += chunk
    return received


def _complete(data: bytes) -> bool:
    if not data.endswith(b"\r\n"):
        return False
    last = data[:-2].split(b"\r\n")[-1]
    return len(last) >= 4 and last[:3].isdigit() and last[3:4] == b" "


def reply_lines(data: bytes) -> list[bytes]:
    return data[:-2].split(b"\r\n")


def connect(lab: Lab) -> socket.socket:
    vs = default_virtual_server(lab)
    client = lab.config.host("internet").address
    return socket.create_connection((vs.address, vs.port), timeout=5, source_address=(client, 0))


@pytest.mark.parametrize(
    ("command", "code"),
    [(b"EHLO scanner.example", b"250"), (b"HELP", b"214")],
)
def test_a_multi_line_reply_is_one_segment_and_one_read(lab: Lab, command: bytes, code: bytes) -> None:
    with connect(lab) as sock:
        read_reply(sock)  # the greeting
        before = data_segments_in(sock)
        sock.sendall(command + b"\r\n")
        # One recv with room for any reply: it must hold the whole multi-line reply.
        first = sock.recv(65536)
        assert _complete(first), f"the first read after {command!r} holds part of the reply: {first!r}"
        lines = reply_lines(first)
        assert len(lines) > 1, first
        assert all(line[:3] == code for line in lines), first
        assert all(line[3:4] == b"-" for line in lines[:-1]), first
        # All of it arrived in one segment: the server wrote it once.
        assert data_segments_in(sock) - before == 1, f"{command!r}'s reply came in several segments"


def test_each_single_line_reply_is_one_segment(lab: Lab) -> None:
    with connect(lab) as sock:
        read_reply(sock)
        for command in (b"HELO scanner.example", b"NOOP", b"MAIL FROM:<scan@scanner.example>", b"RSET"):
            before = data_segments_in(sock)
            sock.sendall(command + b"\r\n")
            reply = read_reply(sock)
            assert len(reply_lines(reply)) == 1, reply
            assert data_segments_in(sock) - before == 1, command


def test_a_scanner_reading_once_per_command_stays_in_step(lab: Lab) -> None:
    """The relay probe of a scanner that reads exactly once per command and pairs each read with the
    command it sent: every relay attempt must be seen refused, with its own address, by its own read."""
    probes = [
        "victim@fabrikam.com",
        "victim@fourthcoffee.com",
        "@mail.contoso.com:victim@northwind.example",
        "relaytest@scanner.example",
    ]
    dialogue: list[tuple[bytes, bytes, bytes | None]] = [
        (b"EHLO scanner.example", b"250", b"ENHANCEDSTATUSCODES"),
        (b"HELP", b"214", None),
        (b"MAIL FROM:<scan@scanner.example>", b"250", None),
    ]
    for probe in probes:
        dialogue.append((f"RCPT TO:<{probe}>".encode(), b"550", probe.rpartition(":")[2].encode()))
    dialogue += [(b"RSET", b"250", None), (b"EHLO scanner.example", b"250", None), (b"QUIT", b"221", None)]
    with connect(lab) as sock:
        assert sock.recv(65536).startswith(b"220 ")
        for command, code, mentions in dialogue:
            sock.sendall(command + b"\r\n")
            seen = sock.recv(65536)  # exactly one read per command, as the scanner does
            assert _complete(seen), f"{command!r}: the read holds part of a reply: {seen!r}"
            lines = reply_lines(seen)
            assert all(line[:3] == code for line in lines), f"{command!r} out of step: {seen!r}"
            assert all(line[3:4] == b"-" for line in lines[:-1]), f"{command!r}: two replies in one read"
            if mentions is not None:
                assert mentions in seen, f"{command!r}: {seen!r}"
