"""`mailflow run`'s summary, as a CI log shows it: piped, at 80 columns, every trace that did not pass
named with its reason, the structured reasons in last-run.json, JUnit XML, and the exit code."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.exit_codes import ExitCode
from harness.judge.records import KNOCK_ON
from harness.lab import config as lab_config
from harness.lab.placement import relocation
from tests.mailflow_cli import (
    AUTH,
    GOOD,
    MAILFLOW,
    auth_from_environment_trace,
    failing_trace,
    has_ansi,
    invalid_trace,
    mailflow,
    unfolded,
)

BOX_DRAWING = re.compile("[\u2500-\u257f\u2026]")  # table rules and the "…" of a squeezed column


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One run of a failing, an invalid and an unrunnable (MAILFLOW_AUTH_USER not set) trace, at 80
    columns and piped."""
    folder = tmp_path_factory.mktemp("mixed")
    traces = folder / "traces"
    traces.mkdir()
    _, failing_line = failing_trace(traces)
    _, invalid_line = invalid_trace(traces)
    auth_from_environment_trace(traces)
    done = mailflow("run", "traces", cwd=folder, columns=80)
    yield {"done": done, "folder": folder, "failing_line": failing_line, "invalid_line": invalid_line}


def test_the_80_column_summary_names_each_trace_that_did_not_pass_with_its_reason(
    mixed_run: dict[str, Any],
) -> None:
    done: subprocess.CompletedProcess[str] = mixed_run["done"]
    output = done.stdout
    # Invalid input and an unset variable (2) outrank a failed trace (1).
    assert done.returncode == ExitCode.INPUT, output + done.stderr
    assert all(len(line) <= 80 for line in output.splitlines()), output
    assert not has_ansi(output) and not BOX_DRAWING.search(output), output
    lines = unfolded(output)
    assert (
        f"failed   try/relay-expected-wrongly: traces/failing.yaml:{mixed_run['failing_line']}: "
        "session 1 (internet), step 7: S: expect 250: expected code 250, got 550; the server replied "
        "'550 5.7.1 Unable to relay for nancy@northwind.example' (2 outcome check(s) fail after it)"
    ) in lines, output
    assert (
        "error    try/auth-from-environment: traces/auth-env.yaml: ${MAILFLOW_AUTH_USER} is not set: "
        "export MAILFLOW_AUTH_USER to replay this trace's AUTH"
    ) in lines, output
    assert any(
        line.startswith(f"invalid  invalid: traces/invalid.yaml:{mixed_run['invalid_line']}: ")
        and "unknown field 'sned'" in line
        for line in lines
    ), output
    assert "3 traces: 0 passed, 1 failed, 1 error, 1 invalid" in lines
    # The user's own mistakes are not blamed on the harness.
    assert not any(line.startswith("broken") for line in lines), output
    for blame in ("mailflow failed", "Traceback", "[gw"):
        assert blame not in output


def test_the_summary_counts_by_flow_and_catalogue_id(mixed_run: dict[str, Any]) -> None:
    lines = mixed_run["done"].stdout.splitlines()
    assert re.split(r"\s+", lines[lines.index(next(x for x in lines if x.startswith("flow ")))]) == [
        "flow",
        "passed",
        "failed",
        "error",
        "broken",
        "invalid",
        "skipped",
    ]
    counts = {
        line.split()[0]: line.split()[1:] for line in lines if re.match(r"^\S+ +[.\d]+( +[.\d]+){5}$", line)
    }
    # The failing trace and the AUTH trace are Relay traces; the invalid one could not be read.
    assert counts["Relay"] == [".", "1", "1", ".", ".", "."]
    assert counts["RELAY-3"] == [".", ".", "1", ".", ".", "."]
    assert counts["RELAY-1"] == [".", "1", ".", ".", ".", "."]
    assert any(line.startswith("(not loaded)") for line in lines)


def test_last_run_json_keeps_every_trace_with_its_structured_reason(mixed_run: dict[str, Any]) -> None:
    folder: Path = mixed_run["folder"]
    ran = {o["trace"]: o for o in json.loads((folder / "reports" / "last-run.json").read_text())}
    assert set(ran) == {"try/relay-expected-wrongly", "invalid", "try/auth-from-environment"}
    failed = ran["try/relay-expected-wrongly"]
    assert failed["outcome"] == "failed"
    assert failed["reason"] == {
        "kind": "failure",
        "file": str(folder / "traces" / "failing.yaml"),
        "line": mixed_run["failing_line"],
        "step": "session 1 (internet), step 7",
        "expected": "S: expect 250",
        "received": "550 5.7.1 Unable to relay for nancy@northwind.example",
        "message": "session 1 (internet), step 7: S: expect 250: expected code 250, got 550; "
        "the server replied '550 5.7.1 Unable to relay for nancy@northwind.example'",
    }
    # Once the session stopped, alice's delivery and EX1's tracking are missing because of it.
    first, *after = failed["message"].splitlines()
    assert first.startswith(f"session 1 (internet), step 7 (line {mixed_run['failing_line']}): ")
    assert after and all(line.startswith(KNOCK_ON) for line in after), after
    # The same failures as records: the first one where the trace stopped, the others after it.
    records = failed["failures"]
    assert records[0]["kind"] == "code" and records[0]["command"] == "RCPT TO:<nancy@northwind.example>"
    assert (records[0]["expected"], records[0]["actual"], records[0]["step"]) == ("250", "550", 7)
    assert all(r["knock_on"] for r in records[1:]) and len(records) == len(after) + 1
    invalid = ran["invalid"]
    assert invalid["outcome"] == "invalid"
    assert invalid["reason"]["kind"] == "invalid"
    assert invalid["reason"]["file"].endswith("traces/invalid.yaml")
    assert invalid["reason"]["line"] == mixed_run["invalid_line"]
    unset = ran["try/auth-from-environment"]
    assert unset["outcome"] == "error"
    assert unset["reason"]["kind"] == "environment"
    assert "traceback" not in unset["reason"]


