"""The global catalog over real LDAP: `harness/lab/ldap_server.py` in front of the Contoso catalog and
`reference_mta/ldap_directory.py` reaching it over loopback TCP give what the in-process catalog gives.

Every search a reference server makes (built from the directory and the corpus: every proxy address
and every envelope address the inbound and relay traces send, in each of the shapes the categorizer,
the address book and the gateway ask; every entry read by DN; the servers' look-ups; SMTP AUTH's
look-ups; hostile addresses) returns the same entries and leaves the same record in the query log.
SMTP AUTH agrees; a stopped catalog, a closed port, a silent one and a hostile client are handled;
and whole lab runs with the servers on LDAP give the in-process verdict and query log.
"""

from __future__ import annotations

import dataclasses
import io
import re
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import ldap3
import ldif  # type: ignore[import-untyped]
import pytest
from ldap3.operation.bind import bind_operation
from ldap3.operation.search import compile_filter, parse_filter
from ldap3.protocol.rfc4511 import LDAPMessage
from ldap3.utils.conv import escape_filter_chars
from pyasn1.codec.ber import (
    decoder,  # type: ignore[import-untyped]
    encoder,  # type: ignore[import-untyped]
)

from harness.corpus.trace import load as load_trace
from harness.lab import config as lab_config
from harness.lab.config import LabConfig
from harness.lab.gc import AUTH_CLIENT, LdapQuery, MockGlobalCatalog
from harness.lab.ldap_server import NOTICE_OF_DISCONNECTION, LdapServer, LdapServerThread, filter_text
from harness.lab.placement import relocation
from harness.lab.runtime import Lab
from harness.run.runner import run_trace
from harness.targets import REFERENCE, Target
from reference_mta.address_book import _ATTRIBUTES as ADDRESS_BOOK_ATTRIBUTES
from reference_mta.categorizer import RECIPIENT_ATTRIBUTES
from reference_mta.directory import DirectoryUnavailable, proxy_filter
from reference_mta.ldap_directory import LdapDirectory

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "fixtures" / "labs" / "contoso.yaml"
SENDER_ATTRIBUTES = ("cn", "legacyExchangeDN", "proxyAddresses", "submissionContLength", "msExchRecipLimit")
GATEWAY_ATTRIBUTES = ("mail", "proxyAddresses")
AUTH_FILTER = "(&(objectClass=user)(|(sAMAccountName={0})(mail={0})(proxyAddresses=smtp:{0})))"
# Addresses the corpus sends that the directory does not have, or that try to widen a filter.
STRANGERS = [
    "nobody@contoso.com",
    "ann@fabrikam.com",
    "*@contoso.com",
    "*",
    "alice)(mail=*",
    "st*r@contoso.com",
    '"st\\\\*r"@contoso.com',
    "al\x00ice@contoso.com",
    "δοκιμή@contoso.com",
    "ALICE@CONTOSO.COM",
    "Alice.Smith@Contoso.com",
]
Search = tuple[str, str, tuple[str, ...], str]  # base, filter, attributes, scope
CORPUS = [ROOT / "traces" / "inbound", ROOT / "traces" / "relay"]


def _corpus_names() -> tuple[list[str], list[str]]:
    """The envelope addresses and the SMTP AUTH user names the inbound and relay traces send."""
    addresses: set[str] = set()
    users: set[str] = set()
    for folder in CORPUS:
        for path in folder.glob("*.yaml"):
            text = path.read_text(encoding="utf-8")
            addresses.update(re.findall(r"(?:MAIL FROM|RCPT TO):\s*<([^<>]+)>", text, re.IGNORECASE))
            users.update(re.findall(r"\buser: ([^,}\s]+)", text))
    return sorted(addresses), sorted(users)


@pytest.fixture(scope="module")
def config() -> LabConfig:
    base, offset = relocation()
    return lab_config.load(LAB, base=base, port_offset=offset)


def _entries(config: LabConfig) -> list[tuple[str, dict[str, list[str]]]]:
    raw = config.global_catalog.directory.read_bytes()
    found = []
    for dn, attributes in ldif.LDIFParser(io.BytesIO(raw)).parse():
        if dn is not None:
            found.append((dn, {k: [str(v) for v in vs] for k, vs in attributes.items()}))
    return found


