"""The lab's fake DNS server: a small authoritative server for MX, A, AAAA, PTR, TXT and CNAME data.

MTAs under test resolve next hops, check reverse DNS and evaluate SPF through real DNS queries, so the
lab must answer them over real UDP and TCP sockets from a loopback address, with data each trace
declares, and must be able to misbehave on demand (slow answers, SERVFAIL, silence) to exercise the
MTA's retry paths. Every query is logged so traces can assert what the MTA asked. dnspython does all
message parsing and building; this module only decides what to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.reversename
import dns.rrset

from harness.lab.addresses import check_endpoint
from harness.lab.bounded_log import DEFAULT_LIMIT, BoundedLog

__all__ = ["FakeDNS", "Fault", "Query", "Record", "check_record", "ptr_name"]

_logger = logging.getLogger(__name__)

# Longer CNAME chains than this are a mistake in the lab data (or a loop), not something to test.
_MAX_CNAME_CHAIN = 8
# RFC 7766 asks servers to drop idle TCP clients; a lab MTA that wedges must not pin a task forever.
_TCP_IDLE_TIMEOUT = 30.0
_TCP_MAX_MESSAGE = 65535
_UDP_DEFAULT_PAYLOAD = 512
_NEGATIVE_TTL = 300
_ALL_TYPES = "*"


@dataclass(frozen=True)
class Fault:
    """Misbehaviour for queries of one (name, type): delay, then answer, SERVFAIL, or stay silent."""

    delay: float = 0.0
    servfail: bool = False
    no_answer: bool = False


@dataclass(frozen=True)
class Record:
    """One resource record in presentation format.

    Relative names in ``value`` are taken as absolute. A TXT value that does not start with a double
    quote is one literal string ("v=spf1 -all" stays one string, split in 255-byte pieces if long);
    a quoted value is parsed as zone-file text, so '"a" "b"' gives two strings.
    """

    name: str
    rtype: str
    value: str
    ttl: int = 300
    fault: Fault | None = None


@dataclass(frozen=True)
class Query:
    """One logged query and what was answered ("NONE" when nothing was sent)."""

    time: float
    client: str
    transport: str
    name: str
    rtype: str
    rcode: str
    answers: tuple[str, ...]


@dataclass
class _LogSlot:
    # Reserved at arrival so the log keeps arrival order although delayed answers finish later.
    query: Query | None = None


@dataclass
class _Outcome:
    rcode: str = "NONE"
    answers: tuple[str, ...] = field(default_factory=tuple)


Send = Callable[[bytes], Awaitable[None]]


def ptr_name(ip: str) -> str:
    """The PTR owner name for an IPv4 or IPv6 address, e.g. "11.0.77.127.in-addr.arpa"."""
    return dns.reversename.from_address(ip).to_text(omit_final_dot=True)


def _absolute(name: str) -> dns.name.Name:
    return dns.name.from_text(name, origin=dns.name.root)


def _log_name(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _rtype_text(rtype: str) -> str:
    rtype = rtype.strip().upper()
    if rtype == _ALL_TYPES:
        return rtype
    try:
        rdtype = dns.rdatatype.from_text(rtype)
    except dns.rdatatype.UnknownRdatatype:
        raise ValueError(f"unknown record type {rtype!r}") from None
    return dns.rdatatype.to_text(rdtype)


def _make_rdata(record: Record, rdtype: dns.rdatatype.RdataType) -> dns.rdata.Rdata:
    if rdtype == dns.rdatatype.TXT and not record.value.startswith('"'):
        raw = record.value.encode()
        chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
        return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)
    return dns.rdata.from_text(
        dns.rdataclass.IN, rdtype, record.value, origin=dns.name.root, relativize=False
    )


def check_record(record: Record) -> None:
    """Raise ValueError, saying why, if the server could not serve `record`: its type and value are
    parsed exactly as when the lab starts, so a lab file can be rejected when it is loaded instead.
    (Conflicts between records, such as a CNAME beside other data, are still found at start.)"""
    rtype = _rtype_text(record.rtype)
    if rtype == _ALL_TYPES:
        raise ValueError("'*' is only valid for faults")
    try:
        _make_rdata(record, dns.rdatatype.from_text(rtype))
    except dns.exception.DNSException as exc:
        raise ValueError(str(exc) or exc.__class__.__name__) from exc


@dataclass(frozen=True)
class _Zone:
    """What a lab's DNS serves: rrsets by owner and type, the names that exist (empty non-terminals
    included) and the faults its records carry."""

    data: dict[dns.name.Name, dict[dns.rdatatype.RdataType, dns.rrset.RRset]]
    existing: frozenset[dns.name.Name]
    faults: dict[tuple[dns.name.Name, str], Fault]

    @staticmethod
    @lru_cache(maxsize=32)
    def of(records: tuple[Record, ...], zones: tuple[dns.name.Name, ...]) -> _Zone:
        builder = _ZoneBuilder()
        for record in records:
            builder.add(record)
        for zone in zones:
            apex = builder.data.setdefault(zone, {})
            if dns.rdatatype.CNAME in apex:
                raise ValueError(f"zone apex {zone} cannot have a CNAME")
            apex.setdefault(dns.rdatatype.SOA, _synthetic_soa(zone))
        # Empty non-terminals (contoso.com when only mail.contoso.com has data) exist in real DNS and
        # answer NODATA, not NXDOMAIN; an MTA treats the two differently, so the lab must match.
        existing: set[dns.name.Name] = set()
        for owner in builder.data:
            while owner not in existing:
                existing.add(owner)
                if owner == dns.name.root:
                    break
                owner = owner.parent()
        return _Zone(builder.data, frozenset(existing), builder.faults)


def _synthetic_soa(zone: dns.name.Name) -> dns.rrset.RRset:
    apex = zone.to_text()
    soa = f"ns.{apex} hostmaster.{apex} 1 3600 600 86400 {_NEGATIVE_TTL}".replace("..", ".")
    return dns.rrset.from_text(zone, _NEGATIVE_TTL, dns.rdataclass.IN, dns.rdatatype.SOA, soa)


class _ZoneBuilder:
    def __init__(self) -> None:
        self.data: dict[dns.name.Name, dict[dns.rdatatype.RdataType, dns.rrset.RRset]] = {}
        self.faults: dict[tuple[dns.name.Name, str], Fault] = {}

    def add(self, record: Record) -> None:
        try:
            owner = _absolute(record.name)
            rtype = _rtype_text(record.rtype)
            if rtype == _ALL_TYPES:
                raise ValueError("'*' is only valid for faults")
            rdtype = dns.rdatatype.from_text(rtype)
            rdata = _make_rdata(record, rdtype)
        except (ValueError, dns.exception.DNSException) as exc:
            raise ValueError(f"bad record {record}: {exc}") from exc
        node = self.data.setdefault(owner, {})
        if (rdtype == dns.rdatatype.CNAME) != (dns.rdatatype.CNAME in node) and node:
            raise ValueError(f"bad record {record}: a CNAME cannot coexist with other data at its name")
        rrset = node.setdefault(rdtype, dns.rrset.RRset(owner, dns.rdataclass.IN, rdtype))
        if rdtype == dns.rdatatype.CNAME and len(rrset) and rdata not in rrset:
            raise ValueError(f"bad record {record}: a name can have only one CNAME")
        rrset.add(rdata, record.ttl)
        if record.fault is not None:
            previous = self.faults.setdefault((owner, rtype), record.fault)
            if previous != record.fault:
                raise ValueError(f"bad record {record}: conflicting faults for {record.name} {rtype}")


class FakeDNS:
    """An authoritative DNS server for the lab, on UDP and TCP at one loopback address and port.

    It answers every name it is asked about as if it owned it: unknown names get NXDOMAIN. Names under
    ``authoritative_zones`` also get a synthetic SOA (at the apex, and in the authority section of
    negative answers) so resolvers can cache negative answers as they would on the internet.
    Not thread-safe: call its methods from the event loop it runs on.
    """

    def __init__(
        self,
        address: str,
        port: int,
        records: Iterable[Record],
        authoritative_zones: Iterable[str] = (),
        log_limit: int = DEFAULT_LIMIT,
    ) -> None:
        check_endpoint(address, port)
        self._address = address
        self._port = port
        self._zones = sorted({_absolute(z) for z in authoritative_zones}, key=len, reverse=True)
        # Read-only once built, so labs of one process that serve the same records share it: parsing
        # a lab's records costs more than the rest of a lab's start.
        zone = _Zone.of(tuple(records), tuple(self._zones))
        self._data = zone.data
        self._existing = zone.existing
        self._faults: dict[tuple[dns.name.Name, str], Fault] = dict(zone.faults)  # set_fault changes it
        self._log: BoundedLog[_LogSlot] = BoundedLog(log_limit)
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return self._address

    @property
    def port(self) -> int:
        """The port in use; after start() this is the bound port even if 0 was asked for."""
        return self._port

    @property
    def queries(self) -> list[Query]:
        """Answered (or deliberately unanswered) queries in arrival order; in-flight ones are omitted."""
        return [slot.query for slot in self._log.entries() if slot.query is not None]

    @property
    def queries_dropped(self) -> int:
        """The oldest queries dropped from the log to keep it within its limit."""
        return self._log.dropped

    def clear_log(self) -> None:
        self._log.clear()

    def set_fault(self, name: str, rtype: str, fault: Fault | None) -> None:
        """Set or (with None) clear the fault for (name, rtype); rtype "*" covers every type of name.

        Takes effect for queries arriving afterwards. Replaces any fault given on a Record.
        """
        key = (_absolute(name), _rtype_text(rtype))
        if fault is None:
            self._faults.pop(key, None)
        else:
            self._faults[key] = fault

    async def start(self) -> None:
        if self._udp is not None:
            raise RuntimeError("FakeDNS already started")
        loop = asyncio.get_running_loop()
        # UDP first so that with port 0 TCP can take the same port number.
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UDPProtocol(self), local_addr=(self._address, self._port)
        )
        self._udp = transport
        self._port = transport.get_extra_info("sockname")[1]
        try:
            self._tcp = await asyncio.start_server(self._on_tcp, self._address, self._port)
        except OSError:
            transport.close()
            self._udp = None
            raise

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Connection handlers are ended by closing their sockets rather than cancelled: asyncio's
        # stream machinery (3.11) raises from its done-callback when a handler task is cancelled.
        for writer in list(self._writers):
            writer.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)
        if self._tcp is not None:
            await self._tcp.wait_closed()
            self._tcp = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_datagram(self, wire: bytes, addr: tuple[str, int]) -> None:
        async def send(out: bytes) -> None:
            if self._udp is not None and not self._udp.is_closing():
                self._udp.sendto(out, addr)

        self._spawn(self._serve(wire, addr[0], "udp", send))

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        this = asyncio.current_task()
        if this is not None:
            self._connections.add(this)
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else "?"

        async def send(out: bytes) -> None:
            if writer.is_closing():
                return
            writer.write(struct.pack("!H", len(out)) + out)
            with contextlib.suppress(ConnectionError):
                await writer.drain()

        owed: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    header = await asyncio.wait_for(reader.readexactly(2), _TCP_IDLE_TIMEOUT)
                    wire = await asyncio.wait_for(
                        reader.readexactly(struct.unpack("!H", header)[0]), _TCP_IDLE_TIMEOUT
                    )
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    break
                task = self._spawn(self._serve(wire, client, "tcp", send))
                owed.add(task)
                task.add_done_callback(owed.discard)
            # A client may half-close after its last query; let answers already owed go out first.
            if owed:
                await asyncio.wait(owed, timeout=_TCP_IDLE_TIMEOUT)
        finally:
            self._writers.discard(writer)
            writer.close()
            if this is not None:
                self._connections.discard(this)

    async def _serve(self, wire: bytes, client: str, transport: str, send: Send) -> None:
        arrived = time.time()
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            # Anything unparseable is dropped: the lab must survive whatever an MTA (or a test) sends.
            return
        if query.flags & dns.flags.QR:
            return
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            # Not logged: the log records questions, and these carry none we could answer.
            try:
                error = dns.message.make_response(query)
                error.set_rcode(dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR)
                out = error.to_wire(max_size=_TCP_MAX_MESSAGE)
            except Exception:
                return
            await send(out)
            return
        question = query.question[0]
        slot = _LogSlot()
        self._log.append(slot)
        rtype = dns.rdatatype.to_text(question.rdtype)
        fault = self._faults.get((question.name, rtype), self._faults.get((question.name, _ALL_TYPES)))
        outcome = _Outcome()
        try:
            await self._answer(query, transport, fault, send, outcome)
        finally:
            # Also on cancellation (stop() during a delay), so the log shows the query went unanswered.
            slot.query = Query(
                arrived, client, transport, _log_name(question.name), rtype, outcome.rcode, outcome.answers
            )

    async def _answer(
        self, query: dns.message.Message, transport: str, fault: Fault | None, send: Send, outcome: _Outcome
    ) -> None:
        if fault is not None and fault.delay > 0:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.no_answer:
            return
        if fault is not None and fault.servfail:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            try:
                response = self._resolve(query)
            except Exception:
                # A bug here must not leave the MTA waiting for a timeout that the trace did not ask for.
                _logger.exception("FakeDNS failed to answer %s", query.question[0])
                response = dns.message.make_response(query)
                response.set_rcode(dns.rcode.SERVFAIL)
        if transport == "udp":
            limit = max(_UDP_DEFAULT_PAYLOAD, query.payload) if query.edns >= 0 else _UDP_DEFAULT_PAYLOAD
        else:
            limit = _TCP_MAX_MESSAGE
        try:
            out = response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # Classic truncation: an empty answer with TC set tells the client to retry over TCP.
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            out = response.to_wire(max_size=limit)
        await send(out)
        outcome.rcode = dns.rcode.to_text(response.rcode())
        outcome.answers = tuple(rdata.to_text() for rrset in response.answer for rdata in rrset)

    def _resolve(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query, recursion_available=False)
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)
            return response
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN or (
            dns.rdatatype.is_metatype(question.rdtype) and question.rdtype != dns.rdatatype.ANY
        ):
            # Zone transfers and other classes are not part of what the lab models.
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        name, negative = self._follow(question.name, question.rdtype, response)
        if negative:
            zone = next((z for z in self._zones if name.is_subdomain(z)), None)
            if zone is not None:
                response.authority.append(self._data[zone][dns.rdatatype.SOA])
        self._add_glue(response)
        return response

    def _follow(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, response: dns.message.Message
    ) -> tuple[dns.name.Name, bool]:
        """Answer `name`, following its CNAMEs (a bounded chain, never around a loop); the name the
        chain stopped at, and whether that is a negative answer (no such name, or no data of the type)."""
        seen = {name}
        for _ in range(_MAX_CNAME_CHAIN):
            node = self._data.get(name)
            if node is None:
                if name not in self._existing:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                return name, True
            if rdtype == dns.rdatatype.ANY:
                for rrset in node.values():
                    response.answer.append(self._owned(name, rrset))
                return name, False
            if rdtype in node:
                response.answer.append(self._owned(name, node[rdtype]))
                return name, False
            cname = node.get(dns.rdatatype.CNAME)
            if cname is None:
                return name, True
            response.answer.append(self._owned(name, cname))
            name = cname[0].target
            if name in seen:
                return name, False
            seen.add(name)
        return name, False

    @staticmethod
    def _owned(owner: dns.name.Name, rrset: dns.rrset.RRset) -> dns.rrset.RRset:
        # Echo the owner name as asked so 0x20-randomising resolvers see their own spelling back.
        return dns.rrset.from_rdata_list(owner, rrset.ttl, list(rrset))

    def _add_glue(self, response: dns.message.Message) -> None:
        added: set[tuple[dns.name.Name, dns.rdatatype.RdataType]] = set()
        for rrset in list(response.answer):
            if rrset.rdtype != dns.rdatatype.MX:
                continue
            for mx in rrset:
                node = self._data.get(mx.exchange, {})
                for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    if rdtype in node and (mx.exchange, rdtype) not in added:
                        added.add((mx.exchange, rdtype))
                        response.additional.append(node[rdtype])


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: FakeDNS) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._server._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port-unreachable from a client that gave up (no_answer faults) is expected; keep serving.
        pass
