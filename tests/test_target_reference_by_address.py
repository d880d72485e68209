"""The reference MTA reached only by its address, as an outside MTA: `mailflow lab up` runs one lab,
and `mailflow run --target smtp://<its EX1>:<port>` runs traces in a second lab, elsewhere on loopback,
whose EX1 is that address. Its replies are Exchange's words, so the traces pass as on the reference
target; its mailboxes are seen only through a profile pointing into the first lab's EX1 store."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labprocess import MAILFLOW, LabProcess, environment, lab_processes, start

from harness.lab.placement import relocation

ROOT = Path(__file__).resolve().parents[1]
OFFSET = 20000


@pytest.fixture(scope="module")
def bases() -> tuple[str, str]:
    """(the base of the labs the runs start, the base of the lab standing in as an outside MTA)."""
    base, _ = relocation()
    base = base or "127.170.0.0"
    return base, base.rsplit(".", 2)[0] + ".70.0"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, bases: tuple[str, str]) -> Iterator[LabProcess]:
    workdir = tmp_path_factory.mktemp("reference-lab")
    env = environment(MAILFLOW_LAB_BASE=bases[1], MAILFLOW_PORT_OFFSET=str(OFFSET))
    with lab_processes() as labs:
        yield start(labs, workdir, env)


def ex1_url(bases: tuple[str, str]) -> str:
    return f"smtp://{bases[1].rsplit('.', 1)[0]}.11:{25 + OFFSET}"  # EX1 is addr 11 of contoso


def mailflow_run(base: str, reports: Path, target: str, *traces: str) -> tuple[int, str, dict[str, Any]]:
    command = [MAILFLOW, "run", "--verbose", "--target", target, "--reports", str(reports), *traces]
    env = environment(MAILFLOW_LAB_BASE=base)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    results = reports / "last-run.json"
    ran = json.loads(results.read_text()) if results.exists() else []
    return done.returncode, done.stdout + done.stderr, {o["trace"]: o for o in ran}


def test_reference_by_url_passes_on_its_replies(
    reference: LabProcess, bases: tuple[str, str], tmp_path: Path
) -> None:
    url = ex1_url(bases)
    code, out, ran = mailflow_run(
        bases[0], tmp_path / "reports", url, "traces/relay/relay-denied-by-default.yaml"
    )
    assert code == 0, out
    outcome = ran["relay/relay-denied-by-default"]
    assert outcome["outcome"] == "passed" and not outcome["deviations"], outcome
    # Its tracking log, the lab's DNS log and its deliveries are the other lab's: not observable here.
    assert {"tracking", "dns", "delivered", "not_delivered", "nothing_else_delivered"} <= set(
        outcome["unobserved"]
    ), outcome


def test_reference_profile_reads_its_mailbox_store(
    reference: LabProcess, bases: tuple[str, str], tmp_path: Path
) -> None:
    store = reference.workdir / "EX1" / "mdbdata" / "Mailbox Store (EX1)"
    profile = tmp_path / "reference.yaml"
    profile.write_text(
        f"url: {ex1_url(bases)}\nprofile: exchange\nsettle_quiet: 1\n"
        f"deliveries:\n  maildir: '{store}/{{address}}/'\n",
        encoding="utf-8",
    )
    trace = "traces/protocol/smuggling-bare-lf.yaml"
    code, out, ran = mailflow_run(bases[0], tmp_path / "reports", str(profile), trace)
    assert code == 0, out
    outcome = ran["protocol/smuggling-bare-lf"]
    assert outcome["outcome"] == "passed", outcome
    # The mailbox checks were made against the store; "nothing else" needs the next hop too.
    assert outcome["unobserved"] == ["nothing_else_delivered"], outcome
    # The same trace with the mailbox store somewhere it is not: the delivery is missed, a failure.
    profile.write_text(
        f"url: {ex1_url(bases)}\nsettle_quiet: 0.5\ndeliveries:\n  maildir: '{tmp_path}/none/{{address}}/'\n",
        encoding="utf-8",
    )
    code, out, ran = mailflow_run(bases[0], tmp_path / "again", str(profile), trace)
    assert code == 1, out
    assert ran["protocol/smuggling-bare-lf"]["outcome"] == "failed", out
