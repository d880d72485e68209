"""The lab's mock global catalog: the organization's directory, loaded from LDIF into ldap3's mock DIT.

The reference Exchange servers categorize mail and authenticate SMTP clients against it, so it must
answer the searches a categorizer makes (proxyAddresses lookups, BASE-scope reads of server objects
and group members) with the results a real directory would give, and record every search so traces
can assert what was asked. ldap3's MOCK_SYNC strategy evaluates the filters; this module loads the
fixture, binds, and smooths over the places where the mock differs from a directory server (result
order, LEVEL scope, case-sensitive passwords).

In-process, the catalog is reached through `connect()`. Other processes (servers in containers of
their own, an MTA under test) reach the same content over real LDAP at `GlobalCatalogConfig.address:
port` through `harness/lab/ldap_server.py`, which searches and authenticates through this module:
the content and the query log are here, the transport there.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import ldap3
import ldif  # type: ignore[import-untyped]
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import safe_dn

from harness.lab.bounded_log import DEFAULT_LIMIT, BoundedLog
from harness.lab.config import GlobalCatalogConfig
from reference_mta.directory import DirectoryEntry, DirectoryUnavailable, attribute_text, same_dn

__all__ = [
    "AUTH_CLIENT",
    "GcConnection",
    "GlobalCatalogError",
    "LdapQuery",
    "MockGlobalCatalog",
    "SearchAnswer",
]

_SCOPES = {"BASE": ldap3.BASE, "LEVEL": ldap3.LEVEL, "SUBTREE": ldap3.SUBTREE}
_RESULT_SUCCESS = 0
_RESULT_NO_SUCH_OBJECT = 32
# The client name logged for SMTP AUTH lookups, which arrive without one.
AUTH_CLIENT = "smtp-auth"


class GlobalCatalogError(Exception):
    """The directory could not be loaded or used; for fixture problems it names the file and line."""

    def __init__(self, message: str, path: Path | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.message = message
        if path is None:
            super().__init__(message)
        else:
            where = f"{_display(path)}:{line}" if line else _display(path)
            super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class LdapQuery:
    """One logged search: who asked what, and which entries (DNs, in directory order) it returned."""

    time: float
    client: str
    base: str
    filter: str
    scope: str
    attributes: tuple[str, ...]
    results: int
    dns: tuple[str, ...]


@dataclass(frozen=True)
class SearchAnswer:
    """A search's entries, and whether its base exists (an LDAP server answers noSuchObject if not)."""

    entries: list[DirectoryEntry]
    base_exists: bool


class GcConnection:
    """One client's connection, bound as the categorizer account; a `reference_mta.directory.Directory`."""

    def __init__(self, catalog: MockGlobalCatalog, client: str, connection: ldap3.Connection) -> None:
        self._catalog = catalog
        self.client = client
        self._connection = connection
        # ldap3 leaves each result on the connection object; the lock keeps a search and the read of
        # its result together when one connection is shared between threads.
        self._lock = threading.Lock()

    def search(
        self, base: str, ldap_filter: str, attributes: Sequence[str], *, scope: str = "SUBTREE"
    ) -> list[DirectoryEntry]:
        return self.answer(base, ldap_filter, attributes, scope=scope).entries

    def answer(
        self, base: str, ldap_filter: str, attributes: Sequence[str], *, scope: str = "SUBTREE"
    ) -> SearchAnswer:
        """`search`, telling an empty result from a base that does not exist (which a directory server
        answers with noSuchObject, and `search` returns as no entries)."""
        scope_name = scope.upper()
        if scope_name not in _SCOPES:
            raise ValueError(f"unknown search scope {scope!r} (BASE, LEVEL or SUBTREE)")
        if not self._catalog.available:
            self._catalog._record(
                LdapQuery(time.time(), self.client, base, ldap_filter, scope_name, tuple(attributes), -1, ())
            )
            raise DirectoryUnavailable(f"global catalog {self._catalog.config.fqdn} is not answering")
        requested = tuple(attributes)
        asked = time.time()
        entries: list[DirectoryEntry] = []
        base_exists = True
        try:
            with self._lock:
                if not self._connection.bound:
                    self._connection.bind()  # at the first search: see MockGlobalCatalog.connect
                self._connection.search(
                    base,
                    ldap_filter,
                    search_scope=_SCOPES[scope_name],
                    attributes=list(requested) or ldap3.NO_ATTRIBUTES,
                )
                result = self._connection.result or {}
                response = list(self._connection.response or [])
            code = result.get("result", _RESULT_SUCCESS)
            if code == _RESULT_SUCCESS:
                entries = self._catalog._entries(response, base, scope_name, requested)
            elif code == _RESULT_NO_SUCH_OBJECT:
                base_exists = False
            else:
                raise GlobalCatalogError(
                    f"search under {base!r} for {ldap_filter} failed: {result.get('description')} "
                    f"{result.get('message') or ''}".rstrip()
                )
        except LDAPException as exc:
            raise GlobalCatalogError(f"search under {base!r} for {ldap_filter} failed: {exc}") from exc
        finally:
            # Failed searches are logged too: the log records what the client asked.
            self._catalog._record(
                LdapQuery(
                    time=asked,
                    client=self.client,
                    base=base,
                    filter=ldap_filter,
                    scope=scope_name,
                    attributes=requested,
                    results=len(entries),
                    dns=tuple(e.dn for e in entries),
                )
            )
        return SearchAnswer(entries, base_exists)

    def close(self) -> None:
        with self._lock:
            self._connection.unbind()


