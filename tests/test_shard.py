"""Runs split across machines: `mailflow run --shard K/N` (and pytest's `--mailflow-shard K/N`) runs shard
K's part of the selected traces, the same part on every machine whatever the order the files are given in,
balanced by count or by an earlier run's durations; `mailflow report merge` puts the shards' reports
together as one run's, and refuses an incomplete or inconsistent set; the GitHub Actions example does it
all in bash as CI would."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.exit_codes import ExitCode
from harness.run import shard
from tests.mailflow_cli import ROOT, mailflow

RELAY = sorted((ROOT / "traces" / "relay").glob("*.yaml"))[:9]
IDS = sorted(f"relay/{path.stem}" for path in RELAY)  # the corpus names each trace by folder/stem
SHARDED_CI = ROOT / "docs" / "ci" / "github-actions-sharded.yml"
BIN = Path(sys.executable).parent
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)


def _base_for_workers() -> str:
    """A lab base for a `mailflow run -n 2` of this test, whose workers take two /16s of their own: clear of
    the blocks this test session's own workers use."""
    base = os.environ.get("MAILFLOW_LAB_BASE") or "127.101.0.0"
    second = int(base.split(".")[1])
    return f"127.{(second + 20 + 2 * WORKER) % 200 + 20}.0.0"


def _ran(reports: Path) -> list[str]:
    return [o["trace"] for o in json.loads((reports / "last-run.json").read_text())]


def _result_files_by_trace(allure: Path) -> Counter[str]:
    """How many Allure results each trace has, by the trace label the plugin gives each test."""
    counts: Counter[str] = Counter()
    for path in allure.glob("*-result.json"):
        labels = {label["name"]: label["value"] for label in json.loads(path.read_text())["labels"]}
        counts[labels["trace"]] += 1
    return counts


# --- the split: pure functions -----------------------------------------------------------------------


def _traces(count: int) -> dict[str, str]:
    return {f"traces/t{n:03}.yaml::t{n:03}": f"flow/t{n:03}" for n in range(count)}


@settings(max_examples=200, deadline=None)
@given(count=st.integers(0, 60), shards=st.integers(1, 12), seed=st.integers(0, 2**32))
def test_the_split_is_a_partition_that_does_not_depend_on_the_order_given(
    count: int, shards: int, seed: int
) -> None:
    traces = _traces(count)
    items = list(traces.items())
    random.Random(seed).shuffle(items)
    parts = shard.split(traces, shards)
    assert shard.split(dict(items), shards) == parts
    assert sorted(name for part in parts for name in part) == sorted(traces)


@settings(max_examples=200, deadline=None)
@given(count=st.integers(0, 60), shards=st.integers(1, 12))
def test_by_count_the_shards_differ_by_at_most_one_trace(count: int, shards: int) -> None:
    sizes = [len(part) for part in shard.split(_traces(count), shards)]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=300, deadline=None)
@given(
    seconds=st.lists(st.floats(0, 120, allow_nan=False), min_size=1, max_size=60),
    shards=st.integers(1, 12),
    seed=st.integers(0, 2**32),
)
def test_by_durations_the_longest_shard_is_within_the_longest_trace_of_the_ideal(
    seconds: list[float], shards: int, seed: int
) -> None:
    traces = _traces(len(seconds))
    durations = dict(zip(traces.values(), seconds, strict=True))
    parts = shard.split(traces, shards, durations)
    totals = [sum(durations[traces[name]] for name in part) for part in parts]
    ideal = sum(seconds) / shards
    assert max(totals) <= ideal + max(seconds) + 1e-9
    items = list(traces.items())
    random.Random(seed).shuffle(items)
    assert shard.split(dict(items), shards, dict(reversed(durations.items()))) == parts


def test_by_durations_beats_by_count_when_one_trace_is_long() -> None:
    """One long trace and many short ones: by count the long one's shard also takes its share of the
    short ones; by durations it runs alone."""
    traces = _traces(10)
    durations = {trace: 1.0 for trace in traces.values()} | {"flow/t000": 9.0}
    by_time = shard.split(traces, 2, durations)
    assert [len(part) for part in by_time] == [1, 9]
    assert max(sum(durations[traces[n]] for n in part) for part in by_time) == 9.0
    by_count = shard.split(traces, 2)
    assert max(sum(durations[traces[n]] for n in part) for part in by_count) == 13.0


