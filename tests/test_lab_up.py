"""`mailflow lab up` as a user runs it, in a process of its own: where it puts the lab (the relocation
variables, --base), one lab per folder (a second one refused with the first one's pid, a killed one's
folder taken over), and an address in use said in the user's terms."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest
from click.testing import CliRunner
from labprocess import MAILFLOW, LabProcess, environment, lab_processes, queues, start

from harness import targets
from harness.cli.app import main
from harness.exit_codes import ExitCode
from harness.lab.lock import LOCK_NAME

WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
# This module's own address blocks and ports, apart from the other modules' labs.
BASE = f"127.{60 + WORKER % 10}.8.0"
OTHER_BASE = f"127.{60 + WORKER % 10}.9.0"
OFFSET = 28000 + 100 * (WORKER % 10)


@pytest.fixture
def started() -> Iterator[list[LabProcess]]:
    with lab_processes() as labs:
        yield labs


def greeting(address: str, port: int) -> str:
    with smtplib.SMTP(timeout=10) as smtp:
        code, banner = smtp.connect(address, port)
        assert code == 220
        return banner.decode()


def address(base: str, host: int) -> str:
    return base.rsplit(".", 1)[0] + f".{host}"


def test_lab_up_honours_the_relocation_variables(tmp_path: Path, started: list[LabProcess]) -> None:
    env = environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET))
    start(started, tmp_path / "lab", env)
    ex1 = address(BASE, 11)  # EX1 is addr 11 of the contoso lab
    assert greeting(ex1, 25 + OFFSET).startswith("ex1.contoso.com")
    code, out = started[0].stop()
    assert code == 0, out
    assert ex1 in out and f"every SMTP service on port {25 + OFFSET}" in out


def test_what_lab_up_prints_is_enough_to_log_in_over_verified_tls(
    tmp_path: Path, started: list[LabProcess]
) -> None:
    """A person pokes the lab with what it prints: a client address, an account and the CA to verify
    the server's name against."""
    env = environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET), COLUMNS="80")
    lab = start(started, tmp_path / "lab", env)
    out = " ".join(lab.output.split())  # 80 columns fold the long lines
    accounts = dict(
        pair.split(" / ")
        for pair in out.split("AUTH (LOGIN, PLAIN): ", 1)[1].split(" queues,")[0].split(", ")
    )
    ca = out.split("against ", 1)[1].split()[0]
    assert "relay-host" in out and address(BASE, 202) in out
    asyncio.run(_relay_over_verified_tls(address(BASE, 11), 25 + OFFSET, ca, accounts["relayuser"]))


async def _relay_over_verified_tls(host: str, port: int, ca: str, password: str) -> None:
    smtp = aiosmtplib.SMTP(
        hostname=host,
        port=port,
        source_address=(address(BASE, 200), 0),
        local_hostname="mail-out.fabrikam.com",
        start_tls=False,
        timeout=10,
    )
    await smtp.connect()
    # The certificate is checked against the server's name, as printed, not the address connected to.
    await smtp.starttls(server_hostname="ex1.contoso.com", tls_context=ssl.create_default_context(cafile=ca))
    assert (await smtp.login("relayuser", password)).code == 235
    await smtp.mail("ann@contoso.com")
    # An account with relay permission relays to the Internet (RELAY-3).
    assert (await smtp.rcpt("someone@fabrikam.com")).code == 250
    await smtp.quit()


def test_base_and_port_offset_options_win_over_the_variables(
    tmp_path: Path, started: list[LabProcess]
) -> None:
    env = environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET))
    start(started, tmp_path / "lab", env, "--base", OTHER_BASE, "--port-offset", str(OFFSET + 1))
    ex1 = address(OTHER_BASE, 11)
    assert greeting(ex1, 26 + OFFSET).startswith("ex1.contoso.com")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address(BASE, 11), 25 + OFFSET), timeout=2)


