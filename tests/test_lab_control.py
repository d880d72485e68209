"""A running lab driven from outside, as an administrator and an Outlook client would: queues with
their states, connectors and servers marked down and up, submissions through the store."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli.app import main
from harness.judge.evidence import Evidence
from harness.lab import config as lab_config
from harness.lab.control import ControlError, request
from harness.lab.runtime import Lab

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"
BASE = f"127.{40 + int(os.environ.get('PYTEST_XDIST_WORKER', 'gw0')[2:] or 0) % 20}.0.0"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    config = lab_config.load(LAB, base=BASE, port_offset=27000)
    with Lab(config, tmp_path, control=True) as running:
        yield running


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_submit_through_the_store_from_the_command_line(lab: Lab, tmp_path: Path) -> None:
    message = tmp_path / "note.eml"
    message.write_bytes(b"Subject: from the command line\n\nhello\n")
    output = cli(
        "submit",
        "--lab-dir",
        str(lab.workdir),
        "--server",
        "EX1",
        "--from",
        "alice@contoso.com",
        "--to",
        "bob@contoso.com",
        str(message),
    )
    assert output.startswith("submitted <") and "@ex1.contoso.com>" in output
    assert lab.settle()
    assert [d.describe() for d in Evidence.collect(lab).deliveries] == [
        "mailbox bob@contoso.com on EX2 (from alice@contoso.com)"
    ]


def test_a_connector_marked_down_holds_mail_in_unreachable_until_it_comes_back(lab: Lab) -> None:
    workdir = str(lab.workdir)
    cli("lab", "connector", "--lab-dir", workdir, "Example TLD SMTP Connector", "down")
    cli("lab", "connector", "--lab-dir", workdir, "Example Backup SMTP Connector", "down")
    request(
        lab.workdir,
        {
            "op": "submit",
            "server": "EX1",
            "mailbox": "alice@contoso.com",
            "to": ["ops@tailspin.example"],
            "content": "U3ViamVjdDogeA0KDQp4DQo=",
        },
    )
    assert lab.settle()
    rows = request(lab.workdir, {"op": "queues"})
    (waiting,) = [r for r in rows if r["count"]]
    assert (waiting["server"], waiting["queue"], waiting["state"]) == (
        "EX1",
        "Final destination currently unreachable",
        "Retry",
    )
    (listed,) = json.loads(cli("queues", "--lab-dir", workdir, "--server", "EX1", "--json"))
    assert (listed["queue"], listed["state"], listed["recipients"]) == (
        "Final destination currently unreachable",
        "Retry",
        ["ops@tailspin.example"],
    )
    assert "EX1" in cli("queues", "--lab-dir", workdir)
    output = cli("lab", "connector", "--lab-dir", workdir, "Example TLD SMTP Connector", "up")
    assert "Example TLD SMTP Connector is up" in output
    assert lab.settle()
    assert [d.describe() for d in Evidence.collect(lab).deliveries] == [
        "sink isp-smarthost from EX3: alice@contoso.com → ops@tailspin.example"
    ]


def test_a_server_taken_down_refuses_connections_and_is_rerouted_around(lab: Lab) -> None:
    cli("lab", "server", "--lab-dir", str(lab.workdir), "EX2", "down")
    assert lab.link_state.server_down("EX2")
    # EX2 bridgeheads the cheap Seattle-Tokyo connector: mail for London takes the direct one instead.
    lab.submit("EX1", "alice@contoso.com", ["carol@contoso.com"], b"Subject: x\r\n\r\nx\r\n")
    assert lab.settle()
    evidence = Evidence.collect(lab)
    assert [d.describe() for d in evidence.deliveries] == [
        "mailbox carol@contoso.com on EX3 (from alice@contoso.com)"
    ]
    assert not evidence.tracking["EX2"]
    with pytest.raises(ControlError, match="unknown operation"):
        request(lab.workdir, {"op": "reboot"})
    with pytest.raises(ControlError, match=r"lab contoso has no server 'EX9'; servers: EX1, EX2, EX3, EX4"):
        request(lab.workdir, {"op": "server", "name": "EX9", "up": False})
    cli("lab", "server", "--lab-dir", str(lab.workdir), "EX2", "up")
    assert not lab.link_state.server_down("EX2")


def test_no_lab_running_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["queues", "--lab-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert f"no running lab at {tmp_path}" in result.output


def test_freeze_and_unfreeze_a_link_queue_from_the_command_line(lab: Lab) -> None:
    workdir = str(lab.workdir)
    output = cli("lab", "freeze", "--lab-dir", workdir, "--server", "EX1", "Internet Mail SMTP Connector")
    assert "frozen (no message in it yet)" in output
    lab.submit("EX1", "alice@contoso.com", ["ann@fabrikam.com"], b"Subject: x\r\n\r\nx\r\n")
    assert lab.settle()
    (row,) = json.loads(cli("queues", "--lab-dir", workdir, "--json"))
    assert (row["queue"], row["state"], row["count"]) == ("Internet Mail SMTP Connector", "Frozen", 1)
    assert Evidence.collect(lab).deliveries == []
    cli("lab", "freeze", "--lab-dir", workdir, "--server", "EX1", "--undo", "Internet Mail SMTP Connector")
    assert lab.settle()
    assert [d.describe() for d in Evidence.collect(lab).deliveries] == [
        "sink fabrikam-mx from EX1: alice@contoso.com → ann@fabrikam.com"
    ]


def test_link_state_changes_reroute_messages_already_waiting_in_a_frozen_queue(lab: Lab) -> None:
    # Frozen while the Internet connector was up; the connector goes down; on unfreeze the message must
    # not leave through the connector that is now down: it is routed again and waits.
    lab.freeze("EX1", "Internet Mail SMTP Connector")
    lab.submit("EX1", "alice@contoso.com", ["ann@fabrikam.com"], b"Subject: x\r\n\r\nx\r\n")
    assert lab.settle()
    lab.set_connector("Internet Mail SMTP Connector", False)
    lab.freeze("EX1", "Internet Mail SMTP Connector", False)
    assert lab.settle()
    assert Evidence.collect(lab).deliveries == []
    waiting = [
        (server, name) for server, queues in lab.queues().items() for name, items in queues.items() if items
    ]
    assert waiting == [("EX1", "Final destination currently unreachable")]
    lab.set_connector("Internet Mail SMTP Connector", True)
    assert lab.settle()
    assert [d.describe() for d in Evidence.collect(lab).deliveries] == [
        "sink fabrikam-mx from EX1: alice@contoso.com → ann@fabrikam.com"
    ]


def test_bringing_up_a_server_that_is_up_is_harmless(lab: Lab) -> None:
    request(lab.workdir, {"op": "server", "name": "EX2", "up": True})
    assert lab.link_state.minor == 0  # nothing changed, nothing propagated


def test_the_global_catalog_stopped_and_started_over_the_control_channel(lab: Lab) -> None:
    assert request(lab.workdir, {"op": "global_catalog", "up": False}) == {"available": False}
    # The store looks the mailbox up in the directory too: a submission is refused while it is down.
    with pytest.raises(
        ControlError, match=r"the store cannot look alice@contoso\.com up: global catalog gc\.contoso\.com"
    ):
        request(
            lab.workdir,
            {
                "op": "submit",
                "server": "EX1",
                "mailbox": "alice@contoso.com",
                "to": ["bob@contoso.com"],
                "content": "U3ViamVjdDogeA0KDQp4DQo=",
            },
        )
    assert request(lab.workdir, {"op": "global_catalog", "up": True}) == {"available": True}
    assert [q for q in lab.gc.queries if q.results == -1]  # the failed look-up is in the log


def test_the_gateway_server_lists_its_x400_queues(lab: Lab) -> None:
    rows = json.loads(cli("queues", "--lab-dir", str(lab.workdir), "--server", "EX4", "--all", "--json"))
    names = {row["queue"] for row in rows}
    assert {"X.400: MTA queue", "X.400: MTS-OUT", "Notes Connector IN", "Notes Connector MTS-IN"} <= names
    assert "X.400: MTS-OUT" not in {
        row["queue"]
        for row in json.loads(
            cli("queues", "--lab-dir", str(lab.workdir), "--server", "EX1", "--all", "--json")
        )
    }


DAVE_MEMO = b"From: Ann Lee/Sales/Fabrikam\nSendTo: Dave Ito/Contoso\nSubject: Held\nBody:\nWait for it.\n"


def _gateway_items(lab: Lab) -> dict[str, list[str]]:
    """The files each inbound stage of EX4's gateway path holds on disk."""
    ex4 = lab.workdir / "EX4"
    folders = {
        "IN": ex4 / "gateways" / "Notes Connector" / "IN",
        "MTS-IN": ex4 / "gateways" / "Notes Connector" / "MTS-IN",
        "MTA": ex4 / "MTA" / "queue",
        "MTS-OUT": ex4 / "Mailroot" / "vsi 1" / "MTS-OUT",
    }
    return {name: sorted(p.name for p in folder.iterdir()) for name, folder in folders.items()}


