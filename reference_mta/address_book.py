"""The directory as the SMTP front end sees it: does an address exist (recipient filtering, VRFY), and
who is in a group (EXPN). Look-ups go by proxy address, escaped, exactly as the categorizer's do; a
global catalog that does not answer raises DirectoryUnavailable."""

from __future__ import annotations

from dataclasses import dataclass

from reference_mta.directory import Directory, DirectoryEntry, primary_smtp, proxy_filter

_ATTRIBUTES = ("mail", "displayName", "cn", "objectClass", "member", "proxyAddresses")


@dataclass(frozen=True)
class Listing:
    """A recipient as VRFY and EXPN show it."""

    name: str
    address: str

    def __str__(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else f"<{self.address}>"


class AddressBook:
    def __init__(self, directory: Directory, base_dn: str) -> None:
        self.directory = directory
        self.base_dn = base_dn

    def find(self, address: str) -> DirectoryEntry | None:
        found = self.directory.search(self.base_dn, proxy_filter("smtp", address), _ATTRIBUTES)
        return found[0] if len(found) == 1 else None

    def listing(self, entry: DirectoryEntry, address: str | None = None) -> Listing:
        return Listing(
            entry.first("displayName") or entry.first("cn") or "",
            entry.first("mail") or primary_smtp(entry) or address or "",
        )

    def members(self, group: DirectoryEntry) -> list[Listing]:
        """The group's direct members that have an SMTP address, in directory order."""
        listed: list[Listing] = []
        for dn in group.all("member"):
            found = self.directory.search(dn, "(objectClass=*)", _ATTRIBUTES, scope="BASE")
            if found:
                listing = self.listing(found[0])
                if listing.address:
                    listed.append(listing)
        return listed
