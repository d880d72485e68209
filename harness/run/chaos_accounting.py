"""The books of a crash test (`mailflow chaos`): what each acknowledged message was owed, what the lab's
folder shows was delivered, and what is still queued, reconciled into lost, duplicated and delivered
once. Reading the folder and reconciling are kept apart from the lab, so that the reconciliation is
checked without one."""

from __future__ import annotations

import email
import email.policy
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.lab import captures
from reference_mta import store

# (Message-ID without its angle brackets, recipient address in lower case)
Pair = tuple[str, str]


def message_id(value: str) -> str:
    """A Message-ID as the books key it: the same whether a header kept its angle brackets or not."""
    return value.strip().strip("<>").strip()


@dataclass(frozen=True)
class Sent:
    """One message a sender tried: the Message-ID, whom it owes a copy (groups already expanded to
    their members), and whether the server acknowledged it with 250 after DATA."""

    msgid: str
    owed: tuple[str, ...]
    acknowledged: bool


@dataclass
class Tally:
    sent: int = 0
    acknowledged: int = 0
    expected: int = 0  # (message, recipient) deliveries owed by acknowledged messages
    delivered_once: int = 0
    lost: list[Pair] = field(default_factory=list)
    duplicated: dict[Pair, int] = field(default_factory=dict)  # pair → how many copies
    queued: list[Pair] = field(default_factory=list)  # owed, not delivered, its message still queued

    @property
    def unacknowledged(self) -> int:
        return self.sent - self.acknowledged

    @property
    def worst(self) -> tuple[Pair, int] | None:
        """The delivery repeated most often."""
        if not self.duplicated:
            return None
        pair = max(self.duplicated, key=lambda p: (self.duplicated[p], p))
        return pair, self.duplicated[pair]


def tally(sent: Iterable[Sent], delivered: Mapping[Pair, int], queued: set[str]) -> Tally:
    """Each (message, recipient) an acknowledged message owes is delivered once, more than once
    (duplicated), not at all while its message still waits in a queue (queued), or not at all (lost).
    A message that got no 250 owes nothing: its client keeps the duty to send it again."""
    books = Tally()
    for message in sent:
        books.sent += 1
        if not message.acknowledged:
            continue
        books.acknowledged += 1
        for recipient in dict.fromkeys(r.lower() for r in message.owed):
            pair = (message_id(message.msgid), recipient)
            books.expected += 1
            copies = delivered.get(pair, 0)
            if copies == 1:
                books.delivered_once += 1
            elif copies > 1:
                books.duplicated[pair] = copies
            elif pair[0] in queued:
                books.queued.append(pair)
            else:
                books.lost.append(pair)
    return books


def deliveries(workdir: Path) -> Counter[Pair]:
    """How many copies of each message each recipient got: in the reference servers' mailbox stores,
    and at the lab's Internet hosts (one copy per recipient of the envelope)."""
    found: Counter[Pair] = Counter()
    for record in store.read_deliveries(workdir):
        found[(message_id(str(record["msgid"])), str(record["recipient"]).lower())] += 1
    for capture in captures.stored(workdir):
        head = capture.message.read_bytes().split(b"\r\n\r\n", 1)[0]
        header = email.message_from_bytes(head, policy=email.policy.compat32).get("Message-ID", "")
        for recipient in capture.envelope.get("rcpt_to", []):
            found[(message_id(str(header)), str(recipient).lower())] += 1
    return found


def store_repeats(workdir: Path) -> int:
    """Deliveries the mailbox stores dropped as repeats of one they had made (a step done again after
    a crash, or a resend): not duplicates a user sees, but a sign of how often a redo happened."""
    return sum(
        sum(1 for line in index.read_text(encoding="utf-8").splitlines() if line.strip())
        for index in workdir.glob(f"*/mdbdata/*/*/{store.REPEATS}")
    )


def _mailroots(workdir: Path) -> list[Path]:
    return sorted(p for p in workdir.glob("*/Mailroot") if p.is_dir())


def queued_messages(workdir: Path) -> set[str]:
    """The Message-IDs of every envelope left in a server's Mailroot (its queue folder, a gateway's
    MTS-OUT): what a server still has to deliver."""
    found: set[str] = set()
    for mailroot in _mailroots(workdir):
        for path in mailroot.rglob("*.json"):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # half a file is a leftover, counted by `leftovers`
            msg = record.get("msg", record) if isinstance(record, dict) else {}
            properties = msg.get("properties", {}) if isinstance(msg, dict) else {}
            if isinstance(properties, dict) and properties.get("RFC822_MSG_ID"):
                found.add(message_id(str(properties["RFC822_MSG_ID"])))
    return found


def leftovers(workdir: Path) -> list[Path]:
    """Files a crash left in the Mailroots once the queues are empty: temporary files of an unfinished
    write, and content files of the queue folder that no envelope names."""
    found: list[Path] = []
    for mailroot in _mailroots(workdir):
        found += [p for p in mailroot.rglob("*.tmp") if p.is_file()]
        for queue in mailroot.rglob("Queue"):
            named = set()
            for envelope in queue.glob("*.json"):
                try:
                    msg = json.loads(envelope.read_text(encoding="utf-8")).get("msg", {})
                    named.add(str(msg.get("properties", {}).get("CONTENT_ID", "")))
                except (OSError, ValueError, AttributeError):
                    continue
            found += [p for p in queue.glob("*.eml") if p.stem not in named]
    return sorted(found)
