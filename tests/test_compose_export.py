"""`mailflow lab export --compose DIR` as a user runs it: the folder it writes, started with the real
docker compose, answering SMTP from this machine through the bridge, delivering a message sent with
swaks into the mailbox store in the folder, and leaving nothing behind after `down`; and its bad input
refused in the user's terms, with nothing written.

The images are the ones built for this checkout (`mailflow images build`, made on first use), or a
developer's when MAILFLOW_LAB_IMAGE and MAILFLOW_POSTFIX_IMAGE name them (then with this checkout's code
copied into the folder, MAILFLOW_DOCKER_SOURCE)."""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import smtplib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mailflow_cli import ROOT, mailflow

from harness.lab import config as lab_config
from harness.lab import containers
from harness.lab.placement import docker_first_octet

WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
IMAGES = {
    name: os.environ[name] for name in ("MAILFLOW_LAB_IMAGE", "MAILFLOW_POSTFIX_IMAGE") if name in os.environ
}
EXPORT_ENV = IMAGES | ({"MAILFLOW_DOCKER_SOURCE": str(ROOT)} if IMAGES else {})


def _subnet(number: int) -> str:
    """This module's own /24s, away from the Docker backend's (198.19.N.0/24 and up, one per worker)."""
    return f"198.19.{(docker_first_octet() + 120 + 3 * WORKER + number) % 250 + 1}.0/24"


def _compose_programs() -> dict[str, list[str] | None]:
    """compose v1 (Debian's docker-compose) and v2 (`docker compose`), None where missing."""
    v1 = ["docker-compose"] if shutil.which("docker-compose") else None
    v2: list[str] | None = None
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        v2 = ["docker", "compose"] if probe.returncode == 0 else None
    return {"v1": v1, "v2": v2}


PROGRAMS = _compose_programs()
COMPOSE = PROGRAMS["v2"] or PROGRAMS["v1"]


def _unavailable() -> str | None:
    if (reason := containers.unavailable()) is not None:
        return reason
    if COMPOSE is None:
        return (
            "neither docker compose (v2) nor docker-compose (v1, Debian package docker-compose) is installed"
        )
    if shutil.which("swaks") is None:
        return "swaks is not installed (Debian package swaks)"
    engine = containers.engine()
    try:
        for image in IMAGES.values():
            try:
                engine.images.get(image)
            except Exception:
                return f"image {image} is not here (MAILFLOW_LAB_IMAGE / MAILFLOW_POSTFIX_IMAGE name others)"
    finally:
        engine.close()
    return None


UNAVAILABLE = _unavailable()
needs_compose = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