def test_junit_xml_has_one_testcase_per_trace_named_by_its_id(mixed_run: dict[str, Any]) -> None:
    tree = ElementTree.parse(mixed_run["folder"] / "reports" / "junit.xml")
    cases = {case.get("name"): case for case in tree.iter("testcase")}
    assert set(cases) == {"try/relay-expected-wrongly", "invalid", "try/auth-from-environment"}
    failure = cases["try/relay-expected-wrongly"].find("failure")
    assert failure is not None and "expected code 250, got 550" in (failure.text or "")


def test_an_address_in_use_is_the_users_error_with_the_address(tmp_path: Path) -> None:
    base, offset = relocation()
    config = lab_config.load(lab_config.lab_path("contoso"), base=base, port_offset=offset)
    server = config.organization.server("EX1").default_virtual_server
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind((server.address, server.port))
        taken.listen()
        done = mailflow("run", str(GOOD), cwd=tmp_path, columns=80)
    assert done.returncode == ExitCode.BROKEN, done.stdout + done.stderr
    reason = " ".join(unfolded(done.stdout))
    assert f"error    relay/relay-denied-by-default: {GOOD}: the lab could not start:" in reason
    assert f"cannot listen on {server.address}:{server.port}" in reason
    assert "the address is in use by another lab or program" in reason and "relocate this lab" in reason
    assert "Traceback" not in done.stdout and "mailflow failed" not in done.stdout


def test_skip_reasons_are_shown(tmp_path: Path) -> None:
    # OpenSMTPD's target has no AUTH: the trace is skipped before anything is started.
    done = mailflow("run", "--target", "opensmtpd", str(AUTH), cwd=tmp_path, columns=200)
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    assert (
        "skipped  relay/auth-login-relays-to-internet [opensmtpd]: target opensmtpd lacks auth" in done.stdout
    )
    assert "1 traces: 0 passed, 0 failed, 1 skipped" in done.stdout


def test_verbose_lists_every_trace_and_the_default_only_those_to_look_at(tmp_path: Path) -> None:
    quiet = mailflow("run", str(GOOD), cwd=tmp_path)
    assert quiet.returncode == ExitCode.OK, quiet.stdout + quiet.stderr
    assert "relay/relay-denied-by-default" not in quiet.stdout
    verbose = mailflow("run", "--verbose", str(GOOD), cwd=tmp_path)
    assert re.search(
        r"^passed   relay/relay-denied-by-default: RELAY-1 IN-3 IN-7b \d+\.\d\ds$", verbose.stdout, re.M
    )
    assert "1 traces: 1 passed, 0 failed" in verbose.stdout


def test_no_trace_found_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    empty = mailflow("run", "traces", cwd=tmp_path)
    assert empty.returncode == ExitCode.INPUT
    assert "no trace files found in traces" in empty.stderr
    unmatched = mailflow("run", str(GOOD), "-k", "no-such-trace", cwd=tmp_path)
    assert unmatched.returncode == ExitCode.INPUT, unmatched.stdout + unmatched.stderr
    assert "no trace was run" in unmatched.stdout


def test_the_progress_bar_moves_on_a_terminal_and_is_absent_when_piped(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    for name in ("a.yaml", "b.yaml", "zz.yaml"):
        shutil.copy(GOOD, traces / name)
    primary, secondary = pty.openpty()
    child = subprocess.Popen(
        # -k leaves two of the three files: the bar counts the traces that run.
        [str(MAILFLOW), "run", "traces", "-k", "not zz"],
        cwd=tmp_path,
        stdin=secondary,
        stdout=subprocess.PIPE,
        stderr=secondary,
        env={**os.environ, "COLUMNS": "100"},
    )
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 1.0)
        if not ready:
            if child.poll() is not None:
                break
            continue
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal's other side closed: the command has ended
            break
        if not chunk:
            break
        seen += chunk
    os.close(primary)
    assert child.stdout is not None
    stdout = child.stdout.read().decode()
    assert child.wait(timeout=60) == ExitCode.OK
    terminal = seen.decode(errors="replace")
    counts = set(re.findall(r"\d+/\d+", terminal))
    assert {"0/2", "1/2", "2/2"} <= counts and "3/3" not in counts, terminal
    # The summary on stdout (not a terminal here) carries no bar and no colour.
    assert "2 traces: 2 passed" in stdout and not re.search(r"\d/2", stdout) and not has_ansi(stdout)
    piped = mailflow("run", "traces", "-k", "not zz", cwd=tmp_path)
    assert not re.search(r"\d/2", piped.stdout + piped.stderr)
