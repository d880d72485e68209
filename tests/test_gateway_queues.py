"""The inbound gateway path's folders and X.400 queues on a running lab: a message rests in exactly one
of them, and what a stopped lab left there goes on when the next lab starts on the same folder, without
being handed to AQ twice."""

from __future__ import annotations

import email
import os
import shutil
from pathlib import Path

from harness.judge.evidence import DeliveryKind, Evidence
from harness.lab import config as lab_config
from harness.lab.runtime import Lab
from reference_mta.tracking import read_events

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"
BASE = f"127.{60 + int(os.environ.get('PYTEST_XDIST_WORKER', 'gw0')[2:] or 0) % 20}.0.0"
MEMO = (
    b"From: Ann Lee/Sales/Fabrikam\nSendTo: Dave Ito/Contoso\nCopyTo: Alice Smith/Contoso\n"
    b"Subject: Kept\nBody:\nkept\n"
)
DELIVERED = [
    "mailbox alice@contoso.com on EX1 (from IMCEANOTES-Ann+20Lee+2FSales+2FFabrikam@contoso.com)",
    "mailbox dave@contoso.com on EX4 (from IMCEANOTES-Ann+20Lee+2FSales+2FFabrikam@contoso.com)",
]


def lab(workdir: Path) -> Lab:
    return Lab(lab_config.load(LAB, base=BASE, port_offset=28000), workdir)


def folders(workdir: Path) -> dict[str, Path]:
    ex4 = workdir / "EX4"
    return {
        "IN": ex4 / "gateways" / "Notes Connector" / "IN",
        "MTS-IN": ex4 / "gateways" / "Notes Connector" / "MTS-IN",
        "MTA": ex4 / "MTA" / "queue",
        "MTS-OUT": ex4 / "Mailroot" / "vsi 1" / "MTS-OUT",
    }


def items(workdir: Path) -> dict[str, list[str]]:
    return {name: sorted(p.name for p in folder.iterdir()) for name, folder in folders(workdir).items()}


def delivered(running: Lab) -> list[str]:
    return sorted(d.describe() for d in Evidence.collect(running).deliveries)


def test_a_message_left_in_a_frozen_x400_queue_goes_on_after_a_restart(tmp_path: Path) -> None:
    with lab(tmp_path) as first:
        first.freeze("EX4", "X.400: MTS-OUT")
        item = first.foreign_send("Notes Connector", MEMO)
        assert first.settle()
        assert items(tmp_path)["MTS-OUT"] == [f"{item}.eml"]
        assert delivered(first) == []
    # A new lab on the same folder: nothing is frozen now, and the message's envelope comes from its file.
    with lab(tmp_path) as second:
        assert second.settle()
        assert delivered(second) == DELIVERED
        assert items(tmp_path) == {"IN": [], "MTS-IN": [], "MTA": [], "MTS-OUT": []}
        held = [e for e in read_events(tmp_path / "tracking", "EX4") if e["event-id"] == 1027]
        assert [e["msgid"] for e in held] == [f"{item}@notes-connector.gateway"] * 2  # one per recipient


def test_a_memo_left_in_in_is_translated_at_the_restart_and_one_already_translated_is_not(
    tmp_path: Path,
) -> None:
    with lab(tmp_path) as first:
        first.freeze("EX4", "X.400: MTA queue")
        item = first.foreign_send("Notes Connector", MEMO)
        assert first.settle()
    # As if the lab had stopped between the two: the translated message is in the MTA queue and its memo
    # is still in IN; and another memo had only just been queued in IN.
    (folders(tmp_path)["IN"] / f"{item}.memo").write_bytes(MEMO)
    (folders(tmp_path)["IN"] / "0123abcd.memo").write_bytes(MEMO.replace(b"Kept", b"Late"))
    with lab(tmp_path) as second:
        assert second.settle()
        subjects = sorted(
            str(email.message_from_bytes(d.data)["Subject"])
            for d in Evidence.collect(second).deliveries
            if d.kind is DeliveryKind.MAILBOX
        )
        assert subjects == ["Kept", "Kept", "Late", "Late"]
        assert items(tmp_path) == {"IN": [], "MTS-IN": [], "MTA": [], "MTS-OUT": []}


def test_a_message_already_handed_to_aq_is_not_handed_over_again(tmp_path: Path) -> None:
    with lab(tmp_path) as first:
        first.freeze("EX4", "X.400: MTS-OUT")
        item = first.foreign_send("Notes Connector", MEMO)
        assert first.settle()
        kept = folders(tmp_path)["MTS-OUT"] / f"{item}.eml"
        copy = tmp_path / "copy.eml"
        shutil.copy(kept, copy)
        first.freeze("EX4", "X.400: MTS-OUT", False)
        assert first.settle()
        assert delivered(first) == DELIVERED
    # As if the lab had stopped after AQ took the message but before MTS-OUT let go of it.
    shutil.copy(copy, kept)
    with lab(tmp_path) as second:
        assert second.settle()
        assert items(tmp_path)["MTS-OUT"] == []
        assert delivered(second) == DELIVERED


def test_an_item_the_mta_is_still_moving_is_listed_in_its_queue_only(tmp_path: Path) -> None:
    """The MTA moves an item's content into MTS-OUT first and its envelope last (reference_mta/mta.py):
    halfway, Queue Viewer shows it in the MTA's queue and not yet in MTS-OUT."""
    with lab(tmp_path) as running:
        running.set_gateway("Notes Connector", False)
        running.freeze("EX4", "X.400: Notes Connector")
        running.submit("EX4", "dave@contoso.com", ["nora.lee@contoso.com"], b"Subject: halfway\n\nx\n")
        assert running.settle()
        assert len(running.queues()["EX4"]["X.400: Notes Connector"]) == 1
        mta_queue = next(f for f in (tmp_path / "EX4" / "MTA").rglob("*.eml"))
        mts_out = tmp_path / "EX4" / "gateways" / "Notes Connector" / "MTS-OUT"
        shutil.copy(mta_queue, mts_out / mta_queue.name)  # the first of the two renames, done
        queues = running.queues()["EX4"]
        assert len(queues["X.400: Notes Connector"]) == 1
        assert queues["Notes Connector MTS-OUT"] == []
