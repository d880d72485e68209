"""Allure counts each trace once: a `mailflow run` of traces that claim several catalogue IDs writes one
result per trace, named by its trace id, in one behaviour and one suite, with the IDs as tags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAILFLOW = Path(sys.executable).parent / "mailflow"
TRACES = {
    "inbound/local-mailbox-on-gateway": ["IN-3", "IN-4", "IN-5", "IN-6a", "IN-6b", "C-CAT"],
    "relay/relay-denied-by-default": ["RELAY-1", "IN-3", "IN-7b"],
}
# What Allure's Behaviors and Suites trees group by: a test sits once under each value of each label.
BEHAVIOURS = ("epic", "feature", "story")
SUITES = ("parentSuite", "suite", "subSuite")


def test_a_trace_with_several_ids_is_one_allure_result_named_by_its_id(tmp_path: Path) -> None:
    files = [str(ROOT / "traces" / f"{trace}.yaml") for trace in TRACES]
    run = subprocess.run(
        [str(MAILFLOW), "run", "--reports", str(tmp_path), *files],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = [
        json.loads(path.read_text(encoding="utf-8"))
        for path in (tmp_path / "allure-results").glob("*-result.json")
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