def _searches(config: LabConfig) -> list[Search]:
    """Every search the reference servers make on this directory, and a few they might."""
    base = config.global_catalog.base_dn
    entries = _entries(config)
    searches: list[Search] = []
    addresses: list[tuple[str, str]] = []
    for _, attributes in entries:
        for value in attributes.get("proxyAddresses", []):
            kind, _, address = value.partition(":")
            addresses.append((kind, address))
    sent, users = _corpus_names()
    for kind, address in addresses + [("smtp", a) for a in STRANGERS + sent]:
        if kind.lower() == "smtp":
            for wanted in (SENDER_ATTRIBUTES, RECIPIENT_ATTRIBUTES, ("homeMDB",), ADDRESS_BOOK_ATTRIBUTES):
                searches.append((base, proxy_filter("smtp", address), wanted, "SUBTREE"))
        else:
            searches.append((base, proxy_filter(kind, address), GATEWAY_ATTRIBUTES, "SUBTREE"))
    gone = f"CN=Gone Away,CN=Users,{base}"
    for dn in [dn for dn, _ in entries] + [gone]:
        searches.append((dn, "(objectClass=*)", RECIPIENT_ATTRIBUTES, "BASE"))
        searches.append((dn, "(objectClass=*)", ADDRESS_BOOK_ATTRIBUTES, "BASE"))
        searches.append((dn, "(objectClass=group)", ("member",), "BASE"))
        searches.append((dn, "(objectClass=msExchExchangeServer)", ("networkAddress",), "BASE"))
        # The groups a resolved sender belongs to, for connector restrictions (connector_restrictions).
        member = f"(&(objectClass=group)(member={escape_filter_chars(dn)}))"
        searches.append((base, member, ("proxyAddresses",), "SUBTREE"))
    for _, attributes in entries:
        if "msExchExchangeServer" in attributes.get("objectClass", []):
            for legacy in attributes.get("legacyExchangeDN", []):
                server_filter = (
                    f"(&(objectClass=msExchExchangeServer)(legacyExchangeDN={escape_filter_chars(legacy)}))"
                )
                searches.append((base, server_filter, ("networkAddress",), "SUBTREE"))
        for name in attributes.get("sAMAccountName", []) + attributes.get("mail", []):
            searches.append((base, AUTH_FILTER.format(escape_filter_chars(name)), (), "SUBTREE"))
    for name in users:
        searches.append((base, AUTH_FILTER.format(escape_filter_chars(name)), (), "SUBTREE"))
    users = f"CN=Users,{base}"
    searches += [
        (users, "(objectClass=user)", ("cn", "mail"), "LEVEL"),
        (base, "(objectClass=*)", ("cn",), "LEVEL"),
        (users, proxy_filter("smtp", "alice@contoso.com"), RECIPIENT_ATTRIBUTES, "SUBTREE"),
        (base, "(|(mail=bob@contoso.com)(cn=Carol*))", ("*",), "SUBTREE"),
        (base, "(&(objectClass=user)(!(mail=alice@contoso.com))(mail=*))", ("mail",), "SUBTREE"),
    ]
    return searches


# --- the pair on loopback ----------------------------------------------------------------------------


@dataclasses.dataclass
class Pair:
    config: LabConfig
    catalog: MockGlobalCatalog  # served over LDAP
    twin: MockGlobalCatalog  # searched in-process, the reference
    thread: LdapServerThread
    port: int

    @property
    def address(self) -> str:
        return self.config.global_catalog.address

    def directory(self, client: str = "EX1", **options: float) -> LdapDirectory:
        gc = self.config.global_catalog
        source = self.config.organization.server(client).address
        return LdapDirectory(
            self.address, self.port, gc.bind_dn, gc.bind_password, client, source_address=source, **options
        )

    def clear(self) -> None:
        self.catalog.clear_log()
        self.twin.clear_log()


@pytest.fixture(scope="module")
def pair(config: LabConfig) -> Iterator[Pair]:
    catalog = MockGlobalCatalog(config.global_catalog)
    catalog.load()
    twin = MockGlobalCatalog(config.global_catalog)
    twin.load()
    names = {h.address: h.name for h in reversed(list(config.hosts.values()))}
    # One above the lab's own LDAP port: the whole-lab tests below listen there.
    port = config.global_catalog.port + 1
    thread = LdapServerThread(LdapServer(catalog, config.global_catalog.address, port, names))
    thread.start()
    thread.run(thread.server.start())
    try:
        yield Pair(config, catalog, twin, thread, port)
    finally:
        thread.stop()