def test_a_trace_the_durations_do_not_know_counts_at_their_median() -> None:
    traces = {"a": "x/a", "b": "x/b", "c": "x/c", "new": "x/new"}
    work = shard.weights(traces, {"x/a": 10.0, "x/b": 1.0, "x/c": 2.0, "x/gone": 7.0})
    assert work == {"a": 10.0, "b": 1.0, "c": 2.0, "new": 4.5}
    _, record = shard.split_of(traces, shard.Shard(1, 2), {"x/a": 10.0, "x/b": 1.0, "x/c": 2.0})
    assert record.balanced_by == "durations" and record.median == 2.0


def test_traces_that_took_no_time_are_spread_by_count() -> None:
    traces = _traces(6)
    parts = shard.split(traces, 3, {trace: 0.0 for trace in traces.values()})
    assert [len(part) for part in parts] == [2, 2, 2]


@pytest.mark.parametrize(("text", "index", "count"), [("1/1", 1, 1), ("2/3", 2, 3), (" 3 / 3 ", 3, 3)])
def test_k_of_n(text: str, index: int, count: int) -> None:
    assert shard.parse(text) == shard.Shard(index, count)


@pytest.mark.parametrize("text", ["0/3", "4/3", "x", "3", "1/0", "-1/3", "1/3/4", ""])
def test_anything_else_is_refused_with_the_form(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape("K/N")):
        shard.parse(text)


def test_a_trace_run_on_several_targets_weighs_its_time_on_all(tmp_path: Path) -> None:
    results = tmp_path / "last-run.json"
    results.write_text(
        json.dumps(
            [{"trace": "a", "duration": 1.5}, {"trace": "a", "duration": 2}, {"trace": "b", "duration": 0}]
        )
    )
    assert shard.read_durations(results) == {"a": 3.5, "b": 0.0}


# --- mailflow run --shard, through the real command ---------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The 9 relay traces in 3 shards, each given the files in another order, as three CI machines might
    find them; then the shards' reports merged."""
    folder = tmp_path_factory.mktemp("shards")
    orders = [RELAY, list(reversed(RELAY)), random.Random(7).sample(RELAY, len(RELAY))]
    done = {}
    for k, files in enumerate(orders, 1):
        done[k] = mailflow(
            "run", *map(str, files), "--shard", f"{k}/3", "--reports", str(folder / f"shard-{k}"), cwd=ROOT
        )
    merged = mailflow(
        "report",
        "merge",
        *(str(folder / f"shard-{k}") for k in (1, 2, 3)),
        "-o",
        str(folder / "merged"),
        cwd=ROOT,
    )
    return {"folder": folder, "done": done, "merged": merged}


def test_three_shards_run_each_trace_exactly_once(shards: dict[str, Any]) -> None:
    ran: list[str] = []
    for k, done in shards["done"].items():
        assert done.returncode == ExitCode.OK, done.stdout + done.stderr
        part = _ran(shards["folder"] / f"shard-{k}")
        assert len(part) == 3, part  # 9 traces by count: 3 each
        # Which shard it was and how many of the whole it ran, under the totals.
        assert f"shard {k}/3: ran 3 of the 9 trace(s) selected (balanced by count)" in done.stdout
        assert "3 traces: 3 passed, 0 failed" in done.stdout
        ran += part
    assert sorted(ran) == IDS


