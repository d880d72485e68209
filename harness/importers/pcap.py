"""SMTP sessions from a packet capture (pcap or pcapng, told apart by their magic number), read with
dpkt: the TCP segments to or from the SMTP ports are reassembled per connection (`tcp.Reassembler`)
and each connection's two streams become one recorded session (`dialogue.pair`).

A session that starts TLS is recorded up to and including the 220 that answers STARTTLS; the rest is
encrypted, which a note in the session says.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import dpkt

from harness.importers import BadInput
from harness.importers.dialogue import pair
from harness.importers.tcp import Reassembler
from harness.recorded import RecordedSession

SMTP_PORTS = frozenset({25, 587})

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",  # nanosecond timestamps
    b"\xa1\xb2\x3c\x4d",
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


def read(path: Path, ports: Iterable[int] = SMTP_PORTS) -> list[RecordedSession]:
    """Every SMTP session in the capture at `path`, in the order the connections began."""
    reassembler = Reassembler(frozenset(ports))
    with path.open("rb") as f:
        for number, time, frame, datalink in _frames(path, f):
            segment = _tcp(frame, datalink)
            if segment is None:
                continue
            source, destination, seq, flags, payload = segment
            if source[1] not in reassembler.server_ports and destination[1] not in reassembler.server_ports:
                continue
            reassembler.segment(source, destination, seq, flags, payload, time, f"packet {number}")
    sessions = []
    for connection in reassembler.connections:
        client, server = connection.streams()
        if not client.data and not server.data:
            continue  # a connection attempt that carried nothing (refused, or a port scan)
        session = RecordedSession(
            client=connection.client[0],
            server=connection.server[0],
            server_port=connection.server[1],
            started=connection.started,
        )
        pair(session, client, server, path)
        sessions.append(session)
    return sessions


class _Reads:
    """The capture file as dpkt reads it, noting a read cut short by the end of the file: dpkt hands a
    truncated last record out as if it were whole."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.short = False

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        if size > 0 and 0 < len(data) < size:
            self.short = True
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def _frames(path: Path, f: BinaryIO) -> Iterator[tuple[int, float, bytes, int]]:
    """(packet number from 1, time, frame bytes, link type) for every packet of the capture."""
    magic = f.read(4)
    f.seek(0)
    reads = _Reads(f)
    reader: Any
    try:
        if magic == _PCAPNG_MAGIC:
            reader = dpkt.pcapng.Reader(reads)
        elif magic in _PCAP_MAGICS:
            reader = dpkt.pcap.Reader(reads)
        else:
            raise BadInput(path, "", f"not a pcap or pcapng capture (it starts with {magic!r})")
    except (ValueError, dpkt.Error) as exc:
        raise BadInput(path, "", f"unreadable capture header: {exc}") from None
    datalink = reader.datalink()
    number = 0
    packets = iter(reader)
    while True:
        try:
            time, frame = next(packets)
        except StopIteration:
            return
        except (ValueError, dpkt.Error) as exc:
            # dpkt reads lazily: a corrupt record shows here, after the last good one.
            reason = str(exc) or type(exc).__name__
            raise BadInput(path, f"packet {number + 1}", f"unreadable record: {reason}") from None
        number += 1
        if reads.short:
            raise BadInput(path, f"packet {number}", "unreadable record: the file ends inside it")
        yield number, float(time), bytes(frame), datalink


def _tcp(frame: bytes, datalink: int) -> tuple[tuple[str, int], tuple[str, int], int, str, bytes] | None:
    """The TCP segment in a frame: (source, destination, seq, flags, payload), or None."""
    try:
        ip = _network_layer(frame, datalink)
    except (dpkt.Error, ValueError, IndexError):
        return None  # not IP, or cut short by the capture's snap length: nothing SMTP can use
    if ip is None or not isinstance(ip.data, dpkt.tcp.TCP):
        return None
    tcp = ip.data
    family = socket.AF_INET6 if isinstance(ip, dpkt.ip6.IP6) else socket.AF_INET
    source = (socket.inet_ntop(family, ip.src), tcp.sport)
    destination = (socket.inet_ntop(family, ip.dst), tcp.dport)
    flags = "".join(
        letter
        for letter, bit in (
            ("S", dpkt.tcp.TH_SYN),
            ("A", dpkt.tcp.TH_ACK),
            ("F", dpkt.tcp.TH_FIN),
            ("R", dpkt.tcp.TH_RST),
        )
        if tcp.flags & bit
    )
    return source, destination, tcp.seq, flags, bytes(tcp.data)


def _network_layer(frame: bytes, datalink: int) -> Any:
    link: Any
    if datalink == dpkt.pcap.DLT_EN10MB:
        link = dpkt.ethernet.Ethernet(frame)
    elif datalink == dpkt.pcap.DLT_LINUX_SLL:
        link = dpkt.sll.SLL(frame)
    elif datalink == dpkt.pcap.DLT_LINUX_SLL2:
        link = dpkt.sll2.SLL2(frame)
    elif datalink in (dpkt.pcap.DLT_NULL, dpkt.pcap.DLT_LOOP):
        link = dpkt.loopback.Loopback(frame)
    elif datalink in (dpkt.pcap.DLT_RAW, 14, 101, dpkt.pcap.DLT_IPV4, dpkt.pcap.DLT_IPV6):
        # Raw IP: the version nibble says which.
        return dpkt.ip6.IP6(frame) if frame[:1] and frame[0] >> 4 == 6 else dpkt.ip.IP(frame)
    else:
        return None
    network = link.data
    return network if isinstance(network, dpkt.ip.IP | dpkt.ip6.IP6) else None
