"""Traces run from any path: what `mailflow record`, `import` and `generate` write outside traces/ runs with
`mailflow run` and plain `pytest`, a file named on the command line is a trace (an invalid one is reported
with file and line), and a folder's YAML files are traces only when they are in the corpus or look like
traces, so that lab files, deviation lists and the catalogue are never collected.

Everything here goes through the real commands in subprocesses, against real labs."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import smtplib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.lab import config as lab_config
from harness.lab.config import LabConfig
from harness.lab.placement import relocation
from harness.lab.runtime import Lab
from tests.sourcetext import write

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GOOD = ROOT / "traces" / "inbound" / "local-mailbox-on-gateway.yaml"
LAB = ROOT / "fixtures" / "labs" / "contoso.yaml"
# The lab file, its directory named by an absolute path so that a copy anywhere still loads.
LAB_TEXT = LAB.read_text().replace("directory: ../directory/", f"directory: {ROOT}/fixtures/directory/", 1)
ENV = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def mailflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mailflow"), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600
    )


def pytest_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_outcomes(
    paths: list[str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """`mailflow run PATHS` and the outcome of every trace it ran (reports/last-run.json)."""
    done = mailflow("run", *paths, "--reports", "reports", cwd=cwd)
    results = cwd / "reports" / "last-run.json"
    outcomes: list[dict[str, Any]] = json.loads(results.read_text()) if results.exists() else []
    return done, outcomes


def assert_all_passed(
    done: subprocess.CompletedProcess[str], outcomes: list[dict[str, Any]], count: int
) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(outcomes) == count, done.stdout
    assert {o["outcome"] for o in outcomes} == {"passed"}, done.stdout


@pytest.fixture
def lab_config_here() -> LabConfig:
    base, offset = relocation()
    return lab_config.load(lab_config.lab_path("contoso"), base=base, port_offset=offset)


# --- the output of record, generate and import, outside traces/ ------------------------------------------


def _listening_port(process: subprocess.Popen[str], deadline: float) -> int:
    """The port `mailflow record` says it listens on (it was given port 0)."""
    assert process.stdout is not None
    seen = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        if found := re.search(r"recording [\d.]+:(\d+) ", line):
            return int(found[1])
    process.kill()
    pytest.fail(f"mailflow record did not start listening:\n{seen}{process.stdout.read()}")


def test_a_trace_recorded_outside_traces_runs_with_mailflow_run_and_pytest(
    tmp_path: Path, lab_config_here: LabConfig
) -> None:
    ex1 = lab_config_here.organization.server("EX1").default_virtual_server
    internet = lab_config_here.host("internet").address
    output = tmp_path / "x" / "t.yaml"
    with Lab(lab_config_here, tmp_path / "lab"):
        command = ["record", "--listen", f"{internet}:0", "--upstream", f"{ex1.address}:{ex1.port}"]
        recorder = subprocess.Popen(
            [str(BIN / "mailflow"), *command, "-o", str(output), "--sessions", "1"],
            cwd=tmp_path,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            port = _listening_port(recorder, time.monotonic() + 30)
            smtp = smtplib.SMTP(internet, port, source_address=(internet, 0), timeout=10)
            smtp.ehlo("mail-out.fabrikam.com")
            refused = smtp.sendmail("ann@fabrikam.com", ["alice@contoso.com"], "Subject: t\r\n\r\nHello.\r\n")
            assert refused == {}
            smtp.quit()
            printed, _ = recorder.communicate(timeout=30)
        finally:
            if recorder.poll() is None:
                recorder.kill()
                recorder.wait()
    assert recorder.returncode == 0, printed
    assert f"{output}: " in printed and output.is_file()
    assert "traces" not in output.parts

    done, outcomes = run_outcomes([str(output)], tmp_path)
    assert_all_passed(done, outcomes, 1)
    assert outcomes[0]["trace"] == "recorded/t"

    collected = pytest_run(str(output), cwd=tmp_path)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert re.search(r"\b1 passed\b", collected.stdout), collected.stdout


def test_generated_traces_outside_traces_run_as_a_folder(tmp_path: Path) -> None:
    made = mailflow("generate", "--count", "3", "-o", "g", cwd=tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    written = sorted((tmp_path / "g").glob("*.yaml"))
    assert len(written) == 3
    done, outcomes = run_outcomes(["g"], tmp_path)
    assert_all_passed(done, outcomes, 3)
    assert sorted(Path(o["path"]).name for o in outcomes) == [p.name for p in written]


def test_an_imported_swaks_session_outside_traces_runs_as_a_folder(
    tmp_path: Path, lab_config_here: LabConfig
) -> None:
    if shutil.which("swaks") is None:
        pytest.skip("swaks is not installed (scripts/install_mtas.sh installs it)")
    ex1 = lab_config_here.organization.server("EX1").default_virtual_server
    with Lab(lab_config_here, tmp_path / "lab"):
        swaks = subprocess.run(
            [
                *("swaks", "--server", f"{ex1.address}:{ex1.port}", "--helo", "mail-out.fabrikam.com"),
                *("--local-interface", lab_config_here.host("internet").address),
                *("--from", "ann@fabrikam.com", "--to", "alice@contoso.com"),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    transcript = write(tmp_path / "session.txt", swaks.stdout)
    imported = mailflow("import", "swaks", str(transcript), "-o", "i", "--server", "EX1", cwd=tmp_path)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert [p.name for p in (tmp_path / "i").glob("*.yaml")] == ["session.yaml"]
    done, outcomes = run_outcomes(["i"], tmp_path)
    assert_all_passed(done, outcomes, 1)


# --- which YAML files are traces ---------------------------------------------------------------------------

BROKEN_IN_CORPUS = "id: x/broken\ntitle: no sessions\nspec: [IN-1]\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with a trace in traces/, a broken one there, a trace written elsewhere, and the other YAML
    files a project has: a lab file, the deviation lists, the catalogue, a file that is no YAML at all."""
    root = tmp_path / "project"
    write(root / "traces" / "inbound" / "good.yaml", GOOD.read_text())
    write(root / "traces" / "broken.yaml", BROKEN_IN_CORPUS)
    write(root / "recorded" / "session.yaml", GOOD.read_text().replace("id: inbound/", "id: recorded/"))
    write(root / "fixtures" / "labs" / "contoso.yaml", LAB_TEXT)
    write(root / "lab.yml", LAB_TEXT)
    catalogue = Path("harness", "corpus", "catalogue.yaml")
    write(root / catalogue, (ROOT / catalogue).read_text())
    for deviations in (ROOT / "harness" / "targets" / "deviations").glob("*.yaml"):
        write(root / "harness" / "targets" / "deviations" / deviations.name, deviations.read_text())
    write(root / "notes" / "template.yaml", "key: {{ not yaml\n")
    # Other projects' YAML with keys a trace has too: a Kubernetes manifest's `spec:`.
    write(
        root / "deploy" / "web.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 1}\n",
    )
    write(root / ".hidden" / "t.yaml", GOOD.read_text())
    write(root / "traces" / ".t.yaml.draft", GOOD.read_text())
    return root


