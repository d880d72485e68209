"""Whom a crash test (`mailflow chaos`) writes to, chosen from the lab's directory: mailboxes on the
first server, mailboxes in the other routing groups, and a group whose members live on three servers."""

from __future__ import annotations

import random
from dataclasses import dataclass

from harness.lab.config import LabConfig
from harness.lab.gc import GlobalCatalogError, MockGlobalCatalog
from harness.lab.recipients import RecipientTable


class ChaosSetupError(ValueError):
    """The lab cannot carry the test: it lacks a recipient or client the test needs."""


@dataclass(frozen=True)
class Recipients:
    """Whom the senders write to: mailboxes on the entry server, mailboxes in the other routing groups,
    a group whose members live on three servers or more, and maybe an Internet address."""

    sender: str
    local: tuple[str, ...]
    remote: tuple[str, ...]
    group: str
    members: tuple[str, ...]
    internet: str | None = None

    def pick(self, rng: random.Random) -> dict[str, tuple[str, ...]]:
        """One message's recipients, each with the mailboxes it owes a copy to."""
        chosen = {rng.choice(self.local): (), rng.choice(self.remote): ()}
        if rng.random() < 0.5:
            chosen[self.group] = ()
        if self.internet is not None and rng.random() < 0.3:
            chosen[self.internet] = ()
        return {r: self.members if r == self.group else (r,) for r in chosen}


def recipients(config: LabConfig, internet: str | None) -> Recipients:
    """Chosen from the lab's directory, so that any lab with enough servers will do."""
    catalog = MockGlobalCatalog(config.global_catalog)
    try:
        catalog.load()
    except GlobalCatalogError as exc:
        raise ChaosSetupError(str(exc)) from None
    directory = catalog.connect("mailflow chaos")
    base_dn = config.global_catalog.base_dn
    table = RecipientTable.from_directory(directory, base_dn)
    # Mail to these is refused to an anonymous sender: no copy is owed.
    guarded = {
        address.lower()
        for entry in directory.search(
            base_dn, "(proxyAddresses=*)", ("proxyAddresses", "authOrig", "msExchRequireAuthToSendTo")
        )
        if entry.first("authOrig") or (entry.first("msExchRequireAuthToSendTo") or "").upper() == "TRUE"
        for address in entry.all("proxyAddresses")
        for address in [address.partition(":")[2]]
    }
    plain = {
        m.primary: m.server
        for m in table.mailboxes
        # A wildcard in an address is a filter test of its own, not a mailbox to write to.
        if not m.forward_to and m.primary not in guarded and "*" not in m.primary
    }
    servers = config.organization.servers
    entry = servers[0]
    group_of = {g.addresses[0]: g for g in table.groups}

    def expand(address: str, seen: frozenset[str] = frozenset()) -> tuple[str, ...] | None:
        """A group's mailboxes, or None when a member is not a plain mailbox (a contact, a guarded one)."""
        if address in plain:
            return (address,)
        group = group_of.get(address)
        if group is None or address in seen or address in guarded:
            return None
        found: list[str] = []
        for member in group.members:
            inner = expand(member, seen | {address})
            if inner is None:
                return None
            found += inner
        return tuple(dict.fromkeys(found))

    spread = [
        (name, members)
        for name in sorted(group_of)
        if (members := expand(name)) and len({plain[m] for m in members}) >= 3
    ]
    if not spread:
        raise ChaosSetupError(
            f"lab {config.name}: no group whose members are mailboxes on three servers or more"
        )
    group, members = spread[0]
    # A mailbox named directly is never also a member: its copies would be counted twice over.
    local = sorted(a for a, s in plain.items() if s == entry.name and a not in members)
    other_groups = {s.name for s in servers if s.routing_group != entry.routing_group}
    remote = sorted(a for a, s in plain.items() if s in other_groups and a not in members)
    if len(local) < 2 or not remote:
        raise ChaosSetupError(
            f"lab {config.name}: needs two mailboxes on {entry.name} and one in another routing group "
            f"besides the members of {group}"
        )
    return Recipients(local[-1], tuple(local[:-1]), tuple(remote), group, members, internet)
