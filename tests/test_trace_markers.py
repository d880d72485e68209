"""Selecting traces the pytest way: `-m` by flow (`relay`) or catalogue ID (`RELAY_1`), accepted by
`--strict-markers`, and `-k` by the ID as a trace spells it (`RELAY-7`). Each selection, made by a real
`pytest --collect-only` over the corpus, is checked against what the trace files and the catalogue say,
read here on their own."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_CATALOGUE_FILE = ROOT / "harness" / "corpus" / "catalogue.yaml"
CATALOGUE: dict[str, dict[str, str]] = yaml.safe_load(_CATALOGUE_FILE.read_text())["ids"]
SPECS: dict[str, list[str]] = {
    str(path.relative_to(ROOT)): yaml.safe_load(path.read_text())["spec"]
    for path in sorted((ROOT / "traces").rglob("*.yaml"))
}


def _flows(spec: list[str]) -> set[str]:
    return {CATALOGUE[spec_id]["flow"] for spec_id in spec}


SELECTIONS: dict[str, tuple[list[str], Callable[[list[str]], bool]]] = {
    "flow": (["-m", "relay"], lambda spec: "Relay" in _flows(spec)),
    "ids": (["-m", "RELAY_1 or IN_3"], lambda spec: "RELAY-1" in spec or "IN-3" in spec),
    "id-with-a-letter": (["-m", "IN_6a"], lambda spec: "IN-6a" in spec),
    "flows-combined": (
        ["-m", "gateway and not outbound"],
        lambda spec: "Gateway" in _flows(spec) and "Outbound" not in _flows(spec),
    ),
    "keyword": (["-k", "RELAY-7"], lambda spec: "RELAY-7" in spec),
}


def _collect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--strict-markers", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("selection", list(SELECTIONS))
def test_a_selection_collects_exactly_the_traces_whose_spec_says_so(selection: str) -> None:
    args, wanted = SELECTIONS[selection]
    done = _collect("--collect-only", "-q", "traces", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    collected = sorted(line.split("::")[0] for line in done.stdout.splitlines() if "::" in line)
    expected = sorted(path for path, spec in SPECS.items() if wanted(spec))
    assert expected, "the selection must pick some traces to mean anything"
    assert len(expected) < len(SPECS)
    assert collected == expected


def test_every_flow_and_id_marker_is_registered() -> None:
    done = _collect("--markers")
    assert done.returncode == 0, done.stderr
    registered = {line.split(":")[0].removeprefix("@pytest.mark.") for line in done.stdout.splitlines()}
    flows = {entry["flow"].lower() for entry in CATALOGUE.values()}
    assert {"inbound", "outbound", "gateway", "relay", "protocol", "core"} <= flows
    assert flows | {spec_id.replace("-", "_") for spec_id in CATALOGUE} <= registered


def test_mailflow_run_selects_with_m_and_k_as_pytest_does(tmp_path: Path) -> None:
    """`mailflow run -m` and `-k` pass the selection to the same collection: the run's last-run.json
    holds exactly the traces whose spec says so."""
    reports = tmp_path / "reports"
    mailflow = str(Path(sys.executable).with_name("mailflow"))
    selection = ["-m", "RELAY_5", "-k", "not subnet"]
    done = subprocess.run(
        [mailflow, "run", "traces/relay", *selection, "--reports", str(reports)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ran = sorted(outcome["trace"] for outcome in json.loads((reports / "last-run.json").read_text()))
    expected = sorted(
        yaml.safe_load((ROOT / path).read_text())["id"]
        for path, spec in SPECS.items()
        if path.startswith("traces/relay/") and "RELAY-5" in spec and "subnet" not in path
    )
    assert expected and ran == expected