def _x400_rows(lab: Lab) -> dict[str, tuple[str, int]]:
    rows = json.loads(cli("queues", "--lab-dir", str(lab.workdir), "--server", "EX4", "--all", "--json"))
    # The inbound path's X.400 queues (the MTA's queue toward the Notes connector is the outbound one's).
    inbound = ("X.400: MTA queue", "X.400: MTS-OUT")
    return {row["queue"]: (row["state"], row["count"]) for row in rows if row["queue"] in inbound}


def test_a_frozen_mta_queue_holds_a_gateway_memo_until_it_is_unfrozen(lab: Lab) -> None:
    workdir = str(lab.workdir)
    cli("lab", "freeze", "--lab-dir", workdir, "--server", "EX4", "X.400: MTA queue")
    item = lab.foreign_send("Notes Connector", DAVE_MEMO)
    assert lab.settle()
    assert _x400_rows(lab) == {"X.400: MTA queue": ("Frozen", 1), "X.400: MTS-OUT": ("Ready", 0)}
    # The message rests in the MTA's folder, and only there: the memo left IN when it was translated.
    assert _gateway_items(lab) == {"IN": [], "MTS-IN": [], "MTA": [f"{item}.eml"], "MTS-OUT": []}
    held = lab.queues()["EX4"]["X.400: MTA queue"]
    assert [(m["id"], m["recipients"], m["state"]) for m in held] == [(item, ["dave@contoso.com"], "Frozen")]
    assert Evidence.collect(lab).deliveries == []
    events = [e["event-id"] for e in Evidence.collect(lab).tracking["EX4"]]
    assert events == [1004, 0]

    cli("lab", "freeze", "--lab-dir", workdir, "--server", "EX4", "--undo", "x.400: mta QUEUE")
    assert lab.settle()
    assert _gateway_items(lab) == {"IN": [], "MTS-IN": [], "MTA": [], "MTS-OUT": []}
    assert [d.describe() for d in Evidence.collect(lab).deliveries] == [
        "mailbox dave@contoso.com on EX4 (from IMCEANOTES-Ann+20Lee+2FSales+2FFabrikam@contoso.com)"
    ]


