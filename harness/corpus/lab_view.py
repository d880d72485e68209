"""What the evidence rule (harness/corpus/claims.py) needs to know of a trace's lab without running it:
the routing group of each server, and from the lab's directory fixture which addresses reach the same
mailbox and where a copy for an address ends up (a mailbox's primary address, a group's members, a
contact's target).

A trace names recipients as its client wrote them (an alias, a group) and deliveries by the mailbox
that stores them; only the directory relates the two.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from harness.lab import config as lab_config
from harness.lab.gc import GlobalCatalogError, MockGlobalCatalog
from harness.lab.recipients import RecipientTable
from harness.yamlsource import SourceError
from reference_mta.directory import proxy_filter as _proxy_filter


def proxy_filter(address: str) -> str:
    """The categorizer's look-up of an SMTP address (escaped per RFC 4515, as every LDAP client sends it)."""
    return _proxy_filter("smtp", address)


@dataclass(frozen=True)
class LabView:
    routing_groups: dict[str, str]  # server name (lower case) → routing group
    addresses: dict[str, frozenset[str]] = field(default_factory=dict)
    """address → every SMTP address of the same directory object (mailbox, group or contact)."""
    targets: dict[str, frozenset[str]] = field(default_factory=dict)
    """address → the addresses its copies are delivered as."""

    def routing_group(self, server: str) -> str | None:
        return self.routing_groups.get(server.lower())

    def proxies(self, address: str) -> frozenset[str]:
        return self.addresses.get(address.lower(), frozenset({address.lower()}))

    def reaches(self, address: str) -> frozenset[str]:
        """The address itself and every address a copy for it is delivered as."""
        return self.targets.get(address.lower(), frozenset()) | {address.lower()}


def lab_view(path: Path) -> LabView:
    """The view of the lab file `path`, read once per version of the file and of its directory: the
    whole corpus names a handful of labs. A broken directory fixture raises SourceError naming its file
    and line, as a broken trace or lab file does: it is the user's to fix."""
    stat = path.stat()
    config = _config(path, (stat.st_mtime_ns, stat.st_size))
    directory = config.global_catalog.directory
    version = directory.stat() if directory.is_file() else None
    return _view(
        path, (stat.st_mtime_ns, stat.st_size), (version.st_mtime_ns, version.st_size) if version else None
    )


@functools.lru_cache(maxsize=8)
def _config(path: Path, version: tuple[int, int]) -> lab_config.LabConfig:
    return lab_config.load(path)


@functools.lru_cache(maxsize=8)
def _view(path: Path, version: tuple[int, int], directory: tuple[int, int] | None) -> LabView:
    config = _config(path, version)
    groups = {server.name.lower(): server.routing_group for server in config.organization.servers}
    catalog = MockGlobalCatalog(config.global_catalog)
    try:
        catalog.load()
    except GlobalCatalogError as exc:
        raise SourceError(exc.path or config.global_catalog.directory, exc.line, "", exc.message) from exc
    table = RecipientTable.from_directory(catalog.connect("evidence rule"), config.global_catalog.base_dn)
    addresses: dict[str, frozenset[str]] = {}
    direct: dict[str, set[str]] = {}
    for mailbox in table.mailboxes:
        for address in mailbox.addresses:
            addresses[address] = frozenset(mailbox.addresses)
            direct[address] = {mailbox.primary, *mailbox.forward_to}
    for group in table.groups:
        for address in group.addresses:
            addresses[address] = frozenset(group.addresses)
            direct[address] = set(group.members)
    for contact in table.contacts:
        for address in contact.addresses:
            addresses[address] = frozenset(contact.addresses)
            direct[address] = {contact.target.lower()}
    return LabView(groups, addresses, {address: _closure(address, direct) for address in direct})


def _closure(address: str, direct: dict[str, set[str]]) -> frozenset[str]:
    """Everything a copy for `address` is delivered as, following nested groups and forwarding."""
    seen: set[str] = set()
    todo = [address]
    while todo:
        for target in direct.get(todo.pop(), set()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return frozenset(seen)