def _collected(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_a_folder_collects_its_traces_and_nothing_else(project: Path) -> None:
    done = pytest_run("--collect-only", "-q", "project", cwd=project.parent)
    assert _collected(done) == [
        "project/recorded/session.yaml::recorded/local-mailbox-on-gateway",
        "project/traces/broken.yaml::broken",
        "project/traces/inbound/good.yaml::inbound/local-mailbox-on-gateway",
    ], done.stdout + done.stderr
    # mailflow run takes the same files.
    ran = mailflow("run", "project", "--reports", "reports", cwd=project.parent)
    assert "mailflow: 3 trace file(s)" in ran.stdout, ran.stdout + ran.stderr
    # A file that may be a trace with a typo is named; the lab and the other YAML files are not.
    assert "skipped project/notes/template.yaml: its YAML does not parse" in ran.stdout
    assert "contoso.yaml" not in ran.stdout and "catalogue.yaml" not in ran.stdout
    assert "web.yaml" not in ran.stdout


def test_a_broken_trace_in_the_corpus_is_reported_with_file_and_line(project: Path) -> None:
    done = pytest_run("project/traces", cwd=project.parent)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED
    assert re.search(r"broken\.yaml:1: missing field: 'sessions' is a required property", done.stdout), (
        done.stdout
    )


@pytest.mark.parametrize(
    "name", ["fixtures/labs/contoso.yaml", "harness/corpus/catalogue.yaml", "notes/template.yaml"]
)
def test_a_yaml_file_named_on_the_command_line_is_an_invalid_trace(project: Path, name: str) -> None:
    """A file named is run as a trace whatever it holds: one that is none is reported, never dropped."""
    done = pytest_run(f"project/{name}", cwd=project.parent)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
    assert re.search(rf"{re.escape(str(project / name))}:\d+: ", done.stdout), done.stdout
    ran = mailflow("run", f"project/{name}", "--reports", "reports", cwd=project.parent)
    assert "mailflow: 1 trace file(s)" in ran.stdout
    assert ran.returncode != 0


def test_the_repository_root_collects_only_the_corpus_as_traces() -> None:
    """`pytest .` here: every YAML file it collects is a corpus trace, and every corpus trace is collected."""
    done = pytest_run("--collect-only", "-q", ".", cwd=ROOT)
    files = {
        line.split("::")[0] for line in _collected(done) if line.split("::")[0].endswith((".yaml", ".yml"))
    }
    corpus = {str(p.relative_to(ROOT)) for p in (ROOT / "traces").rglob("*.y*ml")}
    assert files == corpus


def test_check_tells_a_lab_from_a_trace_by_its_content(project: Path) -> None:
    """A lab file outside any `labs` folder is checked as a lab; a broken one is reported as a broken lab."""
    write(project / "broken-lab.yaml", LAB_TEXT.replace("organization:", "organisation:", 1))
    done = mailflow("check", "project", cwd=project.parent)
    lines = done.stdout.splitlines()
    assert "ok project/lab.yml" in lines
    assert "ok project/fixtures/labs/contoso.yaml" in lines
    assert "ok project/recorded/session.yaml" in lines
    assert "skipped project/harness/corpus/catalogue.yaml: neither a trace nor a lab file" in lines
    assert any(
        re.search(r"broken-lab\.yaml:\d+: organisation: unknown field 'organisation'", line) for line in lines
    ), done.stdout
    assert any(re.search(r"traces/broken\.yaml:1: missing field", line) for line in lines), done.stdout
    assert any(re.search(r"notes/template\.yaml:\d+: YAML syntax error", line) for line in lines), done.stdout
    assert not any(".hidden" in line or ".draft" in line for line in lines)
    assert done.returncode != 0