def _log(queries: Sequence[LdapQuery]) -> list[tuple[object, ...]]:
    return [dataclasses.astuple(dataclasses.replace(q, time=0.0)) for q in queries]


def _anonymous(pair: Pair, source: str | None = None) -> ldap3.Connection:
    server = ldap3.Server(pair.address, port=pair.port, get_info=ldap3.NONE, connect_timeout=5)
    connection = ldap3.Connection(server, source_address=source, receive_timeout=5, raise_exceptions=False)
    assert connection.bind()
    return connection


# --- searches ----------------------------------------------------------------------------------------


def test_every_search_gives_the_same_entries_and_log(pair: Pair) -> None:
    searches = _searches(pair.config)
    assert len(searches) > 300
    pair.clear()
    over_ldap = pair.directory("EX1")
    in_process = pair.twin.connect("EX1")
    try:
        for base, ldap_filter, attributes, scope in searches:
            expected = in_process.search(base, ldap_filter, attributes, scope=scope)
            got = over_ldap.search(base, ldap_filter, attributes, scope=scope)
            assert got == expected, (base, ldap_filter, attributes, scope)
    finally:
        over_ldap.close()
    assert _log(pair.catalog.queries) == _log(pair.twin.queries)
    assert {q.client for q in pair.catalog.queries} == {"EX1"}
    # Not a vacuous comparison: the list finds entries, by several filters and scopes.
    assert sum(q.results > 0 for q in pair.catalog.queries) > 100
    assert {q.scope for q in pair.catalog.queries} == {"BASE", "LEVEL", "SUBTREE"}


def test_entries_keep_the_callers_spelling_and_the_directory_order(pair: Pair) -> None:
    base = pair.config.global_catalog.base_dn
    directory = pair.directory("EX2")
    try:
        found = directory.search(base, "(objectClass=user)", ("MAIL", "cn", "notThere"))
        order = [
            dn for dn, attributes in _entries(pair.config) if "user" in attributes.get("objectClass", [])
        ]
        assert [entry.dn for entry in found] == order
        alice = next(entry for entry in found if entry.dn.startswith("CN=Alice"))
        assert alice.attributes == {"cn": ["Alice Smith"], "MAIL": ["alice@contoso.com"]}
        group = directory.search(f"CN=Users,{base}", "(cn=All Staff)", ("member",), scope="LEVEL")
        twin = pair.twin.connect("EX2").search(
            f"CN=Users,{base}", "(cn=All Staff)", ("member",), scope="LEVEL"
        )
        assert group == twin
    finally:
        directory.close()


def test_the_log_names_the_client_by_its_address(pair: Pair) -> None:
    pair.clear()
    base = pair.config.global_catalog.base_dn
    for server in ("EX3", "EX4"):
        directory = pair.directory(server)
        directory.search(base, proxy_filter("smtp", "bob@contoso.com"), ("homeMDB",))
        directory.close()
    stranger = _anonymous(pair, source="127.0.0.1")
    stranger.search(base, "(mail=bob@contoso.com)", attributes=["mail"])
    stranger.unbind()
    assert [q.client for q in pair.catalog.queries] == ["EX3", "EX4", "127.0.0.1"]
    assert [q.results for q in pair.catalog.queries] == [1, 1, 1]


def test_filters_reach_the_log_as_the_client_wrote_them(pair: Pair) -> None:
    """Escapes stay escapes: an escaped `*` in a substring piece must not become a wildcard."""
    filters = [
        "(proxyAddresses=smtp:\\2a@contoso.com)",
        "(cn=Al\\2a*Sm*th)",
        "(cn=*ice*)",
        "(!(cn=Alice Smith))",
        "(uSNChanged>=10)",
        "(uSNChanged<=10)",
        "(cn~=alice)",
        "(cn:caseExactMatch:=Alice Smith)",
        "(cn:dn:2.5.13.2:=Alice Smith)",
        "(mail=δοκιμή@contoso.com)",
        "(description=\\28x\\29 \\5c \\00)",
    ]
    pair.clear()
    connection = _anonymous(pair)
    for ldap_filter in filters:
        connection.search(pair.config.global_catalog.base_dn, ldap_filter, attributes=["cn"])
    connection.unbind()
    assert [q.filter for q in pair.catalog.queries] == filters
    # The server's rendering is the inverse of ldap3's own compilation, without a socket too.
    for ldap_filter in filters:
        compiled = compile_filter(parse_filter(ldap_filter, None, True, True, None, False).elements[0])
        assert filter_text(compiled) == ldap_filter


