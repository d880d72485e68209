"""SMTP sessions from a packet capture (pcap or pcapng, told apart by their magic number), read with
dpkt: the TCP segments to or from the SMTP ports are reassembled per connection (`tcp.Reassembler`)
and each connection's two streams become one recorded session (`dialogue.pair`).

A session that starts TLS is recorded up to and including the 220 that answers STARTTLS; the rest is
encrypted, which a note in the session says. Every connection on the SMTP ports is read, whichever way it
goes: `harness.capture.importers.by_server` picks the sessions to one server out of them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import dpkt

from harness.capture.importers import BadInput
from harness.capture.importers.dialogue import pair
from harness.capture.importers.tcp import Reassembler
from harness.capture.recorded import RecordedSession

SMTP_PORTS = frozenset({25, 587})

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",  # nanosecond timestamps
    b"\xa1\xb2\x3c\x4d",
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


@dataclass
class Capture:
    """What a capture holds: its SMTP sessions, in the order the connections began, and what could not
    be imported whole (`warnings`, said to the user; `cut` when the file ends inside a record)."""

    sessions: list[RecordedSession] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cut: str | None = None  # "packet 57": where the file ends inside a record


def read(path: Path, ports: Iterable[int] = SMTP_PORTS) -> Capture:
    """Every SMTP session in the capture at `path`. A capture cut off inside a record (what a tcpdump
    killed while writing leaves) keeps the sessions that had ended before the cut; the ones still open
    there are left out, with a warning naming them, since the cut record may have held their bytes."""
    reassembler = Reassembler(frozenset(ports))
    capture = Capture()
    with path.open("rb") as f:
        frames = _Frames(path, f)
        for number, time, frame, datalink in frames:
            segment = _tcp(frame, datalink)
            if segment is None:
                continue
            source, destination, seq, flags, payload = segment
            if source[1] not in reassembler.server_ports and destination[1] not in reassembler.server_ports:
                continue
            reassembler.segment(source, destination, seq, flags, payload, time, f"packet {number}")
        capture.cut = frames.cut
    open_at_cut = []
    for connection in reassembler.connections:
        client, server = connection.streams()
        if not client.data and not server.data:
            continue  # a connection attempt that carried nothing (refused, or a port scan)
        if capture.cut is not None and not connection.closed:
            open_at_cut.append(connection)
            continue
        session = RecordedSession(
            client=connection.client[0],
            server=connection.server[0],
            server_port=connection.server[1],
            started=connection.started,
        )
        pair(session, client, server, path)
        capture.sessions.append(session)
    if capture.cut is not None:
        capture.warnings.append(
            f"{path}: the file ends inside {capture.cut} (a capture stopped while writing): "
            f"the sessions that had ended before it are imported"
            + ("" if open_at_cut else ", and none was still open")
        )
        for connection in open_at_cut:
            capture.warnings.append(
                f"{path}: left out the session {_endpoint(connection.client)} to "
                f"{_endpoint(connection.server)} (from {connection.first}): it was still open at the cut"
            )
    return capture


def _endpoint(endpoint: tuple[str, int]) -> str:
    address, port = endpoint
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class _Reads:
    """The capture file as dpkt reads it, noting a read cut short by the end of the file: dpkt hands a
    truncated last record out as if it were whole. Reading nothing where a record header would start is
    the end of the file; reading nothing where a record's data should be (its header intact) is a cut.
    (A record whose data is exactly a header's size is taken for the end: no TCP frame is that short.)"""

    def __init__(self, f: BinaryIO, header_size: int) -> None:
        self.f = f
        self.header_size = header_size
        self.short = False

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        if size > 0 and len(data) < size and (data or size != self.header_size):
            self.short = True
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


class _Frames:
    """(packet number from 1, time, frame bytes, link type) for every packet of the capture; `cut` names
    the packet the file ends inside, if it does. A record that is corrupt before the end of the file is
    refused (`BadInput`): that is no capture cut short, and what follows it cannot be trusted."""

    def __init__(self, path: Path, f: BinaryIO) -> None:
        self.path = path
        self.f = f
        self.cut: str | None = None

    def __iter__(self) -> Iterator[tuple[int, float, bytes, int]]:
        path, f = self.path, self.f
        magic = f.read(4)
        f.seek(0)
        reader: Any
        try:
            if magic == _PCAPNG_MAGIC:
                reads = _Reads(f, 8)  # a block starts with its type and length
                reader = dpkt.pcapng.Reader(reads)
            elif magic in _PCAP_MAGICS:
                reads = _Reads(f, 16)  # a record header: seconds, fraction, captured and original length
                reader = dpkt.pcap.Reader(reads)
            else:
                raise BadInput(path, "", f"not a pcap or pcapng capture (it starts with {magic!r})")
        except (ValueError, dpkt.Error) as exc:
            raise BadInput(path, "", f"unreadable capture header: {exc}") from None
        datalink = reader.datalink()
        number = 0
        packets = iter(reader)
        while True:
            reads.short = False
            try:
                time, frame = next(packets)
            except StopIteration:
                if reads.short:
                    self.cut = f"packet {number + 1}"
                return
            except (ValueError, dpkt.Error) as exc:
                # dpkt reads lazily: a corrupt record shows here, after the last good one.
                if reads.short:
                    self.cut = f"packet {number + 1}"
                    return
                reason = str(exc) or type(exc).__name__
                raise BadInput(path, f"packet {number + 1}", f"unreadable record: {reason}") from None
            number += 1
            if reads.short:
                self.cut = f"packet {number}"
                return
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
