"""The mock global catalog: loading the Contoso LDIF, the searches a categorizer makes, the query log,
SMTP AUTH, and errors in a broken fixture located by file and line."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from pathlib import Path

import pytest

from harness.lab import config as lab_config
from harness.lab.config import GlobalCatalogConfig
from harness.lab.gc import GcConnection, GlobalCatalogError, LdapQuery, MockGlobalCatalog
from reference_mta.categorizer import RECIPIENT_ATTRIBUTES
from reference_mta.directory import Directory, DirectoryEntry, proxy_filter

ROOT = Path(__file__).resolve().parents[1]
LDIF = ROOT / "fixtures" / "directory" / "contoso.ldif"
BASE = "DC=contoso,DC=com"
USERS = f"CN=Users,{BASE}"
ALICE = f"CN=Alice Smith,{USERS}"
BOB = f"CN=Bob Jones,{USERS}"
CAROL = f"CN=Carol Chen,{USERS}"
STAR = f"CN=Star Tester,{USERS}"
EXCHANGE = "CN=Contoso,CN=Microsoft Exchange,CN=Services,CN=Configuration,DC=contoso,DC=com"
EX1 = f"CN=EX1,CN=Servers,CN=First Administrative Group,CN=Administrative Groups,{EXCHANGE}"

CONFIG = GlobalCatalogConfig(
    address="127.77.0.3",
    port=10389,
    fqdn="gc.contoso.com",
    base_dn=BASE,
    directory=LDIF,
    bind_dn=f"CN=Exchange Categorizer,{USERS}",
    bind_password="Cat-P@ssw0rd",
)


@pytest.fixture(scope="module")
def gc() -> MockGlobalCatalog:
    catalog = MockGlobalCatalog(CONFIG)
    catalog.load()
    return catalog


@pytest.fixture
def conn(gc: MockGlobalCatalog) -> GcConnection:
    gc.clear_log()
    return gc.connect("EX1")


def dns(entries: list[DirectoryEntry]) -> list[str]:
    return [entry.dn for entry in entries]


# --- loading ---------------------------------------------------------------------------------------


def test_every_entry_is_loaded(conn: GcConnection) -> None:
    entries = conn.search(BASE, "(objectClass=*)", ["cn"])
    assert len(entries) == CONFIG.directory.read_text().count("\ndn: ")
    assert entries[0].dn == BASE
    assert entries[-1].dn == f"CN=Woodgrove Liaisons,{USERS}"


def test_lab_file_global_catalog_binds() -> None:
    lab = lab_config.load(ROOT / "fixtures" / "labs" / "contoso.yaml")
    catalog = MockGlobalCatalog(lab.global_catalog)
    catalog.load()
    assert catalog.loaded
    found = catalog.connect("EX1").search(
        lab.global_catalog.base_dn, proxy_filter("smtp", "bob@contoso.com"), ["cn"]
    )
    assert dns(found) == [BOB]


def test_connect_before_load_is_an_error() -> None:
    with pytest.raises(GlobalCatalogError, match="not loaded"):
        MockGlobalCatalog(CONFIG).connect("EX1")


def test_connect_with_a_wrong_bind_password_fails() -> None:
    catalog = MockGlobalCatalog(dataclasses.replace(CONFIG, bind_password="cat-p@ssw0rd"))
    catalog.load()
    with pytest.raises(GlobalCatalogError, match="bind as CN=Exchange Categorizer"):
        catalog.connect("EX1")


def test_a_connection_is_a_categorizer_directory(conn: GcConnection) -> None:
    directory: Directory = conn
    assert directory.search(BASE, proxy_filter("smtp", "alice@contoso.com"), ["cn"])[0].dn == ALICE


# --- searches --------------------------------------------------------------------------------------


def test_proxy_addresses_match_case_insensitively(conn: GcConnection) -> None:
    found = conn.search(BASE, "(proxyAddresses=smtp:ALICE@CONTOSO.COM)", RECIPIENT_ATTRIBUTES)
    assert dns(found) == [ALICE]
    alice = found[0]
    assert alice.all("proxyAddresses") == [
        "SMTP:alice@contoso.com",
        "NOTES:Alice Smith/Contoso",
        "smtp:alice.smith@contoso.com",
        "X500:/o=Contoso/ou=Old Site/cn=Recipients/cn=asmith",
    ]
    assert (alice.first("homeMDB") or "").startswith("CN=Mailbox Store (EX1),")
    assert alice.classes == {"top", "person", "organizationalperson", "user"}
    # Secondary addresses, either spelling of the prefix, any case of the address.
    assert dns(conn.search(BASE, proxy_filter("SMTP", "robert.jones@CONTOSO.com"), ["cn"])) == [BOB]
    assert dns(conn.search(BASE, proxy_filter("smtp", "carol@litware.com"), ["cn"])) == [CAROL]


def test_values_are_lists_of_str_under_the_requested_names(conn: GcConnection) -> None:
    (alice,) = conn.search(BASE, proxy_filter("smtp", "alice@contoso.com"), ["MAIL", "displayname", "nosuch"])
    assert alice.attributes == {"MAIL": ["alice@contoso.com"], "displayname": ["Alice Smith"]}
    (bare,) = conn.search(BASE, proxy_filter("smtp", "alice@contoso.com"), [])
    assert bare.attributes == {}


def test_filter_escaping(conn: GcConnection) -> None:
    assert proxy_filter("smtp", "st*r@contoso.com") == r"(proxyAddresses=smtp:st\2ar@contoso.com)"
    assert dns(conn.search(BASE, proxy_filter("smtp", "st*r@contoso.com"), ["cn"])) == [STAR]
    assert conn.search(BASE, proxy_filter("smtp", "*@contoso.com"), ["cn"]) == []
    assert conn.search(BASE, proxy_filter("smtp", "x)(mail=*"), ["cn"]) == []
    # Unescaped, the same text is a wildcard: the escaping is what keeps the lookup to one recipient.
    assert len(conn.search(BASE, "(proxyAddresses=smtp:*@contoso.com)", ["cn"])) > 10


def test_server_object_by_base_scope(conn: GcConnection) -> None:
    found = conn.search(EX1, "(objectClass=msExchExchangeServer)", ["networkAddress"], scope="BASE")
    assert len(found) == 1
    assert found[0].dn == EX1
    assert found[0].all("networkAddress") == ["ncacn_ip_tcp:ex1.contoso.com", "netbios:EX1"]
    # BASE reads only the base: the MTA object below EX1 is not returned.
    assert conn.search(EX1, "(objectClass=*)", ["cn"], scope="base")[0].dn == EX1
    assert conn.search(EX1, "(objectClass=user)", ["cn"], scope="BASE") == []


def test_missing_base_gives_no_results(conn: GcConnection) -> None:
    assert conn.search(f"CN=Nobody,{USERS}", "(objectClass=*)", ["cn"], scope="BASE") == []
    assert conn.search("DC=fabrikam,DC=com", "(objectClass=*)", ["cn"]) == []
    assert conn.search(f"CN=Nobody,{USERS}", "(objectClass=*)", ["cn"], scope="LEVEL") == []


def test_a_malformed_filter_is_an_error_and_is_logged(gc: MockGlobalCatalog, conn: GcConnection) -> None:
    with pytest.raises(GlobalCatalogError, match="failed"):
        conn.search(BASE, "(proxyAddresses=smtp:alice@contoso.com", ["cn"])
    (query,) = gc.queries
    assert (query.filter, query.results) == ("(proxyAddresses=smtp:alice@contoso.com", 0)


def test_unknown_scope_is_refused(conn: GcConnection) -> None:
    with pytest.raises(ValueError, match="scope"):
        conn.search(BASE, "(objectClass=*)", ["cn"], scope="ONELEVEL")


def test_group_members(conn: GcConnection) -> None:
    (sales,) = conn.search(BASE, proxy_filter("smtp", "sales@contoso.com"), RECIPIENT_ATTRIBUTES)
    assert "group" in sales.classes
    members = sales.all("member")
    assert members == [BOB, CAROL, f"CN=Sales Managers,{USERS}"]
    addresses = [
        conn.search(dn, "(objectClass=*)", ["mail"], scope="BASE")[0].first("mail") for dn in members
    ]
    assert addresses == ["bob@contoso.com", "carol@contoso.com", "sales-managers@contoso.com"]


def test_scopes_and_directory_order(conn: GcConnection) -> None:
    groups = conn.search(BASE, "(objectClass=group)", ["cn"])
    # Directory order is the fixture's order.
    in_fixture = [
        line[4:]
        for line in CONFIG.directory.read_text().splitlines()
        if line.startswith("dn: ") and "group" in _classes_of(line[4:])
    ]
    assert dns(groups) == in_fixture and len(in_fixture) >= 3
    # LEVEL: the children only, never the base itself nor grandchildren.
    top = conn.search(BASE, "(objectClass=*)", ["cn"], scope="LEVEL")
    assert dns(top) == [USERS, f"CN=Configuration,{BASE}"]
    level = conn.search(USERS, "(objectClass=*)", ["cn"], scope="LEVEL")
    assert USERS not in dns(level)
    assert len(level) == sum(
        1
        for line in CONFIG.directory.read_text().splitlines()
        if line.startswith("dn: CN=") and line.endswith(f",{USERS}")
    )
    subtree = conn.search(USERS, "(objectClass=*)", ["cn"])
    assert dns(subtree) == [USERS, *dns(level)]


# --- the query log ---------------------------------------------------------------------------------


def test_query_log(gc: MockGlobalCatalog, conn: GcConnection) -> None:
    other = gc.connect("EX3")
    conn.search(BASE, proxy_filter("smtp", "alice@contoso.com"), ("cn", "mail"))
    other.search(EX1, "(objectClass=msExchExchangeServer)", ["networkAddress"], scope="BASE")
    other.search(BASE, proxy_filter("smtp", "nobody@contoso.com"), ["cn"])
    queries = gc.queries
    assert [q.client for q in queries] == ["EX1", "EX3", "EX3"]
    first = queries[0]
    assert isinstance(first, LdapQuery)
    assert (first.base, first.filter, first.scope) == (
        BASE,
        "(proxyAddresses=smtp:alice@contoso.com)",
        "SUBTREE",
    )
    assert first.attributes == ("cn", "mail")
    assert (first.results, first.dns) == (1, (ALICE,))
    assert first.time == pytest.approx(time.time(), abs=60)
    assert (queries[1].scope, queries[1].dns) == ("BASE", (EX1,))
    assert (queries[2].results, queries[2].dns) == (0, ())
    # A copy: callers cannot change the log.
    queries.clear()
    assert len(gc.queries) == 3
    gc.clear_log()
    assert gc.queries == []


def test_query_log_is_thread_safe(gc: MockGlobalCatalog) -> None:
    gc.clear_log()
    shared = gc.connect("EX2")

    def work(index: int) -> None:
        own = gc.connect(f"worker-{index}")
        for _ in range(20):
            assert len(own.search(BASE, proxy_filter("smtp", "bob@contoso.com"), ["cn"])) == 1
            assert len(shared.search(BASE, proxy_filter("smtp", "dave@contoso.com"), ["cn"])) == 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(gc.queries) == 4 * 20 * 2


def test_the_query_log_keeps_its_newest_entries_and_counts_the_dropped_ones() -> None:
    catalog = MockGlobalCatalog(CONFIG, log_limit=5)
    catalog.load()
    connection = catalog.connect("EX1")
    users = ["alice", "bob", "carol", "dave", "erin", "frank", "grace"]
    for user in users:
        connection.search(BASE, proxy_filter("smtp", f"{user}@contoso.com"), ["cn"])
    assert [q.filter for q in catalog.queries] == [
        f"(proxyAddresses=smtp:{user}@contoso.com)" for user in users[2:]
    ]
    assert catalog.queries_dropped == 2
    catalog.clear_log()
    assert (catalog.queries, catalog.queries_dropped) == ([], 0)


# --- SMTP AUTH -------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["alice", "ALICE", "alice@contoso.com", "Alice.Smith@Contoso.com"])
def test_authenticate_by_account_mail_or_proxy_address(gc: MockGlobalCatalog, user: str) -> None:
    assert gc.authenticate(user, "Alice-P@ss1") == ALICE


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("alice", "wrong"),
        ("alice", "alice-p@ss1"),  # passwords are case-sensitive, unlike the mock's own comparison
        ("alice", ""),
        ("", "Alice-P@ss1"),
        ("carol", "anything"),  # no password set
        ("nobody", "Alice-P@ss1"),
        ("*", "Alice-P@ss1"),
        ("sales@contoso.com", "x"),  # a group, not a user
    ],
)
def test_authenticate_failures(gc: MockGlobalCatalog, user: str, password: str) -> None:
    assert gc.authenticate(user, password) is None


def test_authenticate_is_logged(gc: MockGlobalCatalog) -> None:
    gc.clear_log()
    assert gc.authenticate("relayuser", "Relay-P@ss1") == f"CN=Relay User,{USERS}"
    (query,) = gc.queries
    assert query.client == "smtp-auth"
    assert "(sAMAccountName=relayuser)" in query.filter
    assert "(proxyAddresses=smtp:relayuser)" in query.filter
    assert query.dns == (f"CN=Relay User,{USERS}",)


# --- broken fixtures -------------------------------------------------------------------------------

VALID = b"version: 1\n\ndn: DC=x\nobjectClass: top\n\n"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (VALID + b"# a comment\ndn: CN=a,DC=x\ncn: a\nno colon here\n", 9, "expected 'attribute: value'"),
        (VALID + b"objectClass: top\ncn: a\n", 6, "does not start with 'dn:'"),
        (b"dn: DC=x\ndescription: folded\n  over two lines\nbroken\n", 4, "expected 'attribute: value'"),
        (VALID + b"dn: CN=a,DC=x\ncn: a\n\n\ndn: cn=A,dc=x\ncn: a\n", 10, "duplicate entry"),
        (VALID + b"dn: CN=a,DC=x\ncn:: !!notbase64\n", 7, "base64"),
        (VALID + b"dn: CN=a, DC=x\ncn: a\n", 6, "entry 'CN=a, DC=x'"),
    ],
)
def test_broken_ldif_names_file_and_line(tmp_path: Path, text: bytes, line: int, message: str) -> None:
    path = tmp_path / "broken.ldif"
    path.write_bytes(text)
    catalog = MockGlobalCatalog(dataclasses.replace(CONFIG, directory=path))
    with pytest.raises(GlobalCatalogError) as caught:
        catalog.load()
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert message in str(caught.value)
    assert (caught.value.path, caught.value.line) == (path, line)
    assert not catalog.loaded


def test_missing_ldif_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.ldif"
    with pytest.raises(GlobalCatalogError, match=f"^{re.escape(str(path))}: cannot read"):
        MockGlobalCatalog(dataclasses.replace(CONFIG, directory=path)).load()


def test_error_paths_inside_the_work_tree_are_relative(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "fixtures").mkdir()
    path = tmp_path / "fixtures" / "bad.ldif"
    path.write_bytes(b"dn: DC=x\nbad\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GlobalCatalogError, match=r"^fixtures/bad\.ldif:2: "):
        MockGlobalCatalog(dataclasses.replace(CONFIG, directory=path)).load()


def _classes_of(dn: str) -> set[str]:
    text = CONFIG.directory.read_text()
    block = text.split(f"dn: {dn}\n", 1)[1].split("\n\n", 1)[0]
    return {line.split(": ", 1)[1] for line in block.splitlines() if line.startswith("objectClass: ")}