class MockGlobalCatalog:
    """The directory of one lab. `load()` before use; safe to search from several threads."""

    def __init__(self, config: GlobalCatalogConfig, log_limit: int = DEFAULT_LIMIT) -> None:
        self.config = config
        self._server: ldap3.Server | None = None
        # Directory order of every entry: ldap3's mock returns matches as a set, and logs and
        # results must not change from run to run.
        self._order: dict[str, int] = {}
        self._log: BoundedLog[LdapQuery] = BoundedLog(log_limit)
        self._auth_connection: GcConnection | None = None
        self._verified: set[tuple[str, str]] = set()  # credentials that bound, since the last load
        # False while the lab has "stopped" the global catalog: every search fails as unreachable.
        self.available = True

    # --- loading ---------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the LDIF fixture's DIT (see `_parsed`); a GlobalCatalogError names the file and line."""
        path = self.config.directory
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise GlobalCatalogError(
                f"cannot read the directory fixture: {exc.strerror or exc}", path
            ) from exc
        server, order = _parsed(raw, path, self.config.fqdn, self.config.bind_dn, self.config.bind_password)
        self._server = server
        self._order = order
        self._auth_connection = None
        self._verified.clear()

    @property
    def loaded(self) -> bool:
        return self._server is not None

    # --- clients ---------------------------------------------------------------------------------

    def connect(self, client: str) -> GcConnection:
        """A new connection for `client` (logged as such), bound as the categorizer account.

        Once the account's credentials have bound here, later connections bind at their first search:
        a lab's servers open a score of connections at start, few of which search in a given trace,
        and ldap3 spends a millisecond or two preparing the password of each bind."""
        account = (self.config.bind_dn, self.config.bind_password)
        if account in self._verified:
            connection = ldap3.Connection(
                self._server, user=account[0], password=account[1], client_strategy=ldap3.MOCK_SYNC
            )
            return GcConnection(self, client, connection)
        bound = self._bind(*account)
        if bound is None:
            raise GlobalCatalogError(f"{client}: bind as {self.config.bind_dn} failed: invalid credentials")
        self._verified.add(account)
        return GcConnection(self, client, bound)

    def authenticate(self, user: str, password: str) -> str | None:
        """SMTP AUTH: the DN of the user named by sAMAccountName, mail or SMTP proxy address whose
        password this is, or None."""
        if not user or not password:
            # An empty password would be an LDAP unauthenticated bind, which "succeeds" anonymously.
            return None
        if self._auth_connection is None:
            self._auth_connection = self.connect(AUTH_CLIENT)
        name = escape_filter_chars(user)
        lookup = f"(&(objectClass=user)(|(sAMAccountName={name})(mail={name})(proxyAddresses=smtp:{name})))"
        # DirectoryUnavailable goes up: the virtual server answers 454, a temporary failure.
        found = self._auth_connection.search(self.config.base_dn, lookup, ())
        if len(found) != 1:
            return None
        connection = self._bind(found[0].dn, password)
        if connection is None:
            return None
        connection.unbind()
        return found[0].dn

    def is_account(self, dn: str, password: str) -> bool:
        """Whether `password` is the categorizer account's own: an LDAP simple bind by DN is accepted
        for that account only, as the lab's in-process connections bind."""
        if not same_dn(dn, self.config.bind_dn):
            return False
        connection = self._bind(self.config.bind_dn, password)
        if connection is None:
            return False
        connection.unbind()
        return True

    # --- the query log ---------------------------------------------------------------------------

    @property
    def queries(self) -> list[LdapQuery]:
        return self._log.entries()

    @property
    def queries_dropped(self) -> int:
        """The oldest queries dropped from the log to keep it within its limit."""
        return self._log.dropped

    def clear_log(self) -> None:
        self._log.clear()

    def _record(self, query: LdapQuery) -> None:
        self._log.append(query)

    # --- internals -------------------------------------------------------------------------------

    def _bind(self, dn: str, password: str) -> ldap3.Connection | None:
        """A connection bound as `dn`, or None if the credentials are wrong."""
        if self._server is None:
            raise GlobalCatalogError("the global catalog is not loaded (call load() first)")
        if not password:
            return None
        connection = ldap3.Connection(
            self._server, user=dn, password=password, client_strategy=ldap3.MOCK_SYNC
        )
        try:
            bound = connection.bind()
        except LDAPException:
            return None
        # The mock compares passwords case-insensitively; a directory server does not.
        stored = self._server.dit.get(dn, {}).get("userPassword", [])
        if not bound or password.encode("utf-8") not in stored:
            connection.unbind()
            return None
        return connection

    def _entries(
        self, response: list[dict[str, Any]], base: str, scope: str, requested: tuple[str, ...]
    ) -> list[DirectoryEntry]:
        base_key = safe_dn(base).lower()
        # The mock's scopes test a plain string suffix and its LEVEL includes the base itself.
        wanted = {name.lower(): name for name in requested}
        everything = "*" in requested
        entries: list[tuple[int, DirectoryEntry]] = []
        for item in response:
            if item.get("type") != "searchResEntry":
                continue
            dn: str = item["dn"]
            key = dn.lower()
            if scope == "SUBTREE" and base_key and not (key == base_key or key.endswith("," + base_key)):
                continue
            if scope == "LEVEL" and _parent(key) != base_key:
                continue
            attributes: dict[str, list[str]] = {}
            for name, values in item.get("raw_attributes", {}).items():
                # ldap3 pads requested attributes the entry lacks with []; a directory omits them.
                if not values or (name.lower() not in wanted and not everything):
                    continue
                # Callers index by the spelling they asked for, as they would with AD's own names.
                attributes[wanted.get(name.lower(), name)] = [attribute_text(v) for v in values]
            entries.append((self._order.get(key, len(self._order)), DirectoryEntry(dn, attributes)))
        entries.sort(key=lambda pair: pair[0])
        return [entry for _, entry in entries]