def test_the_merged_reports_hold_every_trace_once(shards: dict[str, Any]) -> None:
    merged = shards["merged"]
    assert merged.returncode == ExitCode.OK, merged.stdout + merged.stderr
    out = shards["folder"] / "merged"
    assert sorted(_ran(out)) == IDS
    assert _result_files_by_trace(out / "allure-results") == Counter(IDS)
    # Every shard's attachments came along: each result's attachments are files of the merged folder.
    for path in (out / "allure-results").glob("*-result.json"):
        for step in [json.loads(path.read_text()), *json.loads(path.read_text()).get("steps", [])]:
            for attachment in step.get("attachments", []):
                assert (out / "allure-results" / attachment["source"]).is_file()
    junit = ElementTree.parse(out / "junit.xml").getroot()
    assert sorted(case.get("name", "") for case in junit.iter("testcase")) == IDS
    assert (junit.get("tests"), junit.get("failures"), junit.get("errors")) == ("9", "0", "0")
    assert "9 traces: 9 passed, 0 failed" in merged.stdout
    assert "merged 3 run(s) (shards 1-3 of 3, 9 trace(s) selected)" in merged.stdout


def test_coverage_reads_the_merged_run(shards: dict[str, Any]) -> None:
    results = shards["folder"] / "merged" / "last-run.json"
    done = mailflow("coverage", *map(str, RELAY), "--results", str(results), "--json", cwd=ROOT)
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    coverage = json.loads(done.stdout)
    assert coverage["targets"] == ["reference"]
    # Every trace's outcome, from whichever shard ran it, under each ID it claims.
    seen: dict[str, str] = {}
    for entry in coverage["ids"]:
        seen |= entry["targets"]["reference"]["outcomes"]
    assert seen == dict.fromkeys(IDS, "passed")


def test_shards_balanced_by_the_merged_durations_still_run_each_trace_once(
    shards: dict[str, Any], tmp_path: Path
) -> None:
    durations = shards["folder"] / "merged" / "last-run.json"
    ran: list[str] = []
    for k in (1, 2, 3):
        # One shard on two pytest-xdist workers: its workers split alike and the controller records it.
        workers = ["-n", "2"] if k == 2 else []
        env = {"MAILFLOW_LAB_BASE": _base_for_workers()} if workers else None
        done = mailflow(
            "run",
            *map(str, RELAY),
            "--shard",
            f"{k}/3",
            "--durations",
            str(durations),
            "--reports",
            str(tmp_path / str(k)),
            *workers,
            cwd=ROOT,
            env=env,
        )
        assert done.returncode == ExitCode.OK, done.stdout + done.stderr
        assert f"balanced by the durations in {durations}" in done.stdout
        record = json.loads((tmp_path / str(k) / "last-run.shard.json").read_text())
        assert record["balanced_by"] == "durations" and record["unknown"] == 0
        ran += _ran(tmp_path / str(k))
    assert sorted(ran) == IDS
    merged = mailflow(
        "report", "merge", *(str(tmp_path / str(k)) for k in (1, 2, 3)), "-o", str(tmp_path / "m"), cwd=ROOT
    )
    assert merged.returncode == ExitCode.OK, merged.stdout + merged.stderr


def test_by_default_a_shard_is_balanced_by_the_last_run_in_its_reports(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "last-run.json").write_text(
        json.dumps([{"trace": trace, "duration": 0.5} for trace in IDS[:4]])
    )
    done = mailflow("run", *map(str, RELAY[:4]), "--shard", "1/2", "--reports", str(reports), cwd=ROOT)
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    assert f"balanced by the durations in {reports / 'last-run.json'}" in done.stdout
    # And the run replaced them with its own.
    assert len(_ran(reports)) == 2


def test_a_shard_with_nothing_to_run_passes_and_says_so(tmp_path: Path) -> None:
    done = mailflow("run", *map(str, RELAY[:2]), "--shard", "3/3", "--reports", str(tmp_path), cwd=ROOT)
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    assert "shard 3/3: nothing to run: the 2 trace(s) selected all went to other shards" in done.stdout
    assert _ran(tmp_path) == []
    assert "none matched" not in done.stdout


def test_a_shard_of_a_run_that_selected_nothing_is_still_a_mistake(tmp_path: Path) -> None:
    done = mailflow(
        "run",
        *map(str, RELAY[:2]),
        "--shard",
        "1/3",
        "-k",
        "no-such-trace",
        "--reports",
        str(tmp_path),
        cwd=ROOT,
    )
    assert done.returncode == ExitCode.INPUT, done.stdout + done.stderr
    assert "no trace was run (none matched)" in done.stdout


