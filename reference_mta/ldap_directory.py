"""The global catalog over real LDAP: a `Directory` and SMTP AUTH's `authenticate` for a server that
reaches the directory at a host and port rather than in-process.

Searches run on one connection, bound as the categorizer account, opened on first use (the directory
may start after the server) and opened again once if the directory dropped it. A search's entries are
what the lab's in-process connection returns: attributes under the spelling the caller asked for, in
the order the directory sent them, values as text, none of the empty attributes that ldap3 adds for
each requested attribute an entry lacks. A directory that refuses (unavailable, busy, down, no answer
in time) raises `DirectoryUnavailable`, which the transport treats as a temporary failure.

`authenticate` is an LDAP simple bind with the name the SMTP client gave (sAMAccountName, mail or SMTP
proxy address, as Active Directory takes a user principal name), then Who am I? (RFC 4532) for the DN:
the directory decides, and logs its look-up as SMTP AUTH's, exactly as the in-process catalog does.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Sequence
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException

from reference_mta.directory import DirectoryEntry, DirectoryUnavailable, attribute_text, same_dn

__all__ = ["LdapDirectory"]

_SCOPES = {"BASE": ldap3.BASE, "LEVEL": ldap3.LEVEL, "SUBTREE": ldap3.SUBTREE}
_SUCCESS = 0
_SIZE_LIMIT_EXCEEDED = 4
_NO_SUCH_OBJECT = 32
_INVALID_CREDENTIALS = 49
# Result codes that mean "not now": the message waits in its queue and is tried again.
_TEMPORARY = {51, 52, 53, 80}  # busy, unavailable, unwillingToPerform, other


class LdapDirectory:
    """The directory at `host:port` for the server `client_name` (named in errors); `source_address`
    binds the connection to one of the server's own addresses, so the directory knows who asks."""

    def __init__(
        self,
        host: str,
        port: int,
        bind_dn: str,
        password: str,
        client_name: str,
        *,
        source_address: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.bind_dn = bind_dn
        self.client_name = client_name
        self._password = password
        self._source_address = source_address
        self._timeout = timeout
        self._server = ldap3.Server(host, port=port, get_info=ldap3.NONE, connect_timeout=timeout)
        self._connection: ldap3.Connection | None = None
        # ldap3 leaves each result on the connection object: the lock keeps a search and the read of
        # its result together, since the transport searches from its event loop and from threads.
        self._lock = threading.Lock()

    # --- Directory -----------------------------------------------------------------------------------

    def search(
        self, base: str, ldap_filter: str, attributes: Sequence[str], *, scope: str = "SUBTREE"
    ) -> list[DirectoryEntry]:
        scope_name = scope.upper()
        if scope_name not in _SCOPES:
            raise ValueError(f"unknown search scope {scope!r} (BASE, LEVEL or SUBTREE)")
        requested = tuple(attributes)
        with self._lock:
            result, response = self._search(base, ldap_filter, requested, scope_name)
        code = result.get("result", _SUCCESS)
        if code == _NO_SUCH_OBJECT:
            return []  # a member or forwarding DN that no longer exists: as if it had no entries
        if code not in (_SUCCESS, _SIZE_LIMIT_EXCEEDED):
            raise DirectoryUnavailable(
                f"{self.client_name}: the global catalog at {self.host}:{self.port} refused a search "
                f"under {base!r} for {ldap_filter}: {result.get('description')} "
                f"{result.get('message') or ''}".rstrip()
            )
        return [_entry(item, requested) for item in response if item.get("type") == "searchResEntry"]

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._drop()

    # --- SMTP AUTH -----------------------------------------------------------------------------------

    def authenticate(self, user: str, password: str) -> str | None:
        """The DN of the user named by sAMAccountName, mail or SMTP proxy address whose password this
        is, or None; DirectoryUnavailable when the directory cannot say."""
        if not user or not password:
            # An empty password would be an LDAP unauthenticated bind, which "succeeds" anonymously.
            return None
        if same_dn(user, self.bind_dn):
            # The categorizer's own account binds by DN; an SMTP client never gets in as it.
            return None
        connection = self._open(user, password)
        try:
            try:
                connection.bind()
            except LDAPException as exc:
                raise self._unavailable(exc) from exc
            code = connection.result.get("result") if connection.result else None
            if code in _TEMPORARY:
                raise DirectoryUnavailable(
                    f"{self.client_name}: the global catalog at {self.host}:{self.port} cannot "
                    f"authenticate now: {connection.result.get('description')}"
                )
            if code != _SUCCESS:
                return None
            try:
                identity = connection.extend.standard.who_am_i()
            except LDAPException as exc:
                raise self._unavailable(exc) from exc
            identity = str(identity or "")
            return identity[3:] if identity.startswith("dn:") else None
        finally:
            _unbind(connection)

    # --- internals -----------------------------------------------------------------------------------

    def _search(
        self, base: str, ldap_filter: str, requested: tuple[str, ...], scope: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        # A connection the directory closed since the last search is opened again, once.
        for attempt in (1, 2):
            fresh = self._connection is None
            try:
                connection = self._bound()
                connection.search(
                    base,
                    ldap_filter,
                    search_scope=_SCOPES[scope],
                    attributes=list(requested) or ldap3.NO_ATTRIBUTES,
                )
                return dict(connection.result or {}), list(connection.response or [])
            except DirectoryUnavailable:
                self._drop()
                raise
            except LDAPException as exc:
                self._drop()
                if fresh or attempt == 2:
                    raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")

    def _bound(self) -> ldap3.Connection:
        if self._connection is not None:
            return self._connection
        connection = self._open(self.bind_dn, self._password)
        try:
            bound = connection.bind()
        except LDAPException as exc:
            _unbind(connection)
            raise self._unavailable(exc) from exc
        if not bound:
            description = (connection.result or {}).get("description")
            _unbind(connection)
            raise DirectoryUnavailable(
                f"{self.client_name}: bind as {self.bind_dn} to the global catalog at "
                f"{self.host}:{self.port} failed: {description}"
            )
        self._connection = connection
        return connection

    def _open(self, user: str, password: str) -> ldap3.Connection:
        return ldap3.Connection(
            self._server,
            user=user,
            password=password,
            client_strategy=ldap3.SYNC,
            # ldap3 packs it into SO_RCVTIMEO as whole seconds.
            receive_timeout=max(1, math.ceil(self._timeout)),
            source_address=self._source_address,
            raise_exceptions=False,
            auto_referrals=False,
            read_only=True,
        )

    def _drop(self) -> None:
        if self._connection is not None:
            _unbind(self._connection)
        self._connection = None

    def _unavailable(self, exc: Exception) -> DirectoryUnavailable:
        return DirectoryUnavailable(
            f"{self.client_name}: the global catalog at {self.host}:{self.port} is not answering: {exc}"
        )


def _entry(item: dict[str, Any], requested: tuple[str, ...]) -> DirectoryEntry:
    wanted = {name.lower(): name for name in requested}
    attributes: dict[str, list[str]] = {}
    for name, values in (item.get("raw_attributes") or {}).items():
        # ldap3 pads each requested attribute the entry lacks with []; a directory omits them.
        if not values:
            continue
        # Callers index by the spelling they asked for, as they would with AD's own names.
        attributes[wanted.get(str(name).lower(), str(name))] = [attribute_text(v) for v in values]
    return DirectoryEntry(str(item["dn"]), attributes)


def _unbind(connection: ldap3.Connection) -> None:
    with contextlib.suppress(LDAPException):  # already closed by the other side
        connection.unbind()
