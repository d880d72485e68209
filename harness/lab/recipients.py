"""The directory as a real MTA's lookup tables need it: which addresses exist, which mailbox each one
reaches and on which server it lives, what groups and contacts expand to. Read once from the lab's
global catalog when a stand-in is configured; every adapter renders its own tables from this.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from reference_mta.directory import Directory

_SERVER_IN_DN = re.compile(r"CN=([^,]+),CN=Servers,", re.IGNORECASE)
_ATTRIBUTES = (
    "mail",
    "proxyAddresses",
    "homeMDB",
    "objectClass",
    "member",
    "targetAddress",
    "altRecipient",
    "deliverAndRedirect",
)


@dataclass(frozen=True)
class Mailbox:
    primary: str  # the mailbox's own (primary SMTP) address; also its folder name
    addresses: tuple[str, ...]  # every SMTP address that reaches it, primary first
    server: str  # the lab server holding it
    forward_to: tuple[str, ...] = ()  # altRecipient's primary address: delivery goes there instead
    keep_copy: bool = False  # deliverAndRedirect: to the mailbox as well as to forward_to


@dataclass(frozen=True)
class Group:
    addresses: tuple[str, ...]
    members: tuple[str, ...]  # members' primary addresses


@dataclass(frozen=True)
class Contact:
    addresses: tuple[str, ...]
    target: str  # where mail for it goes (targetAddress, without its type)
    target_type: str = "SMTP"  # the targetAddress's address type: SMTP, or a foreign system's (NOTES)


@dataclass(frozen=True)
class Login:
    """A directory account for SMTP AUTH: every name it may log in with, and its password."""

    names: tuple[str, ...]  # sAMAccountName, mail and SMTP proxy addresses, as the lab's GC accepts
    password: str


@dataclass
class RecipientTable:
    mailboxes: list[Mailbox] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    contacts: list[Contact] = field(default_factory=list)
    logins: list[Login] = field(default_factory=list)

    @classmethod
    def from_directory(cls, directory: Directory, base_dn: str) -> RecipientTable:
        entries = directory.search(base_dn, "(proxyAddresses=*)", _ATTRIBUTES)
        primary_of = {entry.dn.lower(): _smtp_addresses(entry.all("proxyAddresses"))[:1] for entry in entries}
        table = cls()
        for entry in entries:
            addresses = tuple(_smtp_addresses(entry.all("proxyAddresses")))
            if not addresses:
                continue
            classes = entry.classes
            home = entry.first("homeMDB")
            target = entry.first("targetAddress")
            if "group" in classes:
                members = tuple(
                    address for dn in entry.all("member") for address in primary_of.get(dn.lower(), [])
                )
                table.groups.append(Group(addresses, members))
            elif home and (match := _SERVER_IN_DN.search(home)):
                alternate = entry.first("altRecipient")
                forward = tuple(primary_of.get(alternate.lower(), [])) if alternate else ()
                keep = (entry.first("deliverAndRedirect") or "").upper() == "TRUE"
                table.mailboxes.append(
                    Mailbox(addresses[0], addresses, match[1], forward, keep and bool(forward))
                )
            elif target:
                kind, _, value = target.partition(":")
                table.contacts.append(Contact(addresses, value or target, kind.upper() if value else "SMTP"))
        accounts = directory.search(
            base_dn, "(userPassword=*)", ("sAMAccountName", "mail", "proxyAddresses", "userPassword")
        )
        for account in accounts:
            names = [n for n in (account.first("sAMAccountName"), account.first("mail")) if n]
            names += _smtp_addresses(account.all("proxyAddresses"))
            password = account.first("userPassword")
            if password:
                table.logins.append(Login(tuple(dict.fromkeys(n.lower() for n in names)), password))
        return table

    def mailboxes_on(self, server: str) -> list[Mailbox]:
        return [m for m in self.mailboxes if m.server.lower() == server.lower()]


def _smtp_addresses(proxies: Iterable[str]) -> list[str]:
    """SMTP proxy addresses, the primary (upper-case SMTP:) first."""
    primary = [p[5:] for p in proxies if p.startswith("SMTP:")]
    secondary = [p[5:] for p in proxies if p.startswith("smtp:")]
    return [a.lower() for a in primary + secondary]
