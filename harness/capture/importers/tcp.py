"""A small TCP reassembler: enough to read SMTP out of a capture, not a TCP stack.

Segments are kept by their offset in their direction's byte stream (sequence number minus the initial
one, modulo 2^32, so a wrapping sequence space is no problem) and put in order only when the stream is
read, so segments captured out of order, retransmitted whole (duplicates) or in part (overlaps) give
the stream the sender wrote. Where two segments disagree about the same bytes, the one captured first
wins: that is what the receiver most likely took. A hole that no segment fills (a packet the capture
missed) ends the stream there, with a note: what follows it cannot be split into commands reliably.

A connection is a SYN's 4-tuple; a new SYN on a 4-tuple whose connection has ended (FIN or RST), or
with another initial sequence number, starts a new connection, so a client port reused later in the
capture makes a second session rather than a mix of two.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from harness.capture.importers.dialogue import Stream

Endpoint = tuple[str, int]

_SEQ = 1 << 32


@dataclass
class Direction:
    """One direction of a connection: its segments as captured, and its SYN's sequence number."""

    isn: int | None = None  # the SYN's sequence number; the first data byte is isn + 1
    segments: list[tuple[int, bytes, float, str]] = field(default_factory=list)  # seq, payload, time, where
    fin: bool = False

    def segment(self, seq: int, payload: bytes, time: float, where: str) -> None:
        if payload:
            self.segments.append((seq, payload, time, where))

    def stream(self, name: str) -> Stream:
        """The bytes in order, from the first one up to the first hole."""
        stream = Stream()
        if not self.segments:
            return stream
        if self.isn is None:
            # The capture began inside the connection: count from the lowest sequence number captured
            # (the first segment captured may be a later one, or a retransmission of an earlier one).
            reference = self.segments[0][0]
            base = min(((seq - reference) % _SEQ for seq, *_ in self.segments), key=_signed)
            base = (reference + _signed(base)) % _SEQ
            stream.notes.append(f"the capture began inside the connection: the {name} stream starts mid-way")
        else:
            base = (self.isn + 1) % _SEQ
        pieces = _Pieces()
        for seq, payload, time, where in self.segments:  # in capture order: the first one captured wins
            offset = (seq - base) % _SEQ
            if offset < _SEQ // 2:  # else it lies before the first byte: a retransmission of older data
                pieces.add(offset, payload, time, where)
        cursor = 0
        for offset, payload, time, where in pieces.items:
            if offset > cursor:
                stream.notes.append(
                    f"the capture misses {offset - cursor} bytes of the {name} stream after byte {cursor} "
                    f"(before {where}): the session is imported up to there"
                )
                break
            stream.add(payload, time, where)
            cursor = offset + len(payload)
        return stream


def _signed(offset: int) -> int:
    """A sequence-number difference as a signed one (RFC 1982 serial number arithmetic)."""
    return offset - _SEQ if offset >= _SEQ // 2 else offset


class _Pieces:
    """Non-overlapping pieces of a byte stream, sorted by offset. A segment adds only the bytes no piece
    holds yet, so where two segments disagree about the same bytes the one added first wins."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.items: list[tuple[int, bytes, float, str]] = []  # offset, bytes, time, where

    def add(self, offset: int, payload: bytes, time: float, where: str) -> None:
        end = offset + len(payload)
        position = offset
        index = bisect.bisect_right(self.starts, position) - 1
        if index >= 0:
            start, held = self.starts[index], self.items[index][1]
            position = max(position, start + len(held))
        index += 1
        while position < end:
            following = self.starts[index] if index < len(self.starts) else end
            gap_end = min(end, following)
            if gap_end > position:
                self.starts.insert(index, position)
                self.items.insert(
                    index, (position, payload[position - offset : gap_end - offset], time, where)
                )
                index += 1
            if index >= len(self.starts):
                break
            position = max(gap_end, self.starts[index] + len(self.items[index][1]))
            index += 1


@dataclass
class Connection:
    client: Endpoint
    server: Endpoint
    started: float
    to_server: Direction = field(default_factory=Direction)
    to_client: Direction = field(default_factory=Direction)
    closed: bool = False  # FIN or RST seen: a new SYN on this 4-tuple is a new connection
    first: str = ""  # where the capture shows it first ("packet 12")

    def streams(self) -> tuple[Stream, Stream]:
        return self.to_server.stream("client"), self.to_client.stream("server")


class Reassembler:
    """Feed it TCP segments in capture order; `connections` lists them in the order they began."""

    def __init__(self, server_ports: frozenset[int]) -> None:
        self.server_ports = server_ports
        self.connections: list[Connection] = []
        self._open: dict[tuple[Endpoint, Endpoint], Connection] = {}

    def segment(
        self,
        source: Endpoint,
        destination: Endpoint,
        seq: int,
        flags: str,
        payload: bytes,
        time: float,
        where: str,
    ) -> None:
        """One TCP segment; `flags` holds S, A, F, R as set (e.g. "SA")."""
        syn, ack = "S" in flags, "A" in flags
        if syn and not ack:
            client, server = source, destination
        elif syn and ack:
            client, server = destination, source
        elif destination[1] in self.server_ports:
            client, server = source, destination
        elif source[1] in self.server_ports:
            client, server = destination, source
        else:
            return
        key = (client, server)
        connection = self._open.get(key)
        if syn and not ack:
            known = connection.to_server.isn if connection is not None else None
            if connection is None or connection.closed or (known is not None and known != seq):
                connection = Connection(client, server, time, first=where)
                self._open[key] = connection
                self.connections.append(connection)
        if connection is None:
            connection = Connection(client, server, time, first=where)
            self._open[key] = connection
            self.connections.append(connection)
        direction = connection.to_server if source == client else connection.to_client
        if syn:
            direction.isn = seq
            seq = (seq + 1) % _SEQ  # a SYN takes one sequence number
        direction.segment(seq, payload, time, where)
        if "F" in flags or "R" in flags:
            direction.fin = True
            connection.closed = True
