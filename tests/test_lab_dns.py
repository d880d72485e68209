"""FakeDNS over real loopback sockets: answers, negative answers, the query log and faults.

The server runs on its own event loop in a background thread so the tests can use dnspython's
blocking clients exactly as an MTA would use a resolver.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from harness.lab.dns import FakeDNS, Fault, Query, Record, ptr_name

ADDRESS = "127.77.5.53"
# Per-process ports so parallel runs (xdist workers, other checkouts) do not collide.
PORT = 20000 + (os.getpid() % 5000) * 2
TIMEOUT = 2.0

T = TypeVar("T")

RECORDS = [
    Record("contoso.com", "MX", "10 mail.contoso.com."),
    Record("contoso.com", "MX", "20 backup.contoso.com"),
    Record("mail.contoso.com", "A", "127.77.0.11"),
    Record("mail.contoso.com", "AAAA", "fd00::11"),
    Record("backup.contoso.com", "A", "127.77.0.12"),
    Record("contoso.com", "TXT", "v=spf1 ip4:127.77.0.0/24 -all"),
    Record("long.contoso.com", "TXT", "x" * 300),
    Record(ptr_name("127.77.0.11"), "PTR", "mail.contoso.com."),
    Record("smtp.contoso.com", "CNAME", "mail.contoso.com."),
    Record("dangling.contoso.com", "CNAME", "nowhere.contoso.com."),
    Record("host.sub.fabrikam.com", "A", "127.77.0.21"),
    Record("slow.fabrikam.com", "A", "127.77.0.22", fault=Fault(delay=0.3)),
    Record("broken.fabrikam.com", "MX", "10 mail.contoso.com.", fault=Fault(servfail=True)),
    Record("silent.fabrikam.com", "A", "127.77.0.23", fault=Fault(no_answer=True)),
    Record("toggle.fabrikam.com", "A", "127.77.0.24"),
    Record("flaky.fabrikam.com", "A", "127.77.0.25", fault=Fault(servfail=True)),
]


class LabThread:
    """A FakeDNS running on a private event loop in a daemon thread."""

    def __init__(self, server: FakeDNS) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> LabThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on the server's loop: FakeDNS is not thread-safe."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(TIMEOUT)

    def queries(self) -> list[Query]:
        return self.call(lambda: self.server.queries)


@pytest.fixture(scope="module")
def lab() -> Iterator[LabThread]:
    server = FakeDNS(ADDRESS, PORT, RECORDS, authoritative_zones=["contoso.com", "fabrikam.com"])
    with LabThread(server) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_log(request: pytest.FixtureRequest) -> None:
    if "lab" in request.fixturenames:
        lab: LabThread = request.getfixturevalue("lab")
        lab.call(lab.server.clear_log)


def udp(name: str, rtype: str, timeout: float = TIMEOUT, source: str | None = None) -> dns.message.Message:
    query = dns.message.make_query(name, rtype)
    return dns.query.udp(query, ADDRESS, timeout=timeout, port=PORT, source=source)


def tcp(name: str, rtype: str, source: str | None = None) -> dns.message.Message:
    query = dns.message.make_query(name, rtype)
    return dns.query.tcp(query, ADDRESS, timeout=TIMEOUT, port=PORT, source=source)


def texts(section: list[Any], rdtype: dns.rdatatype.RdataType | None = None) -> set[str]:
    return {rd.to_text() for rrset in section if rdtype in (None, rrset.rdtype) for rd in rrset}


def test_mx_has_exchange_addresses_in_additional(lab: LabThread) -> None:
    response = udp("contoso.com", "MX")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert texts(response.answer) == {"10 mail.contoso.com.", "20 backup.contoso.com."}
    assert texts(response.additional, dns.rdatatype.A) == {"127.77.0.11", "127.77.0.12"}
    assert texts(response.additional, dns.rdatatype.AAAA) == {"fd00::11"}


@pytest.mark.parametrize(
    ("name", "rtype", "expected"),
    [
        ("mail.contoso.com", "A", {"127.77.0.11"}),
        ("mail.contoso.com", "AAAA", {"fd00::11"}),
        ("11.0.77.127.in-addr.arpa", "PTR", {"mail.contoso.com."}),
        ("contoso.com", "TXT", {'"v=spf1 ip4:127.77.0.0/24 -all"'}),
        ("MAIL.Contoso.COM.", "A", {"127.77.0.11"}),
    ],
)
def test_positive_answers(lab: LabThread, name: str, rtype: str, expected: set[str]) -> None:
    response = udp(name, rtype)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert texts(response.answer) == expected


def test_ptr_name() -> None:
    assert ptr_name("127.77.0.11") == "11.0.77.127.in-addr.arpa"


def test_long_txt_is_one_record_in_255_byte_strings(lab: LabThread) -> None:
    (rrset,) = udp("long.contoso.com", "TXT").answer
    (txt,) = list(rrset)
    assert [len(s) for s in txt.strings] == [255, 45]


def test_nxdomain_carries_zone_soa(lab: LabThread) -> None:
    response = udp("nobody.contoso.com", "MX")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.answer == []
    assert [rrset.rdtype for rrset in response.authority] == [dns.rdatatype.SOA]


def test_nxdomain_outside_any_zone(lab: LabThread) -> None:
    response = udp("example.invalid", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.authority == []


def test_nodata_for_existing_name_and_empty_non_terminal(lab: LabThread) -> None:
    for name in ("mail.contoso.com", "sub.fabrikam.com"):
        response = udp(name, "MX")
        assert response.rcode() == dns.rcode.NOERROR, name
        assert response.answer == [], name


def test_cname_is_chased_in_local_data(lab: LabThread) -> None:
    response = udp("smtp.contoso.com", "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert [rrset.rdtype for rrset in response.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert texts(response.answer) == {"mail.contoso.com.", "127.77.0.11"}
    dangling = udp("dangling.contoso.com", "A")
    assert dangling.rcode() == dns.rcode.NXDOMAIN
    assert texts(dangling.answer) == {"nowhere.contoso.com."}


def test_tcp_answers_like_udp(lab: LabThread) -> None:
    by_tcp, by_udp = tcp("contoso.com", "MX"), udp("contoso.com", "MX")
    assert by_tcp.rcode() == by_udp.rcode() == dns.rcode.NOERROR
    assert texts(by_tcp.answer) == texts(by_udp.answer)
    assert texts(by_tcp.additional) == texts(by_udp.additional)
    assert tcp("nobody.contoso.com", "A").rcode() == dns.rcode.NXDOMAIN


def test_query_log(lab: LabThread) -> None:
    # Distinct source addresses, as separate lab hosts would have, show up in the log.
    udp("Contoso.COM.", "MX", source="127.77.5.10")
    tcp("nobody.contoso.com", "A", source="127.77.5.11")
    udp("broken.fabrikam.com", "MX", source="127.77.5.10")
    log = lab.queries()
    assert [(q.client, q.transport, q.name, q.rtype, q.rcode) for q in log] == [
        ("127.77.5.10", "udp", "contoso.com", "MX", "NOERROR"),
        ("127.77.5.11", "tcp", "nobody.contoso.com", "A", "NXDOMAIN"),
        ("127.77.5.10", "udp", "broken.fabrikam.com", "MX", "SERVFAIL"),
    ]
    assert set(log[0].answers) == {"10 mail.contoso.com.", "20 backup.contoso.com."}
    assert log[1].answers == ()
    assert log[0].time <= log[1].time <= time.time()
    lab.call(lab.server.clear_log)
    assert lab.queries() == []


def test_the_query_log_keeps_its_newest_entries_and_counts_the_dropped_ones() -> None:
    """A lab that runs for hours keeps a fixed number of queries: the oldest go, counted."""
    server = FakeDNS(ADDRESS, PORT + 1, RECORDS, authoritative_zones=["contoso.com"], log_limit=20)
    with LabThread(server) as running:
        for index in range(50):
            query = dns.message.make_query(f"host{index}.contoso.com", "A")
            answer = dns.query.udp(query, ADDRESS, timeout=TIMEOUT, port=PORT + 1)
            assert answer.rcode() == dns.rcode.NXDOMAIN
        log = running.queries()
        assert [q.name for q in log] == [f"host{index}.contoso.com" for index in range(30, 50)]
        assert running.call(lambda: server.queries_dropped) == 30
        running.call(server.clear_log)
        assert (running.queries(), running.call(lambda: server.queries_dropped)) == ([], 0)


def test_delay_fault_does_not_block_other_queries(lab: LabThread) -> None:
    async def both() -> tuple[list[str], float]:
        order: list[str] = []
        started = time.monotonic()

        async def ask(name: str) -> None:
            response = await dns.asyncquery.udp(
                dns.message.make_query(name, "A"), ADDRESS, timeout=TIMEOUT, port=PORT
            )
            assert response.rcode() == dns.rcode.NOERROR
            order.append(name)

        await asyncio.gather(ask("slow.fabrikam.com"), ask("mail.contoso.com"))
        return order, time.monotonic() - started

    order, elapsed = asyncio.run(both())
    assert order == ["mail.contoso.com", "slow.fabrikam.com"]
    assert elapsed >= 0.25
    # Logged in arrival order although the slow answer finished last.
    assert [q.name for q in lab.queries()] == ["slow.fabrikam.com", "mail.contoso.com"]


def test_servfail_fault(lab: LabThread) -> None:
    assert udp("broken.fabrikam.com", "MX").rcode() == dns.rcode.SERVFAIL
    # The fault is on (name, MX) only.
    assert udp("broken.fabrikam.com", "A").rcode() == dns.rcode.NOERROR


def test_no_answer_fault_times_out(lab: LabThread) -> None:
    with pytest.raises(dns.exception.Timeout):
        udp("silent.fabrikam.com", "A", timeout=0.3)
    (logged,) = lab.queries()
    assert (logged.name, logged.rcode, logged.answers) == ("silent.fabrikam.com", "NONE", ())


def test_set_fault_at_runtime(lab: LabThread) -> None:
    assert udp("toggle.fabrikam.com", "A").rcode() == dns.rcode.NOERROR
    lab.call(lab.server.set_fault, "Toggle.Fabrikam.com.", "a", Fault(servfail=True))
    assert udp("toggle.fabrikam.com", "A").rcode() == dns.rcode.SERVFAIL
    lab.call(lab.server.set_fault, "toggle.fabrikam.com", "*", Fault(no_answer=True))
    with pytest.raises(dns.exception.Timeout):
        udp("toggle.fabrikam.com", "TXT", timeout=0.3)
    lab.call(lab.server.set_fault, "toggle.fabrikam.com", "*", None)
    lab.call(lab.server.set_fault, "toggle.fabrikam.com", "A", None)
    assert texts(udp("toggle.fabrikam.com", "A").answer) == {"127.77.0.24"}
    # A fault given on a Record can be cleared too.
    assert udp("flaky.fabrikam.com", "A").rcode() == dns.rcode.SERVFAIL
    lab.call(lab.server.set_fault, "flaky.fabrikam.com", "A", None)
    assert udp("flaky.fabrikam.com", "A").rcode() == dns.rcode.NOERROR


@pytest.mark.parametrize("address", ["10.0.0.53", "192.168.1.1", "::1", "198.20.0.1", "localhost"])
def test_non_lab_address_refused(address: str) -> None:
    with pytest.raises(ValueError, match="not a lab address"):
        FakeDNS(address, PORT, [])


def test_lab_addresses_accepted() -> None:
    for address in ("127.0.0.1", "127.255.255.254", "198.18.0.53", "198.19.255.1"):
        FakeDNS(address, PORT, [])


def test_bad_records_rejected() -> None:
    with pytest.raises(ValueError, match="bad record"):
        FakeDNS(ADDRESS, PORT, [Record("a.contoso.com", "MX", "not-a-preference host.")])
    with pytest.raises(ValueError, match="unknown record type"):
        FakeDNS(ADDRESS, PORT, [Record("a.contoso.com", "BOGUS", "x")])
    with pytest.raises(ValueError, match="CNAME"):
        FakeDNS(
            ADDRESS,
            PORT,
            [Record("a.contoso.com", "A", "127.77.0.1"), Record("a.contoso.com", "CNAME", "b.contoso.com.")],
        )


def test_garbage_datagram_then_good_query(lab: LabThread) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for junk in (b"", b"\x00", b"\xff" * 11, b"\x12\x34" + os.urandom(40)):
            sock.sendto(junk, (ADDRESS, PORT))
    assert texts(udp("mail.contoso.com", "A").answer) == {"127.77.0.11"}
    assert [q.name for q in lab.queries()] == ["mail.contoso.com"]


def test_garbage_tcp_frame_then_good_query_on_same_connection(lab: LabThread) -> None:
    wire = dns.message.make_query("mail.contoso.com", "A").to_wire()
    with socket.create_connection((ADDRESS, PORT), timeout=TIMEOUT) as sock:
        junk = b"\xde\xad\xbe\xef"
        sock.sendall(struct.pack("!H", len(junk)) + junk + struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", sock.recv(2, socket.MSG_WAITALL))
        response = dns.message.from_wire(sock.recv(length, socket.MSG_WAITALL))
    assert texts(response.answer) == {"127.77.0.11"}


def test_unsupported_opcode_gets_notimp(lab: LabThread) -> None:
    query = dns.message.make_query("contoso.com", "SOA")
    query.set_opcode(dns.opcode.NOTIFY)
    response = dns.query.udp(query, ADDRESS, timeout=TIMEOUT, port=PORT)
    assert response.rcode() == dns.rcode.NOTIMP
    assert lab.queries() == []
