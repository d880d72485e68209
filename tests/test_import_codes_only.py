"""`mailflow import`: a session captured from real Postfix standing in for EX1 (swaks's transcript of
it) replays against the reference MTA. `--codes-only` keeps only the behaviour layer (reply codes and
enhanced status codes); without it the texts are kept as the capture's words (`wording: captured`),
which the reference MTA, answering in Exchange's words, does not judge. Told they are Exchange's words,
the replay fails at the EHLO wording.

Needs root and Postfix (scripts/install_mtas.sh); skipped with the reason otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import standin
from click.testing import CliRunner

from harness import targets
from harness.cli.importing import import_group
from harness.corpus.trace import load
from harness.run.runner import run_trace

BAND = 3  # this module's band of the namespace network (tests/standin.py)
UNAVAILABLE = targets.POSTFIX.unavailable() or (None if shutil.which("swaks") else "swaks is not installed")
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


@pytest.fixture(scope="module")
def postfix_transcript(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """swaks's transcript of one message from the lab's internet host to Alice, Postfix answering."""
    config = standin.netns_config(BAND)
    ex1 = config.organization.server("EX1").default_virtual_server
    with targets.POSTFIX.lab(config):
        swaks = subprocess.run(
            ["swaks", "--server", f"{ex1.address}:{ex1.port}", "--local-interface",
             config.host("internet").address, "--helo", "mail-out.fabrikam.com",
             "--from", "ann@fabrikam.com", "--to", "alice@contoso.com"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
    assert "250 2.0.0 Ok: queued as" in swaks.stdout and "221 2.0.0 Bye" in swaks.stdout  # Postfix
    path = tmp_path_factory.mktemp("postfix") / "postfix-session.txt"
    path.write_text(swaks.stdout)
    return path


def _import(source: Path, output: Path, *options: str) -> None:
    result = CliRunner().invoke(
        import_group, ["swaks", str(source), "-o", str(output), "--server", "EX1", *options]
    )
    assert result.exit_code == 0, result.output


def test_codes_only_replays_a_postfix_session_on_the_reference_mta(
    postfix_transcript: Path, tmp_path: Path
) -> None:
    out = tmp_path / "traces" / "codes.yaml"
    _import(postfix_transcript, out, "--codes-only", "--outcome")
    trace = load(out)
    assert "masked" not in out.read_text() and "Ok" not in out.read_text()
    # Postfix's 250 2.0.0 after the message says less than Exchange's 2.6.0: only its code is expected.
    assert "enhanced: 2.1.5" in out.read_text() and "2.0.0" not in out.read_text()
    assert trace.outcome["delivered"] == [
        {"mailbox": "alice@contoso.com", "server": "EX1", "sender": "ann@fabrikam.com"}
    ]
    result = run_trace(trace, targets.REFERENCE)
    assert result.passed, "\n".join(result.failures())


def test_the_captured_words_are_kept_and_judged_only_where_they_are_the_target_s(
    postfix_transcript: Path, tmp_path: Path
) -> None:
    out = tmp_path / "traces" / "texts.yaml"
    _import(postfix_transcript, out)
    trace = load(out)
    assert trace.wording == "captured" and "masked:" in out.read_text()
    result = run_trace(trace, targets.REFERENCE)
    assert result.passed, "\n".join(result.failures())

    exchange = tmp_path / "traces" / "exchange.yaml"
    _import(postfix_transcript, exchange, "--wording", "exchange")
    result = run_trace(load(exchange), targets.REFERENCE)
    assert not result.passed
    first = result.failures()[0]
    assert "step 3" in first and "250-<host-1> Hello" in first, result.failures()


def test_a_wording_name_that_is_no_name_is_refused(postfix_transcript: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad.yaml"
    result = CliRunner().invoke(
        import_group,
        ["swaks", str(postfix_transcript), "-o", str(out), "--server", "EX1", "--wording", "Post Fix"],
    )
    assert result.exit_code == 2
    assert "--wording" in result.output and "lower-case letters" in result.output
    assert not out.exists()


def test_run_update_turns_the_postfix_session_into_a_regression_trace(
    postfix_transcript: Path, tmp_path: Path
) -> None:
    """`mailflow run --update` rewrites the expectations that do not hold to what the reference MTA says,
    and the trace passes from then on: here the Postfix session's texts, taken as Exchange's words."""
    _import(postfix_transcript, tmp_path / "traces" / "bug.yaml", "--wording", "exchange")
    mailflow = str(Path(sys.executable).with_name("mailflow"))

    def run(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [mailflow, "run", "--reports", str(tmp_path / "reports"), *options, "traces/bug.yaml"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    assert run().returncode == 1
    updated = run("--update")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert "Hello [<address-1>]" in (tmp_path / "traces" / "bug.yaml").read_text()
    again = run()
    assert again.returncode == 0, again.stdout + again.stderr
