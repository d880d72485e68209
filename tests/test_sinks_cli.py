"""What the lab's Internet hosts receive is kept in the lab's folder (one .eml and its envelope per
message, under sinks/<host>/) and listed by `mailflow sinks`, while the lab runs and after it stopped."""

from __future__ import annotations

import datetime
import json
import os
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from labprocess import LabProcess, environment, lab_processes, start

from harness.cli.app import main
from harness.exit_codes import ExitCode

WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
BASE = f"127.{60 + WORKER % 10}.24.0"
OFFSET = 28050 + 100 * (WORKER % 10)
PREFIX = BASE.rsplit(".", 1)[0]
FABRIKAM_MX = f"{PREFIX}.101"  # mail.fabrikam.com in the contoso lab
CLIENT = f"{PREFIX}.200"  # the lab's Internet client


@pytest.fixture
def started() -> Iterator[list[LabProcess]]:
    with lab_processes() as labs:
        yield labs


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def send_to_fabrikam(subject: str) -> None:
    """A message straight to the fabrikam host, as a remote MTA would hand it over."""
    with smtplib.SMTP(FABRIKAM_MX, 25 + OFFSET, source_address=(CLIENT, 0), timeout=10) as smtp:
        smtp.ehlo("mail-out.example")
        smtp.sendmail(
            "ann@example.org",
            ["ben@fabrikam.com", "cy@fabrikam.com"],
            f"Subject: {subject}\r\n\r\nhello\r\n",
            rcpt_options=["NOTIFY=NEVER"],
        )


def listed(workdir: Path, *args: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(cli("sinks", "--lab-dir", str(workdir), "--json", *args))
    return rows


def test_captures_are_written_and_listed_and_outlive_the_lab(
    tmp_path: Path, started: list[LabProcess]
) -> None:
    workdir = tmp_path / "lab"
    env = environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET))
    lab = start(started, workdir, env)
    assert listed(workdir) == []  # every host has its folder, none received anything yet
    before = time.time()
    send_to_fabrikam("first")
    (row,) = listed(workdir)
    folder = workdir / "sinks" / "fabrikam-mx"
    assert row["message"] == str(folder / "0001.eml")
    assert (row["host"], row["peer"], row["helo"], row["mail_from"], row["rcpt_to"]) == (
        "fabrikam-mx",
        CLIENT,
        "mail-out.example",
        "ann@example.org",
        ["ben@fabrikam.com", "cy@fabrikam.com"],
    )
    assert row["rcpt_options"] == ["NOTIFY=NEVER", "NOTIFY=NEVER"]
    assert (folder / "0001.eml").read_bytes() == b"Subject: first\r\n\r\nhello\r\n"
    assert json.loads((folder / "0001.json").read_text())["size"] == len(b"Subject: first\r\n\r\nhello\r\n")
    received = datetime.datetime.fromisoformat(str(row["received"]))
    assert received.utcoffset() == datetime.timedelta(0) and before <= received.timestamp() <= time.time()
    table = cli("sinks", "--lab-dir", str(workdir), "--host", "FABRIKAM-MX")
    assert "first" in table and "sinks/fabrikam-mx/0001.eml" in table and "ann@example.org" in table

    code, _ = lab.stop()
    assert code == 0
    # Stopped: nothing is lost, and a lab started again on the folder numbers on.
    assert [r["message"] for r in listed(workdir)] == [str(folder / "0001.eml")]
    start(started, workdir, env)
    send_to_fabrikam("second")
    assert [Path(str(r["message"])).name for r in listed(workdir, "--host", "fabrikam-mx")] == [
        "0001.eml",
        "0002.eml",
    ]
    assert listed(workdir, "--host", "partner-mx") == []


def test_a_wrong_host_or_folder_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["sinks", "--lab-dir", str(tmp_path)])
    assert result.exit_code == ExitCode.INPUT
    assert f"no lab has run in {tmp_path}: it has no sinks folder" in result.output
    (tmp_path / "sinks" / "fabrikam-mx").mkdir(parents=True)
    (tmp_path / "sinks" / "partner-mx").mkdir()
    result = CliRunner().invoke(main, ["sinks", "--lab-dir", str(tmp_path), "--host", "contoso-mx"])
    assert result.exit_code == ExitCode.INPUT
    assert "no Internet host 'contoso-mx' in the lab at" in result.output
    assert "hosts: fabrikam-mx, partner-mx" in result.output
    (tmp_path / "sinks" / "fabrikam-mx" / "0001.json").write_text("{not json")
    result = CliRunner().invoke(main, ["sinks", "--lab-dir", str(tmp_path)])
    assert result.exit_code == ExitCode.INPUT
    assert "sinks/fabrikam-mx/0001.json: not an envelope the lab wrote" in result.output
    assert "Traceback" not in result.output
