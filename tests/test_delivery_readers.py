"""Reading an outside MTA's Maildirs (harness/targets/delivery_readers.py): only what arrived after the
trace began counts, the sender is the delivery agent's Return-Path, and a Maildir not made yet, or being
made, is an empty mailbox."""

from __future__ import annotations

import mailbox
from pathlib import Path

from harness.targets.delivery_readers import MaildirReader, maildir_path

MESSAGE = b"Return-Path: <ann@fabrikam.com>\nSubject: %s\n\nbody\n"


def test_the_pattern_names_a_mailbox_by_local_part_or_address() -> None:
    assert maildir_path("/var/mail/{mailbox}/", "Alice@Contoso.com") == Path("/var/mail/alice")
    assert maildir_path("/srv/{address}/Maildir", "Alice@Contoso.com") == Path(
        "/srv/alice@contoso.com/Maildir"
    )


def test_only_messages_that_arrived_during_the_trace_count(tmp_path: Path) -> None:
    box = mailbox.Maildir(tmp_path / "alice", create=True)
    box.add(MESSAGE % b"before")
    reader = MaildirReader(f"{tmp_path}/{{mailbox}}", ["alice@contoso.com", "bob@contoso.com"], "EX1")
    reader.begin()
    before = reader.state()
    box.add(MESSAGE % b"during")
    (delivery,) = reader.deliveries()
    assert (delivery.mailbox, delivery.server, delivery.sender) == (
        "alice@contoso.com",
        "EX1",
        "ann@fabrikam.com",
    )
    assert b"Subject: during" in delivery.data
    assert reader.state() != before


def test_a_maildir_not_made_or_half_made_is_empty(tmp_path: Path) -> None:
    reader = MaildirReader(f"{tmp_path}/{{address}}", ["alice@contoso.com"], "EX1")
    reader.begin()
    # The MTA makes tmp, new and cur one by one with the first delivery: caught between two of them.
    (tmp_path / "alice@contoso.com" / "tmp").mkdir(parents=True)
    (tmp_path / "alice@contoso.com" / "cur").mkdir()
    assert reader.deliveries() == []
    (tmp_path / "alice@contoso.com" / "new").mkdir()
    mailbox.Maildir(tmp_path / "alice@contoso.com", create=False).add(MESSAGE % b"first")
    assert [d.mailbox for d in reader.deliveries()] == ["alice@contoso.com"]