def test_size_limit_and_updates(pair: Pair) -> None:
    connection = _anonymous(pair)
    try:
        connection.search(pair.config.global_catalog.base_dn, "(objectClass=user)", size_limit=2)
        assert connection.result["result"] == 4  # sizeLimitExceeded
        assert len([r for r in connection.response if r["type"] == "searchResEntry"]) == 2
        connection.add(f"CN=New,CN=Users,{pair.config.global_catalog.base_dn}", "user", {"cn": "New"})
        assert connection.result["result"] == 53  # unwillingToPerform
        connection.delete(f"CN=Alice Smith,CN=Users,{pair.config.global_catalog.base_dn}")
        assert connection.result["result"] == 53
        connection.extended("1.2.3.4")
        assert connection.result["result"] == 2  # protocolError: not an operation this server has
        assert connection.extend.standard.who_am_i() is None  # anonymous
        connection.search(pair.config.global_catalog.base_dn, "(cn=Alice Smith)", attributes=["cn"])
        assert connection.result["result"] == 0  # the connection still answers
    finally:
        connection.unbind()


def test_binds(pair: Pair) -> None:
    gc = pair.config.global_catalog
    server = ldap3.Server(pair.address, port=pair.port, get_info=ldap3.NONE)
    categorizer = ldap3.Connection(server, user=gc.bind_dn, password=gc.bind_password, raise_exceptions=False)
    assert categorizer.bind()
    assert categorizer.extend.standard.who_am_i() == f"dn:{gc.bind_dn}"
    categorizer.unbind()
    wrong = ldap3.Connection(
        server, user=gc.bind_dn, password=gc.bind_password.upper(), raise_exceptions=False
    )
    assert not wrong.bind()
    assert wrong.result["result"] == 49
    sasl = ldap3.Connection(
        server, authentication=ldap3.SASL, sasl_mechanism=ldap3.PLAIN, sasl_credentials=(None, "alice", "x")
    )
    sasl.raise_exceptions = False
    assert not sasl.bind()
    assert sasl.result["result"] == 7  # authMethodNotSupported
    sasl.unbind()


# --- SMTP AUTH ---------------------------------------------------------------------------------------


CREDENTIALS = [
    ("alice", "Alice-P@ss1"),
    ("alice@contoso.com", "Alice-P@ss1"),
    ("alice.smith@contoso.com", "Alice-P@ss1"),
    ("ALICE", "Alice-P@ss1"),
    ("alice", "alice-p@ss1"),
    ("alice", "wrong"),
    ("alice", ""),
    ("", "Alice-P@ss1"),
    ("bob", "Bob-P@ss1"),
    ("relayuser", "Relay-P@ss1"),
    ("henry", "Henry-P@ss1"),
    ("mailadmin", "Admin-P@ss1"),
    ("excat", "Cat-P@ssw0rd"),
    ("nobody", "Alice-P@ss1"),
    ("al*", "Alice-P@ss1"),
    ("*", "Alice-P@ss1"),
    ("alice)(sAMAccountName=*", "Alice-P@ss1"),
]


def test_authenticate_agrees_with_the_catalog(pair: Pair) -> None:
    pair.clear()
    directory = pair.directory("EX1")
    outcomes = []
    for user, password in CREDENTIALS:
        expected = pair.twin.authenticate(user, password)
        assert directory.authenticate(user, password) == expected, (user, password)
        outcomes.append(expected)
    assert _log(pair.catalog.queries) == _log(pair.twin.queries)
    assert {q.client for q in pair.catalog.queries} == {AUTH_CLIENT}
    assert sum(o is not None for o in outcomes) == 9 and outcomes.count(None) == 8


# --- the catalog refuses -----------------------------------------------------------------------------


def test_a_stopped_catalog_is_unavailable_and_logged(pair: Pair) -> None:
    base = pair.config.global_catalog.base_dn
    directory = pair.directory("EX2")
    pair.clear()
    pair.catalog.available = False
    pair.twin.available = False
    try:
        with pytest.raises(DirectoryUnavailable, match="unavailable"):
            directory.search(base, proxy_filter("smtp", "carol@contoso.com"), RECIPIENT_ATTRIBUTES)
        with pytest.raises(DirectoryUnavailable):
            pair.twin.connect("EX2").search(
                base, proxy_filter("smtp", "carol@contoso.com"), RECIPIENT_ATTRIBUTES
            )
        with pytest.raises(DirectoryUnavailable):
            directory.authenticate("alice", "Alice-P@ss1")
        with pytest.raises(DirectoryUnavailable):
            pair.twin.authenticate("alice", "Alice-P@ss1")
    finally:
        pair.catalog.available = True
        pair.twin.available = True
    assert [q.results for q in pair.catalog.queries] == [-1, -1]
    assert _log(pair.catalog.queries) == _log(pair.twin.queries)
    # Back up: the same connection answers again.
    assert directory.search(base, proxy_filter("smtp", "carol@contoso.com"), ("homeMDB",))
    directory.close()


