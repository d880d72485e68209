"""`--target` words that are not a target, target profile files with a mistake, and an outside MTA where
nothing answers: each said in the user's terms (the file and line, the valid choices, what happened at
the address), with exit 2 for input and 3 when nothing answers, never a traceback."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner
from labprocess import MAILFLOW, environment

from harness.cli.app import main
from harness.exit_codes import ExitCode
from harness.lab.placement import relocation

ROOT = Path(__file__).resolve().parents[1]
TRACE = "traces/relay/relay-domain-does-not-cover-subdomains.yaml"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Accept:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 2.0.0 OK"


@pytest.fixture(scope="module")
def answering() -> Iterator[str]:
    """An SMTP server (aiosmtpd) on 127.0.0.1: something that answers where a profile points."""
    controller = Controller(_Accept(), hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield f"smtp://127.0.0.1:{controller.port}"
    finally:
        controller.stop()


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["run", *args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_word_that_is_no_target_names_the_forms() -> None:
    code, out = run("--target", "postfx", TRACE)
    assert code == ExitCode.INPUT
    for form in ("reference", "postfix:EX2", "smtp://HOST[:PORT]", "smtps://HOST[:PORT]", "profile file"):
        assert form in out, out


def test_a_url_that_is_not_one_names_the_forms() -> None:
    code, out = run("--target", "smtp://127.0.0.1:notaport", TRACE)
    assert code == ExitCode.INPUT
    assert "submission://HOST[:PORT]" in out, out


def test_a_profile_file_that_does_not_exist_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    code, out = run("--target", str(missing), TRACE)
    assert code == ExitCode.INPUT
    assert "no target profile file" in out and "nowhere.yaml" in out, out


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.yaml", "url: smtp://127.0.0.1:2525\nprofile: exchange: yes\n")
    code, out = run("--target", path, TRACE)
    assert code == ExitCode.INPUT
    assert f"{path}:2:" in " ".join(out.split()), out


def test_an_unknown_key_names_file_line_and_the_keys_there_are(tmp_path: Path) -> None:
    path = write(tmp_path / "typo.yaml", "url: smtp://127.0.0.1:2525\nstand_in_for: EX2\n")
    code, out = run("--target", path, TRACE)
    assert code == ExitCode.INPUT
    flat = " ".join(out.split())
    assert f"{path}:2: stand_in_for: unknown field 'stand_in_for'" in flat, out
    assert "stands_in_for" in flat and "deliveries" in flat, out


def test_a_bad_url_in_a_profile_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "http.yaml", "profile: behaviour\nurl: http://127.0.0.1:2525\n")
    code, out = run("--target", path, TRACE)
    assert code == ExitCode.INPUT
    flat = " ".join(out.split())
    assert f"{path}:2: url:" in flat and "unknown scheme 'http'" in flat, out


def test_a_sink_off_loopback_and_unknown_deviations_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "sink.yaml", "url: smtp://127.0.0.1:2525\ndeliveries:\n  sink: 192.0.2.1:25\n")
    code, out = run("--target", path, TRACE)
    assert code == ExitCode.INPUT
    assert f"{path}:3: deliveries.sink:" in " ".join(out.split()), out
    path = write(tmp_path / "deviations.yaml", "url: smtp://127.0.0.1:2525\ndeviations: sendmail\n")
    code, out = run("--target", path, TRACE)
    assert code == ExitCode.INPUT
    assert "exim, opensmtpd, postfix" in out, out


def test_nothing_answering_is_exit_3_with_what_happened(tmp_path: Path) -> None:
    url = f"smtp://127.0.0.1:{_free_port()}"
    code, out = run("--target", url, TRACE)
    assert code == ExitCode.BROKEN
    assert f"nothing answers at {url}: connection refused" in out, out
    path = write(tmp_path / "gone.yaml", f"url: {url}\n")
    code, out = run("--target", path, TRACE)
    assert code == ExitCode.BROKEN
    assert f"nothing answers at {url}: connection refused" in out, out


def test_an_unknown_stands_in_for_names_file_line_and_the_servers(answering: str, tmp_path: Path) -> None:
    path = write(tmp_path / "ex9.yaml", f"url: {answering}\nstands_in_for: EX9\n")
    base, _ = relocation()
    env = environment(MAILFLOW_LAB_BASE=base or "127.170.0.0")
    command = [MAILFLOW, "run", "--target", path, "--reports", str(tmp_path / "reports"), TRACE]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == ExitCode.INPUT, out
    assert f"{path}:2: stands_in_for:" in out and "no server 'EX9'" in out, out
    assert "servers: EX1, EX2" in out, out
    assert "Traceback" not in out