def test_a_frozen_mts_out_queue_keeps_what_the_mta_queue_passes_on(lab: Lab) -> None:
    lab.freeze("EX4", "X.400: MTS-OUT")
    first = lab.foreign_send("Notes Connector", DAVE_MEMO)
    second = lab.foreign_send("Notes Connector", DAVE_MEMO.replace(b"Held", b"Also held"))
    assert lab.settle()
    assert _x400_rows(lab) == {"X.400: MTA queue": ("Ready", 0), "X.400: MTS-OUT": ("Frozen", 2)}
    assert _gateway_items(lab)["MTS-OUT"] == sorted([f"{first}.eml", f"{second}.eml"])
    assert Evidence.collect(lab).deliveries == []
    lab.freeze("EX4", "X.400: MTS-OUT", False)
    assert lab.settle()
    # Each memo is delivered once: a message is handed to AQ by one mover only.
    assert len(Evidence.collect(lab).deliveries) == 2
    assert _x400_rows(lab) == {"X.400: MTA queue": ("Ready", 0), "X.400: MTS-OUT": ("Ready", 0)}


def test_a_gateway_folder_is_no_queue_to_freeze(lab: Lab) -> None:
    result = CliRunner().invoke(
        main, ["lab", "freeze", "--lab-dir", str(lab.workdir), "--server", "EX4", "Notes Connector IN"]
    )
    assert result.exit_code == 2, result.output
    assert "no link queue 'Notes Connector IN'" in result.output
    assert "X.400: MTA queue" in result.output and "X.400: MTS-OUT" in result.output
    assert "Traceback" not in result.output