def test_a_second_lab_on_a_running_labs_folder_is_refused_with_its_pid(
    tmp_path: Path, started: list[LabProcess]
) -> None:
    workdir = tmp_path / "lab"
    first = start(started, workdir, environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET)))
    # Elsewhere on the network, so that only the folder is shared.
    second = subprocess.run(
        [MAILFLOW, "lab", "up", "--workdir", str(workdir)],
        env=environment(MAILFLOW_LAB_BASE=OTHER_BASE, MAILFLOW_PORT_OFFSET=str(OFFSET)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == ExitCode.BROKEN
    assert f"lab contoso (pid {first.process.pid}) is already running in {workdir}" in second.stderr
    assert "Traceback" not in second.stderr
    # The first lab still owns its control socket and answers on it.
    assert queues(workdir).exit_code == 0
    assert (workdir / LOCK_NAME).read_text().split()[0] == str(first.process.pid)


def test_the_folder_of_a_killed_lab_is_taken_over(tmp_path: Path, started: list[LabProcess]) -> None:
    workdir = tmp_path / "lab"
    env = environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET))
    killed = start(started, workdir, env)
    killed.process.kill()
    killed.process.communicate(timeout=30)
    assert (workdir / "control.sock").exists()  # left behind, with the lock file
    after = start(started, workdir, env)
    assert (workdir / LOCK_NAME).read_text().split()[0] == str(after.process.pid)
    result = queues(workdir)
    assert result.exit_code == 0, result.output


def test_an_address_in_use_says_which_and_exits_3(tmp_path: Path) -> None:
    ex1 = address(BASE, 11)
    with socket.create_server((ex1, 25 + OFFSET)):
        result = subprocess.run(
            [MAILFLOW, "lab", "up", "--workdir", str(tmp_path / "lab")],
            env=environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == ExitCode.BROKEN
    assert (
        f"server EX1 cannot listen on {ex1}:{25 + OFFSET}: the address is in use by another lab or program"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"MAILFLOW_LAB_BASE": "10.1.0.0"}, "MAILFLOW_LAB_BASE=10.1.0.0 is outside 127.0.0.0/8"),
        ({"MAILFLOW_LAB_BASE": "127.1"}, "MAILFLOW_LAB_BASE='127.1' is not an IPv4 address"),
        ({"MAILFLOW_PORT_OFFSET": "lots"}, "MAILFLOW_PORT_OFFSET='lots' is not a port offset"),
    ],
)
def test_wrong_relocation_variables_are_named(
    tmp_path: Path, variables: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        [MAILFLOW, "lab", "up", "--workdir", str(tmp_path)],
        env=environment(**variables),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == ExitCode.INPUT
    assert message in result.stderr and "Traceback" not in result.stderr


def test_an_unknown_lab_lists_the_labs(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["lab", "up", "fabrikam", "--workdir", str(tmp_path)])
    assert result.exit_code == ExitCode.INPUT
    assert "no lab 'fabrikam' (" in result.output and "does not exist); labs: contoso" in result.output


def test_a_lab_stopped_as_soon_as_it_answers_exits_0_without_a_traceback(
    tmp_path: Path, started: list[LabProcess]
) -> None:
    """Once its control socket answers the lab is up, and a signal is how it ends, even while it still
    prints its hosts."""
    workdir = tmp_path / "lab"
    lab = LabProcess(workdir, environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET)))
    started.append(lab)
    deadline = time.monotonic() + 60
    while queues(workdir).exit_code != 0:
        assert lab.process.poll() is None and time.monotonic() < deadline, lab.output
        time.sleep(0.02)
    lab.process.send_signal(signal.SIGTERM)
    code, out = lab.stop()
    assert code == 0, out
    assert "Traceback" not in out and not (workdir / "control.sock").exists()


def test_a_lab_started_with_sighup_ignored_outlives_the_hangup(tmp_path: Path) -> None:
    """`nohup mailflow lab up`: a closed terminal does not stop the lab."""
    workdir = tmp_path / "lab"

    def ignore_hangup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    with (tmp_path / "out").open("wb") as sink:
        process = subprocess.Popen(
            [MAILFLOW, "lab", "up", "--workdir", str(workdir)],
            env=environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET)),
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=ignore_hangup,
        )
    try:
        deadline = time.monotonic() + 60
        while LabProcess.READY not in (tmp_path / "out").read_text() or queues(workdir).exit_code != 0:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "out").read_text()
            time.sleep(0.05)
        process.send_signal(signal.SIGHUP)
        # The lab goes on answering: a request after the hang-up reaches it.
        assert queues(workdir).exit_code == 0
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, (tmp_path / "out").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.skipif(targets.POSTFIX.unavailable() is not None, reason=targets.POSTFIX.unavailable() or "")
def test_a_real_mta_for_a_server_the_lab_lacks_lists_the_servers(tmp_path: Path) -> None:
    result = subprocess.run(
        [MAILFLOW, "lab", "up", "--target", "postfix:EX9", "--workdir", str(tmp_path / "lab")],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == ExitCode.INPUT, result.stderr
    assert "lab contoso has no server 'EX9'; servers: EX1, EX2, EX3, EX4" in result.stderr
    assert "Traceback" not in result.stderr