def test_the_pytest_option_splits_alike_and_an_empty_shard_is_not_pytest_s_exit_5(tmp_path: Path) -> None:
    def pytest_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "pytest"), "-p", "no:cacheprovider", "-q", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )

    results = tmp_path / "results.json"
    done = pytest_run(*map(str, RELAY), "--mailflow-shard", "2/3", "--mailflow-results", str(results))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed, 6 deselected" in done.stdout
    ran = [o["trace"] for o in json.loads(results.read_text())]
    assert ran == json.loads((tmp_path / "results.shard.json").read_text())["traces"]
    assert len(ran) == 3
    empty = pytest_run(*map(str, RELAY[:1]), "--mailflow-shard", "2/2")
    assert empty.returncode == 0, empty.stdout + empty.stderr
    nothing = pytest_run(*map(str, RELAY[:1]), "--mailflow-shard", "1/2", "-k", "no-such-trace")
    assert nothing.returncode == pytest.ExitCode.NO_TESTS_COLLECTED
    wrong = pytest_run(*map(str, RELAY[:1]), "--mailflow-shard", "2/1")
    assert wrong.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--mailflow-shard: 2/1" in wrong.stderr and "K/N" in wrong.stderr


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0/3", "4/3", "x", "1/0", "2"])
def test_a_wrong_shard_is_refused_with_the_option_and_the_form(value: str, tmp_path: Path) -> None:
    done = mailflow("run", str(RELAY[0]), f"--shard={value}", "--reports", str(tmp_path), cwd=ROOT)
    assert done.returncode == ExitCode.INPUT
    assert "Error: --shard: " in done.stderr and "K/N" in done.stderr and "1 <= K <= N" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "last-run.json").exists()  # refused before anything ran


@pytest.mark.parametrize(
    ("content", "said"),
    [("{", "is not valid JSON"), ('{"trace": "a"}', "not a list"), ('[{"trace": "a"}]', "outcome 1 has no")],
)
def test_a_durations_file_that_is_not_a_run_s_results_is_refused(
    content: str, said: str, tmp_path: Path
) -> None:
    durations = tmp_path / "durations.json"
    durations.write_text(content)
    done = mailflow("run", str(RELAY[0]), "--shard", "1/2", "--durations", str(durations), cwd=tmp_path)
    assert done.returncode == ExitCode.INPUT
    assert f"Error: --durations: {durations}" in done.stderr and said in done.stderr
    assert "last-run.json" in done.stderr and "Traceback" not in done.stderr


def test_durations_without_a_shard_are_refused(tmp_path: Path) -> None:
    done = mailflow("run", str(RELAY[0]), "--durations", str(tmp_path / "x.json"), cwd=tmp_path)
    assert done.returncode == ExitCode.INPUT
    assert "--durations: it balances shards: give --shard K/N too" in done.stderr


def test_a_missing_durations_file_is_refused(tmp_path: Path) -> None:
    done = mailflow(
        "run", str(RELAY[0]), "--shard", "1/2", "--durations", str(tmp_path / "x.json"), cwd=tmp_path
    )
    assert done.returncode == ExitCode.INPUT
    assert f"{tmp_path / 'x.json'} does not exist" in done.stderr


