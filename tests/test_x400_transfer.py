"""The MTA's transfer over an X.400 connector on a running lab: a message rests in the MTA's queue for
the connector, and what a stopped lab left there, or left half moved to the remote MTA, reaches the
mailbox once when the next lab starts on the same folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.judge.evidence import Evidence
from harness.lab import config as lab_config
from harness.lab import containers
from harness.lab.runtime import Lab
from reference_mta.tracking import read_events
from tests.mailflow_cli import ROOT, mailflow

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
_FIRST = int(os.environ.get("MAILFLOW_LAB_BASE", "127.170.0.0").split(".")[1])
BASE = f"127.{(_FIRST + WORKER) % 250}.33.0"
CONNECTOR = "Tokyo-London X.400 Connector"
QUEUE = f"X.400: {CONNECTOR}"
MESSAGE = b"Subject: over X.400\r\n\r\nhello Carol\r\n"
CAROL = ["mailbox carol@contoso.com on EX3 (from dave@contoso.com)"]


def lab(workdir: Path) -> Lab:
    return Lab(lab_config.load(LAB, base=BASE, port_offset=29400), workdir)


def only_x400(running: Lab) -> None:
    running.set_connector("Tokyo-London RGC", False)
    running.set_connector("Tokyo-London SMTP Connector", False)


def folders(workdir: Path) -> dict[str, list[str]]:
    places = {
        "queue": workdir / "EX4" / "MTA" / "connectors" / CONNECTOR,
        "EX3 in": workdir / "EX3" / "MTA" / "in",
    }
    return {
        name: sorted(p.name for p in folder.glob("*") if not p.name.startswith("."))
        for name, folder in places.items()
    }


def delivered(running: Lab) -> list[str]:
    return sorted(d.describe() for d in Evidence.collect(running).deliveries)


def held(workdir: Path) -> list[str]:
    with lab(workdir) as first:
        only_x400(first)
        first.freeze("EX4", QUEUE)
        first.submit("EX4", "dave@contoso.com", ["carol@contoso.com"], MESSAGE)
        assert first.settle()
        rows = first.queues()["EX4"][QUEUE]
        assert [(r["recipients"], r["state"]) for r in rows] == [(["carol@contoso.com"], "Frozen")]
        assert delivered(first) == []
        return [str(r["id"]) for r in rows]


def test_a_message_left_in_the_frozen_x400_queue_is_transferred_after_a_restart(tmp_path: Path) -> None:
    (item,) = held(tmp_path)
    assert folders(tmp_path) == {"queue": [f"{item}.eml", f"{item}.json"], "EX3 in": []}
    with lab(tmp_path) as second:  # nothing is frozen now
        assert second.settle()
        assert delivered(second) == CAROL
        assert folders(tmp_path) == {"queue": [], "EX3 in": []}
        taken_in = [e for e in read_events(tmp_path / "tracking", "EX3") if e["event-id"] == 0]
        assert [(e["recipient-address"], e["partner-name"]) for e in taken_in] == [
            ("carol@contoso.com", "EX4")
        ]


def test_a_transfer_cut_short_between_its_two_files_is_finished_once(tmp_path: Path) -> None:
    (item,) = held(tmp_path)
    # As if the lab had stopped after the content reached EX3's MTA and before the envelope did.
    queue = tmp_path / "EX4" / "MTA" / "connectors" / CONNECTOR
    (queue / f"{item}.eml").rename(tmp_path / "EX3" / "MTA" / "in" / f"{item}.eml")
    assert folders(tmp_path) == {"queue": [f"{item}.json"], "EX3 in": [f"{item}.eml"]}
    with lab(tmp_path) as second:
        assert second.settle()
        assert delivered(second) == CAROL
        assert folders(tmp_path) == {"queue": [], "EX3 in": []}


def test_the_x400_queue_is_listed_with_the_servers_other_queues(tmp_path: Path) -> None:
    with lab(tmp_path) as running:
        assert running.queues()["EX4"][QUEUE] == []
        assert QUEUE not in running.queues()["EX3"]  # EX3 hosts no X.400 connector


def test_on_the_docker_backend_the_remote_mta_reads_the_shared_lab_folder(tmp_path: Path) -> None:
    """Each server in its own container: EX4's MTA writes into EX3's folder through the lab folder both
    containers mount, and the gateway's MTS-OUT is kept while the gateway is stopped."""
    if (reason := containers.unavailable()) is not None:
        pytest.skip(f"no Docker engine: {reason}")
    if os.geteuid() != 0:
        pytest.skip("the Docker backend puts the clients' addresses on the lab bridge: needs root")
    traces = [
        ROOT / "traces" / "gateway" / "x400-transfer-to-london.yaml",
        ROOT / "traces" / "gateway" / "outbound-stopped-gateway-leaves-it-in-mts-out.yaml",
    ]
    band = int(os.environ.get("MAILFLOW_DOCKER_SUBNET", "70")) + 4 * WORKER
    env = {"MAILFLOW_DOCKER_SUBNET": str(band)}
    done = mailflow(
        "run", "--backend", "docker", *map(str, traces), "--reports", str(tmp_path), cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ran = json.loads((tmp_path / "last-run.json").read_text())
    assert sorted(r["outcome"] for r in ran) == ["passed", "passed"]
