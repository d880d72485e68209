"""Allure counts each trace once: a `mailflow run` of traces that claim several catalogue IDs writes one
result per trace, named by its trace id, in one behaviour and one suite, with the IDs as tags; the HTML
report's tree counts each flow's traces once."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAILFLOW = Path(sys.executable).parent / "mailflow"
TRACES = {
    "inbound/local-mailbox-on-gateway": ["IN-3", "IN-4", "IN-5", "IN-6a", "IN-6b", "C-CAT"],
    "relay/relay-denied-by-default": ["RELAY-1", "IN-3", "IN-7b"],
}
# What Allure's Behaviors and Suites trees group by: a test sits once under each value of each label.
BEHAVIOURS = ("epic", "feature", "story")
SUITES = ("parentSuite", "suite", "subSuite")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reports")
    files = [str(ROOT / "traces" / f"{trace}.yaml") for trace in TRACES]
    run = subprocess.run(
        [str(MAILFLOW), "run", "--reports", str(folder), *files],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return folder


def test_a_trace_with_several_ids_is_one_allure_result_named_by_its_id(reports: Path) -> None:
    results = [
        json.loads(path.read_text(encoding="utf-8"))
        for path in (reports / "allure-results").glob("*-result.json")
    ]
    assert sorted(r["name"] for r in results) == sorted(TRACES)
    for result in results:
        labels: dict[str, list[str]] = {}
        for label in result["labels"]:
            labels.setdefault(label["name"], []).append(label["value"])
        trace = result["name"]
        # One leaf in each tree: the overview counts the trace once, not once per claimed ID.
        for tree in (BEHAVIOURS, SUITES):
            assert all(len(labels.get(name, [])) <= 1 for name in tree), (trace, labels)
        assert labels["epic"] and labels["suite"]
        assert set(TRACES[trace]) <= set(labels["tag"]), labels["tag"]
        assert labels["trace"] == [trace]
        # The title, which many traces share, is still there to read.
        title = next(
            line.split(":", 1)[1].strip()
            for line in (ROOT / "traces" / f"{trace}.yaml").read_text(encoding="utf-8").splitlines()
            if line.startswith("title:")
        )
        assert result["description"].startswith(title)


def test_the_html_report_tree_counts_each_trace_once(reports: Path) -> None:
    report = reports / "allure-report"
    made = subprocess.run(
        [str(ROOT / "scripts" / "allure_report.sh"), str(reports / "allure-results"), str(report)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    if "allure HTML report skipped" in made.stdout:
        pytest.skip(made.stdout.strip())
    tree = _widget(report / "index.html", "widgets/default/tree.json")
    groups = tree["groupsById"]
    # The tree is epic (flow) > feature (folder): no level per catalogue ID, so a flow's count is its
    # number of traces (here one run, one target), not the sum of their IDs.
    epics = {groups[g]["name"]: groups[g] for g in tree["root"]["groups"]}
    assert {name: group["statistic"]["total"] for name, group in epics.items()} == {"Inbound": 1, "Relay": 1}
    leaves = [leaf for g in groups.values() for leaf in g.get("leaves") or ()]
    assert len(leaves) == len(set(leaves)) == len(TRACES)


def _widget(page: Path, name: str) -> Any:
    """A data file the single-file Allure 3 report carries inline, base64-encoded."""
    found = re.search(rf'"{re.escape(name)}","([A-Za-z0-9+/=]+)"', page.read_text(encoding="utf-8"))
    assert found, f"{name} not found in {page}"
    return json.loads(base64.b64decode(found[1]))
