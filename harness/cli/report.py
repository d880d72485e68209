"""`mailflow report merge`: the results of several runs of one corpus (the shards of `mailflow run
--shard K/N`, each on its own CI machine) made one run's results, as if a single machine had run them.

Each run's Allure results are plain files named by uuid, so the merge copies them into one folder (the
HTML report is rendered from it once, by scripts/allure_report.sh). Its `last-run.json` (and, for a
matrix, each `matrix/<target>.json`) is concatenated, for `mailflow coverage --results` and the summary;
its `junit.xml` test suites go in one file. Everything is checked before anything is written, so a merge
refused leaves the output folder as it was: a folder that is not a run's reports, a shard missing or given
twice, shards split differently, a trace in two runs, two different files of one name.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from harness.exit_codes import InputError
from harness.reports import summary
from harness.run import shard

RESULTS = "last-run.json"
ALLURE = "allure-results"
JUNIT = "junit.xml"
_COUNTS = ("tests", "failures", "errors", "skipped")


def read_results(path: Path) -> list[dict[str, Any]]:
    """A run's JSON results (`last-run.json`): a list of trace outcomes; InputError naming the file."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a mailflow run's JSON results ({exc})") from exc
    if not isinstance(loaded, list) or not all(
        isinstance(o, dict) and {"trace", "target", "spec", "outcome"} <= o.keys() for o in loaded
    ):
        raise InputError(f"{path}: not a mailflow run's JSON results (a list of trace outcomes)")
    return loaded


@dataclass
class Merged:
    """What the merge will write, all read and checked."""

    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # relative path → outcomes
    allure: dict[str, Path] = field(default_factory=dict)  # file name → the file to copy
    junit: list[ElementTree.Element] = field(default_factory=list)  # the runs' <testsuite> elements
    shards: str = ""  # what the shard records say, for the last line


def _results_files(folder: Path) -> list[str]:
    """The results files of a run's reports folder, relative to it: last-run.json, matrix/<target>.json."""
    found = [RESULTS] if (folder / RESULTS).is_file() else []
    matrix = folder / "matrix"
    if matrix.is_dir():
        found += sorted(
            f"matrix/{p.name}" for p in matrix.glob("*.json") if not p.name.endswith(".shard.json")
        )
    return found


