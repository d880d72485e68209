"""The CI files users copy (docs/ci/): valid against the schemas GitHub Actions and GitLab CI publish
(shipped in check-jsonschema, read offline), publishing the reports where `mailflow run` writes them, and
their gate commands, run for real in bash on a passing and on a failing trace, exit as mailflow does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.sourcetext import replace_once, write

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GITHUB = ROOT / "docs" / "ci" / "github-actions.yml"
GITLAB = ROOT / "docs" / "ci" / "gitlab-ci.yml"
GOOD = ROOT / "traces" / "inbound" / "local-mailbox-on-gateway.yaml"
REPORTS = ["reports/allure-report/", "reports/allure-results/", "reports/junit.xml"]


def _validate(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("schema", "path"), [("vendor.github-workflows", GITHUB), ("vendor.gitlab-ci", GITLAB)]
)
def test_the_ci_file_is_valid_against_its_published_schema(schema: str, path: Path) -> None:
    done = _validate(schema, path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_refuses_a_broken_file(tmp_path: Path) -> None:
    """The validation above is worth something: a workflow whose job says where it runs nowhere fails it."""
    broken = write(tmp_path / "workflow.yml", replace_once(GITHUB.read_text(), "runs-on: ubuntu-latest", ""))
    assert _validate("vendor.github-workflows", broken).returncode != 0


def _github_steps() -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = yaml.safe_load(GITHUB.read_text())["jobs"]["conformance"]["steps"]
    return steps


def _gitlab_job() -> dict[str, Any]:
    job: dict[str, Any] = yaml.safe_load(GITLAB.read_text())["conformance"]
    return job


def test_both_keep_the_reports_whatever_the_result() -> None:
    (upload,) = [s for s in _github_steps() if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert upload["if"] == "${{ !cancelled() }}"
    assert upload["with"]["path"].split() == REPORTS
    (junit,) = [s for s in _github_steps() if "junit" in str(s.get("uses", ""))]
    assert junit["with"]["report_paths"] == "reports/junit.xml" and junit["if"] == "${{ !cancelled() }}"
    artifacts = _gitlab_job()["artifacts"]
    assert artifacts["when"] == "always"
    assert artifacts["paths"] == REPORTS
    assert artifacts["reports"]["junit"] == "reports/junit.xml"


WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout as the CI jobs see it: traces/, the scripts, and mailflow installed in .venv/."""
    write(tmp_path / "traces" / "good.yaml", GOOD.read_text())
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    return tmp_path


def _fail(checkout: Path) -> None:
    trace = checkout / "traces" / "good.yaml"
    trace.write_text(
        replace_once(trace.read_text(), "server: EX1\n      sender", "server: EX2\n      sender")
    )


def _bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # As both CI systems run a job's commands: bash, stopping at the first command that fails.
    # The job's `mailflow run -n auto` starts workers of its own, which would take this run's worker
    # blocks (127.101 and up): they get a block of this test's, one pair of /16s per worker here.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MAILFLOW_"))}
    env |= {
        "PATH": f"{cwd / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "COLUMNS": "200",
        "MAILFLOW_LAB_BASE": f"127.{90 + 2 * (WORKER % 5)}.0.0",
    }
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_github_gate_fails_the_job_with_mailflow_s_exit_code(checkout: Path) -> None:
    _fail(checkout)
    (gate,) = [s for s in _github_steps() if "mailflow run" in str(s.get("run", ""))]
    done = _bash(gate["run"], checkout)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "::error::a trace failed" in done.stdout
    assert list((checkout / "reports" / "allure-results").glob("*-result.json"))


@pytest.mark.parametrize("failing", [False, True], ids=["passing", "failing"])
def test_the_gitlab_job_exits_as_mailflow_does_after_rendering_the_report(
    checkout: Path, failing: bool
) -> None:
    if failing:
        _fail(checkout)
    done = _bash("\n".join(_gitlab_job()["script"]), checkout)
    assert done.returncode == (1 if failing else 0), done.stdout + done.stderr
    # The report step ran (rendered it, or said why not: no Node.js 20 here, no tools/allure in this copy)
    # and did not change the status.
    said = done.stdout + done.stderr
    rendered = (checkout / "reports" / "allure-report" / "index.html").is_file()
    assert rendered or "allure HTML report skipped" in said or "HTML report not rendered" in said, said
