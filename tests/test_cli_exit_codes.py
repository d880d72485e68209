"""Every `mailflow` command ends with one of the exit codes of harness/exit_codes.py, and says why in
the user's terms: run over the real command."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from harness import exit_codes, targets
from harness.exit_codes import ExitCode
from tests.mailflow_cli import GOOD, ROOT, failing_trace, invalid_trace, mailflow, unfolded


def test_version(tmp_path: Path) -> None:
    done = mailflow("--version", cwd=tmp_path)
    assert done.returncode == ExitCode.OK
    assert done.stdout.startswith("mailflow, version ")


def test_help_lists_the_targets_and_the_exit_codes(tmp_path: Path) -> None:
    for command in ("run", "matrix", "diff"):
        done = mailflow(command, "--help", cwd=tmp_path, columns=200)
        assert done.returncode == ExitCode.OK
        text = " ".join(done.stdout.split())
        assert f"one of {', '.join(targets.TARGETS)}" in text, text
        assert "Exit codes: 0 every trace passed" in text and "3 the lab or the harness broke" in text


def test_a_wrong_target_lists_the_valid_ones(tmp_path: Path) -> None:
    done = mailflow("run", "--target", "sendmail", str(GOOD), cwd=tmp_path)
    assert done.returncode == ExitCode.INPUT
    message = " ".join(done.stderr.split())
    assert "unknown target 'sendmail'; a target is a name (exim, opensmtpd, postfix, reference;" in message
    assert "smtp://HOST[:PORT]" in message and "target profile file" in message
    assert "Traceback" not in done.stderr


def test_coverage_of_a_results_file_that_does_not_exist_is_an_input_error(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent.json"
    done = mailflow("coverage", "--results", str(missing), str(GOOD), cwd=tmp_path)
    assert done.returncode == ExitCode.INPUT
    assert f"--results: {missing} does not exist" in " ".join(done.stderr.split())
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    done = mailflow("coverage", "--results", str(garbage), str(GOOD), cwd=tmp_path)
    assert done.returncode == ExitCode.INPUT
    assert "not a mailflow run's JSON results" in done.stderr


def test_coverage_without_a_previous_run_still_shows_the_catalogue(tmp_path: Path) -> None:
    done = mailflow("coverage", str(GOOD), cwd=tmp_path, columns=200)
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    assert "IDs have at least one trace" in done.stdout


def test_check_and_coverage_of_an_invalid_trace_exit_2(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    path, line = invalid_trace(traces)
    check = mailflow("check", str(path), cwd=tmp_path, columns=300)
    assert check.returncode == ExitCode.INPUT
    assert f"{path}:{line}:" in check.stdout
    coverage = mailflow("coverage", str(path), cwd=tmp_path, columns=300)
    assert coverage.returncode == ExitCode.INPUT
    assert f"invalid trace: {path}:{line}:" in coverage.stdout


def test_catalogue_into_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    done = mailflow("catalogue", "--write", str(tmp_path / "no" / "such" / "catalogue.md"), cwd=tmp_path)
    assert done.returncode == ExitCode.INPUT
    assert "--write: cannot write" in done.stderr and "No such file or directory" in done.stderr


def test_generate_with_an_unknown_lab(tmp_path: Path) -> None:
    done = mailflow("generate", "--lab", "fabrikam", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == ExitCode.INPUT
    assert "no lab 'fabrikam'" in done.stderr
    assert not (tmp_path / "out").exists()


def test_record_on_an_address_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = mailflow(
            "record",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            "127.0.0.1:9",
            "-o",
            str(tmp_path / "t.yaml"),
            cwd=tmp_path,
        )
    assert done.returncode == ExitCode.BROKEN, done.stdout + done.stderr
    assert f"Error: --listen 127.0.0.1:{port}: cannot listen:" in done.stderr
    assert "address already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_matrix_exits_1_when_a_trace_fails_and_names_it(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    failing, line = failing_trace(traces)
    done = mailflow("matrix", "--target", "reference", str(failing), "--reports", "reports", cwd=tmp_path)
    assert done.returncode == ExitCode.FAILED, done.stdout + done.stderr
    assert (
        f"failed   try/relay-expected-wrongly: traces/failing.yaml:{line}: session 1 (internet), step 7: "
        "S: expect 250: expected code 250, got 550"
    ) in "\n".join(unfolded(done.stdout))
    assert "reference: 1 traces: 0 passed, 1 failed" in done.stdout
    assert (tmp_path / "reports" / "matrix.md").exists()


def test_matrix_exits_0_when_every_trace_passes(tmp_path: Path) -> None:
    done = mailflow("matrix", "--target", "reference", str(GOOD), "--reports", "reports", cwd=tmp_path)
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr


def test_diff_of_an_invalid_trace_is_an_input_error(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    path, line = invalid_trace(traces)
    done = mailflow("diff", "--target", "reference", "--target", "reference", str(path), cwd=tmp_path)
    assert done.returncode == ExitCode.INPUT, done.stdout + done.stderr
    assert f"invalid trace: {path}:{line}:" in " ".join(done.stdout.split())


def test_wrong_placement_variables_are_input_errors_before_any_lab_starts(tmp_path: Path) -> None:
    for variable, value, said in (
        ("MAILFLOW_PORT_OFFSET", "ten", "MAILFLOW_PORT_OFFSET='ten' is not a port offset"),
        ("MAILFLOW_LAB_BASE", "10.1.0.0", "MAILFLOW_LAB_BASE=10.1.0.0 is outside 127.0.0.0/8"),
        ("MAILFLOW_LAB_BASE", "localhost", "MAILFLOW_LAB_BASE='localhost' is not an IPv4 address"),
    ):
        for command in (("run",), ("matrix", "--target", "reference"), ("diff", "--target", "reference")):
            extra = ("--target", "reference") if command[0] == "diff" else ()
            done = mailflow(*command, *extra, str(GOOD), cwd=tmp_path, env={variable: value})
            assert done.returncode == ExitCode.INPUT, (command, done.stdout, done.stderr)
            assert said in " ".join(done.stderr.split()), (command, done.stderr)
            assert "Traceback" not in done.stderr and not (tmp_path / "reports" / "last-run.json").exists()


def test_a_named_file_that_is_no_yaml_is_refused_as_such(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a trace\n")
    done = mailflow("run", str(notes), cwd=tmp_path, columns=200)
    assert done.returncode == ExitCode.INPUT
    assert f"{notes} is not a trace: a trace is a .yaml or .yml file" in done.stderr


def test_a_real_mta_for_a_server_the_lab_lacks_is_the_users_error(tmp_path: Path) -> None:
    if (unavailable := targets.POSTFIX.unavailable()) is not None:
        pytest.skip(unavailable)
    done = mailflow("run", "--target", "postfix:EX9", str(GOOD), cwd=tmp_path, columns=300)
    assert done.returncode == ExitCode.INPUT, done.stdout + done.stderr
    assert "target postfix:EX9: lab contoso has no server 'EX9'; servers: EX1, EX2, EX3, EX4" in done.stdout
    assert "mailflow failed" not in done.stdout


def test_the_exit_code_document_has_a_row_for_every_code_help_gives() -> None:
    rows = {
        line.split("|")[1].strip()
        for line in (ROOT / "docs" / "exit-codes.md").read_text().splitlines()
        if line.startswith("| ") and not line.startswith("| code")
    }
    assert {code for code, _ in exit_codes.MEANINGS} <= rows
