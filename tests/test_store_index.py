"""The store driver knows which deliveries a mailbox holds from its index, read on from where it last
looked: what another store driver (another process on the same folder) appended meanwhile counts, a
line a crash cut short is no delivery, and an index that was replaced is read again from its start.

Each test delivers a handful of small messages into a temporary folder: well under a second."""

from __future__ import annotations

import json
from pathlib import Path

from reference_mta.mailmsg import MailMsg
from reference_mta.store import INDEX, REPEATS, MailboxStore

STORE = "Mailbox Store (EX1)"
HOME = f"CN={STORE},CN=First Storage Group,CN=InformationStore,CN=EX1,CN=Servers"
ALICE = "alice@contoso.com"


def deliver(store: MailboxStore, msgid: str) -> list[str]:
    """The addresses delivered to (not dropped as a repeat or deferred)."""
    msg = MailMsg.new("ann@fabrikam.com", [ALICE], RFC822_MSG_ID=msgid)
    msg.recipients[0].home_mdb = HOME
    result = store.deliver(msg, f"Message-ID: <{msgid}>\r\n\r\nbody\r\n".encode(), (STORE,))
    assert not result.failed and not result.deferred, result.error
    return [recipient.address for recipient in result.delivered]


def repeats(root: Path) -> list[str]:
    path = root / "EX1" / "mdbdata" / STORE / ALICE / REPEATS
    if not path.exists():
        return []
    return [json.loads(line)["msgid"] for line in path.read_text(encoding="utf-8").splitlines()]


def index(root: Path) -> Path:
    return root / "EX1" / "mdbdata" / STORE / ALICE / INDEX


def test_what_another_store_driver_indexed_meanwhile_is_a_repeat(tmp_path: Path) -> None:
    one, other = MailboxStore(tmp_path, "EX1"), MailboxStore(tmp_path, "EX1")
    deliver(one, "first@x")
    deliver(other, "second@x")  # `one` has read the index before this line was added
    deliver(one, "third@x")
    deliver(one, "second@x")
    deliver(other, "first@x")
    deliver(other, "third@x")
    assert repeats(tmp_path) == ["second@x", "first@x", "third@x"]
    assert len(index(tmp_path).read_text(encoding="utf-8").splitlines()) == 3


def test_a_line_cut_short_is_no_delivery_and_the_next_line_counts(tmp_path: Path) -> None:
    store = MailboxStore(tmp_path, "EX1")
    deliver(store, "first@x")
    with index(tmp_path).open("ab") as file:
        file.write(b'{"key": "0123')  # a crash in the middle of a line
    deliver(store, "second@x")
    deliver(store, "third@x")
    assert deliver(MailboxStore(tmp_path, "EX1"), "fourth@x") == [ALICE]
    deliver(store, "second@x")
    deliver(store, "fourth@x")
    assert repeats(tmp_path) == ["second@x", "fourth@x"]


def test_an_index_replaced_is_read_again_from_its_start(tmp_path: Path) -> None:
    store = MailboxStore(tmp_path, "EX1")
    deliver(store, "first@x")
    deliver(store, "second@x")
    path = index(tmp_path)
    kept = path.read_text(encoding="utf-8").splitlines()[1]
    replacement = path.with_name("index.new")
    replacement.write_text(kept + "\n", encoding="utf-8")
    replacement.replace(path)  # only the second delivery is indexed now
    assert deliver(store, "first@x") == [ALICE]
    deliver(store, "second@x")
    assert repeats(tmp_path) == ["second@x"]
