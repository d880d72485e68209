"""A lab host's agent started with `--start` (as an exported lab's containers run it), here on loopback
in a process of its own: it starts its host at once with no harness to ask it, answers as that host,
stops on SIGTERM, and refuses a broken lab file or a wrong host name in the user's terms."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest

from harness.lab import config as lab_config
from harness.lab.certificates import LabCertificates
from harness.lab.host_agent import chain_file

WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
# This module's own address block and ports, apart from the other modules' labs.
BASE = f"127.{70 + WORKER % 10}.12.0"
OFFSET = 31000 + 100 * (WORKER % 10)
LAB = lab_config.lab_path("contoso")


def agent(host: str, workdir: Path, lab: Path = LAB) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "harness.lab.host_agent", "--host", host, "--start", str(lab)]
    command += ["--workdir", str(workdir), "--base", BASE, "--port-offset", str(OFFSET)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def agents() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def until(
    condition: Callable[[], bool], what: str, process: subprocess.Popen[str], timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the agent exited ({process.returncode}): {process.communicate()}"
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen within {timeout} s")


def test_a_started_dns_agent_answers_and_stops_on_sigterm(
    tmp_path: Path, agents: list[subprocess.Popen[str]]
) -> None:
    config = lab_config.load(LAB, base=BASE, port_offset=OFFSET)
    process = agent("dns", tmp_path)
    agents.append(process)
    query = dns.message.make_query("ex1.contoso.com", "A")

    def answered() -> bool:
        try:
            reply = dns.query.udp(query, config.dns_address, port=config.dns_port, timeout=0.5)
        except dns.exception.Timeout:
            return False
        return [item.address for rrset in reply.answer for item in rrset] == [
            config.organization.server("EX1").address
        ]

    until(answered, "the DNS answer for ex1.contoso.com", process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "lab host dns started: dns" in out


def test_a_started_server_listens_on_each_virtual_server(
    tmp_path: Path, agents: list[subprocess.Popen[str]]
) -> None:
    config = lab_config.load(LAB, base=BASE, port_offset=OFFSET)
    ex2 = config.organization.server("EX2")
    # Its certificate comes first: without it the server cannot start, and says which file it lacks.
    chain = chain_file(tmp_path, ex2.fqdn)
    refused = agent("EX2", tmp_path)
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 3
    assert (
        f"lab host ex2 could not start: ex2.contoso.com's key and certificate chain {chain} is missing" in err
    )
    chain.parent.mkdir()
    LabCertificates(tmp_path, config.name).write_chain(ex2.fqdn, chain)
    process = agent("EX2", tmp_path)
    agents.append(process)

    def greets(address: str) -> bool:
        # From the LAN client: the Internal virtual server takes connections from its list only.
        with smtplib.SMTP(timeout=5, source_address=(config.host("lan").address, 0)) as smtp:
            code, banner = smtp.connect(address, config.port(25))
            return code == 220 and banner.decode().startswith("ex2.contoso.com")

    for vs in ex2.virtual_servers:
        until(partial(greets, vs.address), f"EX2's 220 at {vs.address}", process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert process.returncode == 0


def test_a_broken_lab_file_is_said_with_its_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = LAB.read_text().replace("  addr: 53\n", "  addr: fifty-three\n")
    broken.write_text(text.replace("directory: ../directory/", f"directory: {LAB.parent.parent}/directory/"))
    process = agent("dns", tmp_path, broken)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "fifty-three" in row)
    assert f"lab host dns: {broken}:{line}:" in err
    assert "Traceback" not in err


def test_a_host_the_lab_does_not_have_is_refused(tmp_path: Path) -> None:
    process = agent("nosuchhost", tmp_path)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "lab 'contoso' has no host named 'nosuchhost'" in err
    assert "Traceback" not in err