def export(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return mailflow("lab", "export", "--compose", str(folder), *args, cwd=ROOT, env=EXPORT_ENV)


def compose_file(folder: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((folder / "compose.yaml").read_text())
    return document


class Project:
    """An exported lab run by docker compose under a project name of its own; `down` whatever happens."""

    def __init__(self, folder: Path, program: list[str]) -> None:
        self.folder = folder
        self.program = program
        self.name = f"mfexport{os.getpid()}{uuid.uuid4().hex[:6]}"

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.program, "-p", self.name, "-f", "compose.yaml", *args],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def logs(self) -> str:
        return self.run("logs", "--no-color").stdout[-4000:]

    def left_behind(self) -> list[str]:
        engine = containers.engine()
        try:
            label = f"com.docker.compose.project={self.name}"
            found = [
                f"container {c.name}" for c in engine.containers.list(all=True, filters={"label": label})
            ]
            found += [f"network {n.name}" for n in engine.networks.list(filters={"label": label})]
            return found
        finally:
            engine.close()


@pytest.fixture
def project() -> Iterator[list[Project]]:
    """The projects a test starts; each is brought down, and checked gone, at its end."""
    started: list[Project] = []
    yield started
    for each in started:
        down = each.run("down", "-v")
        assert down.returncode == 0, down.stderr
        assert each.left_behind() == []


def wait_for_greeting(address: str, project: Project, timeout: float = 240) -> str:
    """The server's 220 banner, once it answers on port 25 (a host starts in seconds; Postfix's first
    start checks its spool and takes longer on a busy machine)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with smtplib.SMTP(timeout=10) as smtp:
                code, banner = smtp.connect(address, 25)
                if code == 220:
                    return banner.decode()
        except (OSError, smtplib.SMTPException) as exc:
            last = exc
        time.sleep(0.5)
    pytest.fail(f"nothing answers SMTP at {address}:25 ({last}); the lab's logs: {project.logs()}")


def swaks(address: str, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", address, "--header", "Subject: exported lab", "--body", body, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def reply_to_data(transcript: str) -> str:
    """The server's reply to the end of the message: the last reply before QUIT (swaks marks the lines
    sent and read inside TLS with ~ instead of -)."""
    lines = transcript.splitlines()
    quit_at = next(n for n, line in enumerate(lines) if line.startswith((" -> QUIT", " ~> QUIT")))
    return next(line for line in reversed(lines[:quit_at]) if line.startswith(("<-", "<~")))[3:].strip()


def wait_for_message(
    maildir: Path, body: str, project: Project, timeout: float = 60
) -> email.message.Message:
    """The message in the Maildir `maildir` whose body is `body`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted(maildir.glob("new/*")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if message.get_content().strip() == body:
                return message
        time.sleep(0.2)
    found = sorted(
        str(p.relative_to(maildir.parents[3])) for p in maildir.parents[2].rglob("*") if p.is_file()
    )
    pytest.fail(f"no message with body {body!r} in {maildir}; there: {found[:20]}; logs: {project.logs()}")


def wait_for_capture(folder: Path, body: str, project: Project, timeout: float = 60) -> None:
    """Until an Internet host's sink has kept a message with `body` in `folder`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(body in path.read_text(errors="replace") for path in folder.glob("*.eml")):
            return
        time.sleep(0.2)
    pytest.fail(f"{folder} has no message with {body!r}; logs: {project.logs()}")


@needs_compose
@pytest.mark.parametrize(
    ("target", "mailbox"),
    [
        ("reference", "EX1/mdbdata/Mailbox Store (EX1)/alice@contoso.com"),
        ("postfix", "EX1-postfix/mail/alice@contoso.com"),
    ],
)
def test_an_exported_lab_takes_mail_from_this_machine(
    tmp_path: Path, project: list[Project], target: str, mailbox: str
) -> None:
    written = tmp_path / "written"
    subnet = _subnet(0 if target == "reference" else 1)
    result = export(written, "--subnet", subnet, "--target", target)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every path in compose.yaml is relative to the folder: it runs where it was moved to.
    folder = tmp_path / "moved"
    written.rename(folder)
    running = Project(folder, COMPOSE or [])
    config = running.run("config", "-q")
    assert config.returncode == 0, config.stderr
    project.append(running)
    up = running.run("up", "-d")
    assert up.returncode == 0, up.stderr
    ex1 = compose_file(folder)["services"]["ex1"]["networks"]["lab"]["ipv4_address"]
    assert ex1 == subnet.replace("0/24", "11")  # EX1 is addr 11 of the contoso lab
    assert wait_for_greeting(ex1, running).startswith("ex1.contoso.com")
    body = f"sent to an exported lab {uuid.uuid4()}"
    sent = swaks(ex1, body, "--to", "alice@contoso.com", "--from", "x@fabrikam.com")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert reply_to_data(sent.stdout).startswith("250 "), sent.stdout
    message = wait_for_message(folder / "lab" / mailbox, body, running)
    assert message["Subject"] == "exported lab"
    # Relayed after STARTTLS (the certificate verified against the folder's CA) and AUTH as a user
    # allowed to relay: EX1 finds fabrikam.com's exchanger through the lab's DNS, whose sink keeps it.
    relayed = f"relayed through an exported lab {uuid.uuid4()}"
    sent = swaks(
        ex1,
        relayed,
        *("--to", "bob@fabrikam.com", "--from", "alice@contoso.com", "--tls", "--tls-verify"),
        *("--tls-ca-path", str(folder / "lab" / "lab-ca.pem")),
        *("--auth", "LOGIN", "--auth-user", "relayuser", "--auth-password", "Relay-P@ss1"),
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "235 " in sent.stdout and reply_to_data(sent.stdout).startswith("250 "), sent.stdout
    wait_for_capture(folder / "lab" / "sinks" / "fabrikam-mx", relayed, running)


def test_compose_yaml_describes_the_lab_with_paths_inside_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "lab-export"
    subnet = _subnet(2)
    result = export(folder, "--subnet", subnet)
    assert result.returncode == 0, result.stdout + result.stderr
    document = compose_file(folder)
    assert document["version"] == "2.4"
    network = document["networks"]["lab"]
    assert network["internal"] is True
    assert network["ipam"]["config"] == [{"subnet": subnet, "gateway": subnet.replace("0/24", "1")}]
    assert network["driver_opts"]["com.docker.network.bridge.name"].startswith("mfc")
    services = document["services"]
    config = lab_config.load(lab_config.lab_path("contoso"), base=subnet.split("/")[0], port_offset=0)
    expected = {"dns", "gc", "ex1", "ex2", "ex3", "ex4"} | {h.name for h in config.internet_hosts}
    assert set(services) == expected
    for name, service in services.items():
        assert service["labels"]["org.mailflow.role"] == "agent"
        assert service["labels"]["org.mailflow.host"].lower() == name
        for volume in service["volumes"]:
            assert volume.startswith("./"), f"{name}: {volume} is not inside the folder"
        assert "./resolv.conf:/etc/resolv.conf:ro" in service["volumes"]
    assert (folder / "resolv.conf").read_text().startswith(f"nameserver {config.dns_address}\n")
    # The lab file and its directory are copied in; the copy reads as the original did, comments kept.
    copied = lab_config.load(folder / "lab" / "contoso.yaml", base=subnet.split("/")[0], port_offset=0)
    assert copied.global_catalog.directory == folder / "lab" / "contoso.ldif"
    original = lab_config.lab_path("contoso").read_text().splitlines()
    changed = [
        (old, new)
        for old, new in zip(original, (folder / "lab" / "contoso.yaml").read_text().splitlines(), strict=True)
        if old != new
    ]
    assert changed == [("  directory: ../directory/contoso.ldif", '  directory: "contoso.ldif"')]
    for server in ("ex1", "ex2", "ex3", "ex4"):
        assert (folder / "lab" / "tls" / f"{server}.contoso.com.pem").stat().st_mode & 0o077 == 0
    assert (folder / "lab" / "lab-ca.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    readme = (folder / "README.txt").read_text()
    assert f"swaks --server {config.organization.server('EX1').address} --to alice@contoso.com" in readme
    assert "lab/EX1/mdbdata/Mailbox Store (EX1)/alice@contoso.com/new/" in readme


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_both_compose_versions_read_the_file(tmp_path: Path, version: str) -> None:
    program = PROGRAMS[version]
    if program is None:
        pytest.skip(f"compose {version} is not installed here")
    folder = tmp_path / "lab-export"
    result = export(folder, "--subnet", _subnet(2))
    assert result.returncode == 0, result.stdout + result.stderr
    read = subprocess.run(
        [*program, "-f", "compose.yaml", "config"], cwd=folder, capture_output=True, text=True
    )
    assert read.returncode == 0, read.stderr
    assert yaml.safe_load(read.stdout)["networks"]["lab"]["internal"] is True


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["nosuchlab"], "no lab 'nosuchlab'"),
        (["--target", "exim"], "--target exim: an exported lab runs reference, postfix or postfix:SERVER"),
        (["--target", "postfix:EX9"], "lab contoso has no server 'EX9'; servers: EX1, EX2, EX3, EX4"),
        (["--subnet", "10.0.0.0/24"], "--subnet 10.0.0.0/24: a lab network is a /24 inside 198.18.0.0/15"),
        (["--subnet", "198.19.7.0/16"], "--subnet 198.19.7.0/16: not a network"),
        (
            ["--subnet", "198.19.0.0/23"],
            "--subnet 198.19.0.0/23: a lab network is a /24 inside 198.18.0.0/15",
        ),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(tmp_path: Path, args: list[str], said: str) -> None:
    folder = tmp_path / "lab-export"
    result = export(folder, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert said in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_empty_is_refused_unless_forced(tmp_path: Path) -> None:
    folder = tmp_path / "lab-export"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    result = export(folder, "--subnet", _subnet(2))
    assert result.returncode == 2
    assert f"--compose {folder} is not empty (notes.txt): choose a new folder, or --force" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    forced = export(folder, "--subnet", _subnet(2), "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert (folder / "notes.txt").read_text() == "mine\n"
    assert (folder / "compose.yaml").is_file()


def test_an_empty_folder_is_written_into(tmp_path: Path) -> None:
    folder = tmp_path / "lab-export"
    folder.mkdir()
    result = export(folder, "--subnet", _subnet(2))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (folder / "compose.yaml").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["lab-export"]  # no staging folder left beside it
