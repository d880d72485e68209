"""Readers of an outside MTA's mailboxes: where the harness sees what an MTA it does not run delivered.

A reader notes what each mailbox holds when the trace starts (`begin`) and afterwards returns only what
arrived since (`deliveries`), as the `MailboxDelivery` records the evidence reads
(harness/judge/evidence.py). `state` is a cheap fingerprint of what the mailboxes hold, which changes
whenever a message arrives: the lab counts an outside MTA as settled once it stays the same for a while
(it has no queue the harness can read).

`MaildirReader` reads Maildirs with the standard library's `mailbox` module. A reader for IMAP or POP3
(imaplib, poplib) implements the same `DeliveryReader` protocol: log in per mailbox in `begin`, note
the UIDs there, and fetch the others in `deliveries`.
"""

from __future__ import annotations

import mailbox
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Protocol

from harness.lab.standin import MailboxDelivery, from_maildir


class DeliveryReader(Protocol):
    def begin(self) -> None:
        """Note what the mailboxes hold now: none of it is the trace's."""
        ...

    def deliveries(self) -> list[MailboxDelivery]:
        """What arrived since `begin`, oldest first."""
        ...

    def state(self) -> Hashable:
        """Changes whenever a message arrives (for settling)."""
        ...


def maildir_path(pattern: str, address: str) -> Path:
    """The Maildir of the mailbox `address` by a profile's pattern: `{mailbox}` is the local part,
    `{address}` the whole address (lower case, as the reference MTA's store names its folders)."""
    local = address.partition("@")[0]
    return Path(pattern.replace("{mailbox}", local.lower()).replace("{address}", address.lower()))


class MaildirReader:
    """The Maildirs of `mailboxes` (primary addresses), found by `pattern`, on behalf of `server`."""

    def __init__(self, pattern: str, mailboxes: Sequence[str], server: str) -> None:
        self.server = server
        self._folders = {address.lower(): maildir_path(pattern, address) for address in mailboxes}
        self._seen: dict[str, set[str]] = {}

    def _keys(self, folder: Path) -> set[str]:
        try:
            return set(mailbox.Maildir(folder, create=False).keys())
        except (mailbox.NoSuchMailboxError, FileNotFoundError):
            # Not made yet, or being made right now (the MTA makes tmp, new and cur one by one with
            # the first delivery): nothing is in it yet.
            return set()

    def begin(self) -> None:
        self._seen = {address: self._keys(folder) for address, folder in self._folders.items()}

    def state(self) -> Hashable:
        return tuple(sorted((address, len(self._keys(folder))) for address, folder in self._folders.items()))

    def deliveries(self) -> list[MailboxDelivery]:
        found: list[tuple[float, MailboxDelivery]] = []
        for address, folder in self._folders.items():
            keys = self._keys(folder) - self._seen.get(address, set())
            if not keys:
                continue
            box = mailbox.Maildir(folder, create=False)
            for key in keys:
                try:
                    message = box.get_message(key)
                except KeyError:
                    continue  # gone since it was listed (a mail client took it): not ours to judge
                data, _, sender = from_maildir(message.as_bytes())
                found.append((message.get_date(), MailboxDelivery(address, self.server, sender, data)))
        return [delivery for _, delivery in sorted(found, key=lambda item: item[0])]