@pytest.mark.parametrize(
    ("chosen", "said"),
    [
        ([1, 3], "shard(s) 2 of 3 missing"),
        ([1, 1, 2, 3], "a folder is given twice"),
        ([1, "other"], "are shards of different splits"),
        ([1, "plain"], "not a shard, but"),
        (["plain", "plain-again"], "is in both"),
        ([1, "nothing"], "no last-run.json or matrix/*.json"),
        ([1, "missing"], "no such folder"),
    ],
)
def test_the_merge_refuses_an_incomplete_or_inconsistent_set(
    shards: dict[str, Any], tmp_path: Path, chosen: list[object], said: str
) -> None:
    folder = shards["folder"]
    other = tmp_path / "other"
    shutil.copytree(folder / "shard-2", other)
    record = json.loads((other / "last-run.shard.json").read_text())
    (other / "last-run.shard.json").write_text(json.dumps(record | {"shards": 4, "shard": 2}))
    plain = tmp_path / "plain"
    shutil.copytree(folder / "shard-1", plain)
    (plain / "last-run.shard.json").unlink()
    shutil.copytree(plain, tmp_path / "plain-again")
    (tmp_path / "nothing").mkdir()
    names = {"other": other, "plain": plain}
    paths = [
        str(names.get(str(c), tmp_path / str(c)) if isinstance(c, str) else folder / f"shard-{c}")
        for c in chosen
    ]
    output = tmp_path / "out"
    done = mailflow("report", "merge", *paths, "-o", str(output), cwd=ROOT)
    assert done.returncode == ExitCode.INPUT, done.stdout + done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr
    assert not output.exists()  # refused before anything was written


# --- the GitHub Actions example -----------------------------------------------------------------------


def test_the_sharded_workflow_is_valid_against_its_published_schema() -> None:
    done = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(SHARDED_CI)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _steps(job: str) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = yaml.safe_load(SHARDED_CI.read_text())["jobs"][job]["steps"]
    return steps


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # As GitHub Actions runs a step: bash, stopping at the first command that fails.
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MAILFLOW_"))}
    environment |= {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"} | env
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_sharded_workflow_s_steps_run_every_trace_once_and_merge_them(tmp_path: Path) -> None:
    """The shard step of each matrix entry, run in bash as the runner would (with the durations restored
    from the cache), then the upload and download simulated by copying the paths the workflow lists, and
    the merge step."""
    workflow = yaml.safe_load(SHARDED_CI.read_text())
    count = int(workflow["env"]["SHARDS"])
    assert workflow["jobs"]["shard"]["strategy"]["matrix"]["shard"] == list(range(1, count + 1))
    (tmp_path / "traces").mkdir()
    for path in RELAY[: count + 1]:
        shutil.copy(path, tmp_path / "traces" / path.name)
    (tmp_path / "durations").mkdir()
    (tmp_path / "durations" / "last-run.json").write_text(
        json.dumps([{"trace": trace, "duration": 1.0 + n} for n, trace in enumerate(IDS[:3])])
    )
    (gate,) = [s for s in _steps("shard") if "mailflow run" in str(s.get("run", ""))]
    (upload,) = [s for s in _steps("shard") if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    (merge,) = [s for s in _steps("report") if "mailflow report merge" in str(s.get("run", ""))]
    (download,) = [
        s for s in _steps("report") if str(s.get("uses", "")).startswith("actions/download-artifact")
    ]
    for k in range(1, count + 1):
        machine = tmp_path / f"machine-{k}"
        shutil.copytree(tmp_path / "traces", machine / "traces")
        shutil.copytree(tmp_path / "durations", machine / "durations")
        env = {"SHARDS": str(count), "MAILFLOW_LAB_BASE": _base_for_workers()}
        done = _bash(gate["run"].replace("${{ matrix.shard }}", str(k)), machine, env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(rf"shard {k}/{count}: ran [12] of the {count + 1} trace\(s\) selected", done.stdout)
        assert "balanced by the durations in durations/last-run.json" in done.stdout
        # The artifact: the listed paths, below their common folder (reports/), as upload-artifact keeps them.
        artifact = (
            tmp_path
            / download["with"]["path"]
            / upload["with"]["name"].replace("${{ matrix.shard }}", str(k))
        )
        for listed in upload["with"]["path"].split():
            source = machine / listed
            assert source.exists(), f"the workflow uploads {listed}, which the shard did not write"
            target = artifact / Path(listed).relative_to("reports")
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target)
    done = _bash(merge["run"], tmp_path, {})
    assert done.returncode == 0, done.stdout + done.stderr
    merged = sorted(_ran(tmp_path / "reports"))
    assert merged == sorted(f"relay/{p.stem}" for p in RELAY[: count + 1])
    assert _result_files_by_trace(tmp_path / "reports" / "allure-results") == Counter(merged)