def test_nothing_listening_is_unavailable(pair: Pair) -> None:
    gc = pair.config.global_catalog
    closed = LdapDirectory(pair.address, pair.port + 9, gc.bind_dn, gc.bind_password, "EX1", timeout=2)
    began = time.monotonic()
    with pytest.raises(DirectoryUnavailable, match="not answering"):
        closed.search(gc.base_dn, "(objectClass=*)", (), scope="BASE")
    with pytest.raises(DirectoryUnavailable):
        closed.authenticate("alice", "Alice-P@ss1")
    assert time.monotonic() - began < 5


def test_a_silent_directory_times_out(pair: Pair) -> None:
    gc = pair.config.global_catalog
    with socket.socket() as silent:
        # Accepts connections (the kernel does, from its backlog) and never answers.
        silent.bind((pair.address, 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        directory = LdapDirectory(pair.address, port, gc.bind_dn, gc.bind_password, "EX1", timeout=1)
        began = time.monotonic()
        with pytest.raises(DirectoryUnavailable):
            directory.search(gc.base_dn, "(objectClass=*)", (), scope="BASE")
        assert 0.9 < time.monotonic() - began < 5


def test_a_restarted_directory_is_reached_again(config: LabConfig) -> None:
    catalog = MockGlobalCatalog(config.global_catalog)
    catalog.load()
    gc = config.global_catalog
    port = gc.port + 2
    names = {config.organization.server("EX1").address: "EX1"}
    directory = LdapDirectory(
        gc.address,
        port,
        gc.bind_dn,
        gc.bind_password,
        "EX1",
        source_address=config.organization.server("EX1").address,
    )
    for _ in range(2):
        thread = LdapServerThread(LdapServer(catalog, gc.address, port, names))
        thread.start()
        thread.run(thread.server.start())
        try:
            assert directory.search(gc.base_dn, proxy_filter("smtp", "alice@contoso.com"), ("mail",))
        finally:
            thread.stop()
    directory.close()
    assert [(q.client, q.results) for q in catalog.queries] == [("EX1", 1), ("EX1", 1)]


# --- hostile clients ---------------------------------------------------------------------------------


def _bind_request() -> bytes:
    request = bind_operation(3, ldap3.SIMPLE, "CN=Someone,DC=contoso,DC=com", "a password")
    message = LDAPMessage()
    message["messageID"] = 1
    message["protocolOp"].setComponentByName("bindRequest", request)
    return bytes(encoder.encode(message))


def _read_all(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(4096):
        received += chunk
    return received


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.0\r\n\r\n",
        b"\x30\x84\xff\xff\xff\xff",  # a 4 GiB message
        b"\x30\x80\x00\x00",  # indefinite length
        b"\x30\x05\x02\x01\x01\x7e\x00",  # a message with an operation that does not exist
        b"\x30\x03\x02\x01\x01",  # a message without an operation
    ],
    ids=["http", "huge", "indefinite", "unknown-operation", "no-operation"],
)
def test_garbage_closes_that_connection_only(pair: Pair, garbage: bytes) -> None:
    bystander = pair.directory("EX1")
    base = pair.config.global_catalog.base_dn
    assert bystander.search(base, proxy_filter("smtp", "bob@contoso.com"), ("mail",))
    with socket.create_connection((pair.address, pair.port), timeout=5) as hostile:
        hostile.sendall(garbage)
        answer = _read_all(hostile)
    notice, _ = decoder.decode(answer, asn1Spec=LDAPMessage())
    assert int(notice["messageID"]) == 0
    assert str(notice["protocolOp"]["extendedResp"]["responseName"]) == NOTICE_OF_DISCONNECTION
    assert int(notice["protocolOp"]["extendedResp"]["resultCode"]) == 2
    # The other client's connection, opened before, and a new one both still answer.
    assert bystander.search(base, proxy_filter("smtp", "bob@contoso.com"), ("mail",))
    newcomer = pair.directory("EX2")
    assert newcomer.search(base, proxy_filter("smtp", "carol@contoso.com"), ("mail",))
    bystander.close()
    newcomer.close()


def test_a_half_written_message_blocks_nobody(pair: Pair) -> None:
    request = _bind_request()
    base = pair.config.global_catalog.base_dn
    with socket.create_connection((pair.address, pair.port), timeout=5) as slow:
        slow.sendall(request[: len(request) // 2])
        other = pair.directory("EX3")
        assert other.search(base, proxy_filter("smtp", "dave@contoso.com"), ("mail",)) is not None
        assert other.authenticate("bob", "Bob-P@ss1") is not None
        # The rest arrives: that connection is answered too (invalidCredentials for this DN).
        slow.sendall(request[len(request) // 2 :])
        answer, _ = decoder.decode(slow.recv(4096), asn1Spec=LDAPMessage())
        assert int(answer["protocolOp"]["bindResponse"]["resultCode"]) == 49
        slow.sendall(request[:3])  # and goes away mid-message
    assert other.search(base, proxy_filter("smtp", "dave@contoso.com"), ("mail",)) is not None
    other.close()


# --- whole labs --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Watched(Target):
    """The reference target, keeping each lab it makes (to read its query log after the run), with
    its servers on the LDAP pair when `over_ldap`."""

    over_ldap: bool = False
    labs: list[Lab] = dataclasses.field(default_factory=list)

    def lab(
        self,
        config: LabConfig,
        workdir: Path | None = None,
        control: bool = False,
        senders: Sequence[str] = (),
    ) -> Lab:
        lab = Lab(config, workdir, control=control, senders=senders, directory_over_ldap=self.over_ldap)
        self.labs.append(lab)
        return lab


def _watched(over_ldap: bool) -> Watched:
    fields = {f.name: getattr(REFERENCE, f.name) for f in dataclasses.fields(REFERENCE)}
    return Watched(**fields, over_ldap=over_ldap)


@pytest.mark.parametrize(
    "trace",
    [
        "inbound/mailbox-on-other-server",
        "inbound/decision-group-restrictions-before-expansion",
        "inbound/ldap-filter-escaping",
        "inbound/forwarding",
        "inbound/foreign-system-contact",
        "relay/auth-login-relays-to-internet",
        "relay/auth-wrong-password-relay-denied",
        "relay/filter-directory-addresses-accepted",
        "inbound/directory-down-waits",
        "relay/filter-directory-down-only-list-applies",
    ],
)
def test_a_lab_on_ldap_gives_the_same_verdict_and_log(trace: str) -> None:
    loaded = load_trace(ROOT / "traces" / f"{trace}.yaml")
    results = {}
    logs = {}
    for over_ldap in (False, True):
        target = _watched(over_ldap)
        result = run_trace(loaded, target)
        results[over_ldap] = result
        logs[over_ldap] = sorted(_log(target.labs[-1].gc.queries), key=repr)
    assert results[True].passed, results[True]
    assert results[False].passed
    assert logs[True] == logs[False]
    assert logs[True], "the trace made no directory search"
    # The list the pair is checked against above holds every search the servers made here.
    built = set(_searches(lab_config.load(LAB)))
    asked = {(q[2], q[3], q[5], q[4]) for q in logs[False]}
    assert asked <= built


def test_a_lab_on_ldap_serves_ldap_at_the_catalogs_address(config: LabConfig) -> None:
    gc = config.global_catalog
    with Lab(config, directory_over_ldap=True) as lab:
        ex1 = lab.servers["EX1"]
        assert ex1.categorizer is not None
        assert isinstance(ex1.categorizer.directory, LdapDirectory)
        connection = ldap3.Connection(
            ldap3.Server(gc.address, port=gc.port, get_info=ldap3.NONE),
            gc.bind_dn,
            gc.bind_password,
            source_address="127.0.0.1",
        )
        assert connection.bind()
        connection.search(gc.base_dn, proxy_filter("smtp", "alice@contoso.com"), attributes=["homeMDB"])
        assert len(connection.response) == 1
        connection.unbind()
        assert [q.client for q in lab.gc.queries] == ["127.0.0.1"]
    # Stopped with the lab: nothing listens there any more.
    with pytest.raises(ConnectionRefusedError), socket.create_connection((gc.address, gc.port), timeout=2):
        pass