def _check_shards(name: str, folders: Sequence[Path]) -> str:
    """The shard records beside one results file in each folder: none (runs of their own), or every
    shard of one split exactly once. What they say, in a few words."""
    records: dict[Path, shard.Split] = {}
    for folder in folders:
        path = shard.record_path(folder / name)
        if path.is_file():
            try:
                records[folder] = shard.Split.from_json(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise InputError(f"{path}: not a shard record of mailflow run --shard ({exc})") from None
    if not records:
        return ""
    first_folder, first = next(iter(records.items()))
    unsharded = [str(f) for f in folders if f not in records]
    if unsharded:
        raise InputError(
            f"{', '.join(unsharded)}: not a shard, but {first_folder} is shard {first.shard}/{first.shards}: "
            f"give the reports folders of the shards of one run, each once"
        )
    seen: dict[int, Path] = {}
    for folder, record in records.items():
        if (record.shards, record.selected, record.durations_digest) != (
            first.shards,
            first.selected,
            first.durations_digest,
        ):
            raise InputError(
                f"{folder} and {first_folder} are shards of different splits (shard {record.shard}/"
                f"{record.shards} of {record.selected} trace(s), shard {first.shard}/{first.shards} of "
                f"{first.selected}, or balanced by other durations): run every shard on the same traces, "
                f"-k and -m, and the same --durations file"
            )
        if record.shard in seen:
            both = f"{folder} and {seen[record.shard]}"
            raise InputError(f"{both} are both shard {record.shard}/{record.shards}: give each shard once")
        seen[record.shard] = folder
    missing = [str(k) for k in range(1, first.shards + 1) if k not in seen]
    if missing:
        raise InputError(
            f"shard(s) {', '.join(missing)} of {first.shards} missing: give every shard's reports folder "
            f"(a shard that had nothing to run has one too)"
        )
    ran = sum(len(record.traces) for record in records.values())
    if ran != first.selected:
        raise InputError(
            f"the {first.shards} shards ran {ran} trace(s) between them, not the {first.selected} selected"
        )
    return f"shards 1-{first.shards} of {first.shards}, {first.selected} trace(s) selected"


def _results_names(folders: Sequence[Path]) -> list[str]:
    """The results files every folder holds (the same in each: the runs of one command)."""
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder: give the --reports folder of each run to merge")
    names = [_results_files(folder) for folder in folders]
    for folder, found in zip(folders, names, strict=True):
        if not found:
            raise InputError(
                f"{folder}: no {RESULTS} or matrix/*.json: not the --reports folder of a mailflow run"
            )
        if found != names[0]:
            raise InputError(
                f"{folder} holds {', '.join(found)} but {folders[0]} holds {', '.join(names[0])}: "
                f"merge the runs of one command"
            )
    return names[0]


def _outcomes(name: str, folders: Sequence[Path]) -> list[dict[str, Any]]:
    """One results file's outcomes from every folder, each trace on each target once."""
    where: dict[tuple[str, str], Path] = {}
    outcomes: list[dict[str, Any]] = []
    for folder in folders:
        for outcome in read_results(folder / name):
            key = (str(outcome["trace"]), str(outcome["target"]))
            if where.setdefault(key, folder) != folder:
                raise InputError(
                    f"{key[0]} on {key[1]} is in both {where[key] / name} and {folder / name}: "
                    f"a merged run holds each trace once per target"
                )
            outcomes.append(outcome)
    return sorted(outcomes, key=lambda o: (str(o["trace"]), str(o["target"])))


def _allure_files(folders: Sequence[Path]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for folder in folders:
        allure = folder / ALLURE
        for path in sorted(allure.iterdir()) if allure.is_dir() else ():
            if not path.is_file():
                continue
            other = files.setdefault(path.name, path)
            # Result files are named by uuid; a file of one name in two runs (an environment.properties)
            # is merged only when it is the same.
            if other != path and other.read_bytes() != path.read_bytes():
                raise InputError(f"{other} and {path} differ: they cannot both be {ALLURE}/{path.name}")
    return files


def _junit_suites(folders: Sequence[Path]) -> list[ElementTree.Element]:
    """Every run's JUnit test suites, when every run wrote JUnit (a matrix writes none)."""
    paths = [folder / JUNIT for folder in folders if (folder / JUNIT).is_file()]
    suites: list[ElementTree.Element] = []
    if len(paths) != len(folders):
        return suites
    for path in paths:
        try:
            root = ElementTree.parse(path).getroot()
        except (OSError, ElementTree.ParseError) as exc:
            raise InputError(f"{path}: not a JUnit XML file ({exc})") from None
        suites += [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    return suites


def collect(folders: Sequence[Path]) -> Merged:
    """Read and check every folder's results; nothing is written."""
    merged = Merged()
    said = []
    for name in _results_names(folders):
        said.append(_check_shards(name, folders))
        merged.results[name] = _outcomes(name, folders)
    merged.shards = next((s for s in said if s), "")
    merged.allure = _allure_files(folders)
    merged.junit = _junit_suites(folders)
    return merged


def write(merged: Merged, output: Path) -> list[Path]:
    """Write the merged run into `output`; the files written, for the summary's last line."""
    output.mkdir(parents=True, exist_ok=True)
    allure = output / ALLURE
    if allure.is_dir():
        for old in allure.iterdir():  # as pytest's --clean-alluredir: the folder holds this run alone
            if old.is_file():
                old.unlink()
    allure.mkdir(exist_ok=True)
    for name, path in merged.allure.items():
        shutil.copyfile(path, allure / name)
    written = [allure]
    for name, outcomes in merged.results.items():
        path = output / name
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(outcomes, indent=1), encoding="utf-8")
        partial.replace(path)
        shard.record_path(path).unlink(missing_ok=True)  # the merged run is whole
        written.append(path)
    if merged.junit:
        # The totals on the root too: some CI systems read only those.
        totals = {key: sum(int(s.get(key) or 0) for s in merged.junit) for key in _COUNTS}
        seconds = sum(float(s.get("time") or 0) for s in merged.junit)
        suites = ElementTree.Element(
            "testsuites",
            {"name": "mailflow", **{k: str(v) for k, v in totals.items()}, "time": f"{seconds:.3f}"},
        )
        suites.extend(merged.junit)
        ElementTree.ElementTree(suites).write(output / JUNIT, encoding="utf-8", xml_declaration=True)
        written.append(output / JUNIT)
    else:
        (output / JUNIT).unlink(missing_ok=True)  # an earlier run's: it would pass for this one's
    return written


@click.group(name="report")
def report_group() -> None:
    """The reports of several runs put together."""


def register(main: click.Group, epilog: str, out: Console) -> None:
    """Add `report merge` to the `mailflow` command, with app.py's console and exit codes."""

    @report_group.command(name="merge", epilog=epilog)
    @click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
    @click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(path_type=Path, file_okay=False),
        help="the folder of the merged run: allure-results/, last-run.json (or matrix/*.json), junit.xml",
    )
    def merge(folders: tuple[Path, ...], output: Path) -> None:
        """Merge the --reports FOLDERS of several runs (the shards of mailflow run --shard K/N) into one
        run's reports in OUTPUT, and print its summary. Render the HTML report from OUTPUT/allure-results
        with scripts/allure_report.sh. Exits 0 when merged (the shards' own exit codes judged the traces),
        2 if a folder is not a run's reports, a shard is missing or twice, or a trace is in two runs."""
        resolved = {folder.resolve(): folder for folder in folders}
        if len(resolved) != len(folders):
            raise InputError("a folder is given twice: give each run's reports folder once")
        if output.resolve() in resolved:
            raise InputError(f"-o {output}: the output must not be one of the folders merged")
        merged = collect(folders)
        written = write(merged, output)
        ran = merged.results.get(RESULTS) or [o for outcomes in merged.results.values() for o in outcomes]
        summary.print_summary(out, ran, details=written)
        what = f" ({merged.shards})" if merged.shards else ""
        out.print(f"merged {len(folders)} run(s){what} into {output}", markup=False, highlight=False)

    main.add_command(report_group)