def _parent(dn: str) -> str:
    escaped = False
    for index, char in enumerate(dn):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            return dn[index + 1 :]
    return ""


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _blocks(raw: bytes) -> Iterator[list[tuple[int, bytes]]]:
    """LDIF records as the ldif parser splits them, each logical line with its 1-based physical line.

    The parser's own line_counter skips continuation lines and runs ahead of the record it reports,
    so errors are located by redoing its split here (only when something went wrong).
    """
    reader = io.BytesIO(raw)
    number = 0
    block: list[tuple[int, bytes]] = []
    line = reader.readline()
    while line:
        number += 1
        start = number
        text = _strip_eol(line)
        following = reader.readline()
        while following[:1] == b" ":
            number += 1
            text += _strip_eol(following)[1:]
            following = reader.readline()
        if not text.startswith(b"#"):
            if text:
                block.append((start, text))
            elif block:
                yield block
                block = []
        line = following
    if block:
        yield block


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith(b"\n") else line


def _nth_block(raw: bytes, index: int) -> list[tuple[int, bytes]] | None:
    for number, block in enumerate(_blocks(raw), start=1):
        if number == index:
            return block
    return None


def _bad_line(raw: bytes, record: int) -> tuple[int | None, bytes | None]:
    """Line number and text of the first logical line in record number `record` that the parser rejects."""
    block = _nth_block(raw, record)
    if block is None:
        return None, None
    # Parsing ever longer prefixes of the record finds the line that breaks it without reimplementing
    # the parser's checks.
    for count in range(1, len(block) + 1):
        try:
            list(ldif.LDIFParser(io.BytesIO(b"\n".join(text for _, text in block[:count]))).parse())
        except ValueError:
            return block[count - 1]
    return block[0]


def _dn_line(raw: bytes, record: int) -> int | None:
    block = _nth_block(raw, record)
    if block is None:
        return None
    return next((number for number, text in block if text.startswith(b"dn:")), block[0][0])


@lru_cache(maxsize=16)
def _parsed(
    raw: bytes, path: Path, fqdn: str, bind_dn: str, bind_password: str
) -> tuple[ldap3.Server, dict[str, int]]:
    """The DIT of one LDIF text, made once per process: every lab of a corpus run loads the same
    fixture, and adding its entries to ldap3's mock costs more than the rest of a lab's start. The
    labs share the server; nothing writes to its DIT once it is loaded (the directory is read-only to
    the reference MTA), and each lab binds its own connections and keeps its own query log."""
    server = ldap3.Server(fqdn, get_info=ldap3.NONE)
    loader = ldap3.Connection(
        server,
        user=bind_dn,
        password=bind_password,
        client_strategy=ldap3.MOCK_SYNC,
    )
    order: dict[str, int] = {}
    parser = ldif.LDIFParser(io.BytesIO(raw))
    records = parser.parse()
    while True:
        try:
            dn, attributes = next(records)
        except StopIteration:
            break
        except ValueError as exc:
            # UnicodeDecodeError and binascii.Error are ValueErrors too.
            line, text = _bad_line(raw, parser.records_read)
            message = str(exc)
            if text is not None and b":" not in text:
                # The parser's own message for this is str.index()'s "subsection not found".
                message = f"expected 'attribute: value', found {text.decode('utf-8', 'replace')!r}"
            raise GlobalCatalogError(message, path, line) from exc
        if dn is None:
            continue  # the "version: 1" record
        try:
            added = loader.strategy.add_entry(dn, attributes)
        except LDAPException as exc:
            raise GlobalCatalogError(
                f"entry {dn!r}: {exc}", path, _dn_line(raw, parser.records_read)
            ) from exc
        if not added:
            raise GlobalCatalogError(f"duplicate entry {dn}", path, _dn_line(raw, parser.records_read))
        order[safe_dn(dn).lower()] = len(order)
    return server, order
