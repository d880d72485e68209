"""Every name a lab command sends to a running lab is checked against it: a wrong one exits 2 and lists
the valid ones, in the user's terms, never as a Python exception; no lab at --lab-dir says so."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli.app import main
from harness.exit_codes import ExitCode
from harness.lab import config as lab_config
from harness.lab.runtime import Lab

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"
BASE = f"127.{60 + int(os.environ.get('PYTEST_XDIST_WORKER', 'gw0')[2:] or 0) % 10}.16.0"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    config = lab_config.load(LAB, base=BASE, port_offset=27500)
    with Lab(config, tmp_path_factory.mktemp("lab"), control=True) as running:
        yield running


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@pytest.fixture
def message(tmp_path: Path) -> str:
    path = tmp_path / "note.eml"
    path.write_bytes(b"Subject: names\n\nhello\n")
    return str(path)


SERVERS = "servers: EX1, EX2, EX3, EX4"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["lab", "freeze", "--server", "EX9", "Internet Mail SMTP Connector"], f"no server 'EX9'; {SERVERS}"),
        (
            ["lab", "freeze", "--server", "EX1", "Nowhere Connector"],
            "EX1 has no link queue 'Nowhere Connector'; link queues: Adatum Relay SMTP Connector, "
            "ex2.contoso.com,",
        ),
        (
            ["lab", "freeze", "--server", "EX1", "Messages awaiting directory lookup"],
            "'Messages awaiting directory lookup' is a system queue of EX1: only link queues can be frozen",
        ),
        (["lab", "connector", "Nowhere Connector", "down"], "no connector 'Nowhere Connector'; connectors: "),
        (["lab", "server", "EX9", "down"], f"no server 'EX9'; {SERVERS}"),
        (["queues", "--server", "EX9"], f"lab contoso has no server 'EX9'; {SERVERS}"),
    ],
)
def test_a_wrong_name_exits_2_with_the_valid_ones(lab: Lab, args: list[str], expected: str) -> None:
    code, output = (
        run(*args[:2], "--lab-dir", str(lab.workdir), *args[2:])
        if args[0] == "lab"
        else run(args[0], "--lab-dir", str(lab.workdir), *args[1:])
    )
    assert code == ExitCode.INPUT, output
    assert expected in " ".join(output.split())
    assert "Error" in output and "KeyError" not in output and "ValueError" not in output


def test_names_are_taken_in_any_case_and_answered_as_the_lab_spells_them(lab: Lab) -> None:
    workdir = str(lab.workdir)
    code, output = run("lab", "connector", "--lab-dir", workdir, "internet mail smtp connector", "down")
    assert code == 0, output
    assert "Internet Mail SMTP Connector is down" in output
    assert run("lab", "connector", "--lab-dir", workdir, "Internet Mail SMTP Connector", "up")[0] == 0
    code, output = run("lab", "freeze", "--lab-dir", workdir, "--server", "ex1", "partner smtp connector")
    assert (code, output.strip()) == (0, "Partner SMTP Connector on EX1: frozen (no message in it yet)")
    code, output = run(
        "lab", "freeze", "--lab-dir", workdir, "--server", "EX1", "--undo", "PARTNER smtp connector"
    )
    assert (code, output.strip()) == (0, "Partner SMTP Connector on EX1: unfrozen (no message in it yet)")


def test_submit_checks_the_server_and_the_mailbox(lab: Lab, message: str) -> None:
    workdir = str(lab.workdir)
    code, output = run(
        "submit",
        "--lab-dir",
        workdir,
        "--server",
        "EX7",
        "--from",
        "alice@contoso.com",
        "--to",
        "x@contoso.com",
        message,
    )
    assert code == ExitCode.INPUT and f"no server 'EX7'; {SERVERS}" in output
    code, output = run(
        "submit",
        "--lab-dir",
        workdir,
        "--server",
        "EX1",
        "--from",
        "bob@contoso.com",
        "--to",
        "x@contoso.com",
        message,
    )
    assert code == ExitCode.INPUT
    flat = " ".join(output.split())
    assert "bob@contoso.com is not a mailbox on EX1 (its mailbox is on EX2: submit it there)" in flat
    assert "mailboxes on EX1: alice@contoso.com," in flat
    code, output = run(
        "submit",
        "--lab-dir",
        workdir,
        "--server",
        "EX1",
        "--from",
        "nobody@contoso.com",
        "--to",
        "x@contoso.com",
        message,
    )
    assert code == ExitCode.INPUT and "nobody@contoso.com is not a mailbox on EX1;" in " ".join(
        output.split()
    )


def test_a_store_that_cannot_look_up_the_mailbox_is_the_lab_failing(lab: Lab, message: str) -> None:
    lab.set_global_catalog(False)
    try:
        code, output = run(
            "submit",
            "--lab-dir",
            str(lab.workdir),
            "--server",
            "EX1",
            "--from",
            "alice@contoso.com",
            "--to",
            "bob@contoso.com",
            message,
        )
    finally:
        lab.set_global_catalog(True)
    assert code == ExitCode.BROKEN
    assert "the store cannot look alice@contoso.com up" in " ".join(output.split())


def test_no_lab_at_the_folder_says_so(tmp_path: Path) -> None:
    code, output = run("queues", "--lab-dir", str(tmp_path / "missing"))
    assert code == ExitCode.INPUT and f"no lab at {tmp_path / 'missing'}: it is not a folder" in output
    code, output = run("lab", "server", "--lab-dir", str(tmp_path), "EX2", "down")
    assert code == ExitCode.INPUT and f"no running lab at {tmp_path}" in output
