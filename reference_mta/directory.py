"""The directory as the transport reads it: a global catalog connection, the entries a search returns,
and the filter by proxy address every look-up uses.

The categorizer, the address book (VRFY, EXPN, recipient filtering) and the gateway connectors read
recipients through this interface; a lab gives them its mock global catalog, a test any object with
`search`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import safe_dn

from reference_mta.queue_contract import ComponentUnavailable

Attributes = dict[str, list[str]]


@dataclass(frozen=True)
class DirectoryEntry:
    dn: str
    attributes: Attributes

    def first(self, name: str) -> str | None:
        values = self.attributes.get(name) or []
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return list(self.attributes.get(name) or [])

    @property
    def classes(self) -> set[str]:
        return {c.lower() for c in self.all("objectClass")}


class DirectoryUnavailable(ComponentUnavailable):
    """The global catalog did not answer (a Directory raises this from search)."""


class Directory(Protocol):
    """What the transport needs of a global catalog connection; search raises DirectoryUnavailable
    when the global catalog cannot be reached."""

    def search(
        self, base: str, ldap_filter: str, attributes: Sequence[str], *, scope: str = "SUBTREE"
    ) -> list[DirectoryEntry]: ...


def attribute_text(value: bytes | str) -> str:
    """An attribute value as the transport reads it: text (binary attributes such as objectGUID are not
    read by the categorizer)."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def same_dn(one: str, other: str) -> bool:
    """Whether two distinguished names name the same entry (case and spacing aside)."""
    if one.lower() == other.lower():
        return True
    try:
        return bool(safe_dn(one).lower() == safe_dn(other).lower())
    except LDAPException:
        return False


def proxy_filter(address_type: str, address: str) -> str:
    """The filter for one proxy address, escaped per RFC 4515: `*`, `(`, `)` and `\\` in a local part
    can never widen it."""
    return f"(proxyAddresses={escape_filter_chars(address_type.lower())}:{escape_filter_chars(address)})"


def primary_smtp(entry: DirectoryEntry) -> str | None:
    for value in entry.all("proxyAddresses"):
        if value.startswith("SMTP:"):
            return value[5:]
    return None
