"""The `mailflow` command.

`mailflow run` is the main job: it replays the trace corpus through pytest (so the same traces run under
`pytest traces/` with identical results), shows progress while the corpus runs, writes Allure results
and a JSON summary, prints a summary table, and exits non-zero on any failure — the CI gate.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import click
import pytest
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness import cli_generate, cli_import, cli_lab, cli_record, differential, matrix, signals, targets
from harness.catalogue import catalogue, markdown
from harness.lab import config as lab_config
from harness.lab.gc import GlobalCatalogError, MockGlobalCatalog
from harness.trace import is_trace_file, load
from harness.yamlsource import SourceError

console = Console(stderr=False)
if not console.is_terminal and "COLUMNS" not in os.environ:
    # CI logs are read in wide windows: don't fold the summary into 80 columns.
    console = Console(stderr=False, width=150)
DEFAULT_REPORTS = Path("reports")


def trace_files(paths: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for raw in paths or ("traces",):
        path = Path(raw)
        if path.is_dir():
            files.extend(p for p in sorted(path.rglob("*.y*ml")) if is_trace_file(p.resolve()))
        elif path.exists():
            files.append(path)
        else:
            raise click.BadParameter(f"{raw} does not exist", param_hint="PATHS")
    return files


class ProgressPlugin:
    """Feeds pytest's per-trace reports into a rich progress bar (works with xdist: the controller
    receives every worker's reports)."""

    def __init__(self, progress: Progress, task: Any) -> None:
        self.progress = progress
        self.task = task
        self.failed = 0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            if report.failed:
                self.failed += 1
            self.progress.update(
                self.task, advance=1, description=f"{report.nodeid.rsplit('::', 1)[-1]} [{report.outcome}]"
            )


def replay_options(command: Any) -> Any:
    """The options every command that replays traces takes: where reports go, workers, a -k filter."""
    for option in reversed(
        (
            click.option(
                "--reports",
                "reports_dir",
                type=click.Path(path_type=Path),
                default=DEFAULT_REPORTS,
                show_default=True,
            ),
            click.option(
                "-n",
                "--workers",
                default="0",
                show_default=True,
                help="parallel workers (pytest-xdist), or auto",
            ),
            click.option(
                "-k", "keyword", default=None, help="only traces whose id matches this pytest -k expression"
            ),
        )
    ):
        command = option(command)
    return command


def _trace_files_or_exit(paths: tuple[str, ...]) -> list[Path]:
    files = trace_files(paths)
    if not files:
        console.print("[red]no trace files found[/red]")
        sys.exit(5)  # pytest's "no tests collected": a run of nothing is not a pass
    return files


def _targets(names: tuple[str, ...]) -> list[targets.Target]:
    try:
        return [targets.get(name) for name in names]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--target") from exc


@click.group()
def main() -> None:
    """mailflow: trace-replay and conformance test harness for mail transfer agents."""
    signals.command_started()  # SIGTERM and SIGHUP stop a command as Ctrl-C does, lab cleaned up


@main.command()
@click.argument("paths", nargs=-1)
@click.option("--target", "target_name", default="reference", show_default=True, help="server under test")
@click.option(
    "--update",
    is_flag=True,
    help="rewrite failing expect steps to what the server said (code, masked text), showing the diff",
)
@replay_options
def run(
    paths: tuple[str, ...],
    target_name: str,
    update: bool,
    reports_dir: Path,
    workers: str,
    keyword: str | None,
) -> None:
    """Replay traces (default: traces/) against a target, write Allure results, print a summary."""
    (target,) = _targets((target_name,))
    if update and target.name != "reference":
        # A real MTA's replies are what the corpus compares against Exchange, not what it expects.
        raise click.BadParameter(
            "--update rewrites traces to the reference MTA's replies only", param_hint="--update"
        )
    files = _trace_files_or_exit(paths)
    code, outcomes = _replay(
        files, target, reports_dir, workers, keyword, reports_dir / "last-run.json", update=update
    )
    print_summary(outcomes)
    for outcome in outcomes:
        if outcome.get("update"):
            console.print(outcome["update"], markup=False, highlight=False, soft_wrap=True)
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        console.print("[red]no trace was run[/red]")
    sys.exit(int(code))


def _replay(
    files: list[Path],
    target: targets.Target,
    reports_dir: Path,
    workers: str,
    keyword: str | None,
    results_file: Path,
    clean: bool = True,
    update: bool = False,
) -> tuple[int, list[dict[str, Any]]]:
    """Run the traces on one target through pytest (the plugin does the work); its exit code and the
    outcome of every trace."""
    results_file.parent.mkdir(parents=True, exist_ok=True)
    # A pytest that stops before its session finishes writes no summary: show none, not the last run's.
    results_file.unlink(missing_ok=True)
    args = [str(p) for p in files] + [
        "--mailflow-target",
        target.name,
        "--mailflow-results",
        str(results_file),
        "--alluredir",
        str(reports_dir / "allure-results"),
        *(["--clean-alluredir"] if clean else []),
        "-p",
        "no:cacheprovider",
        "-q",
        "--no-header",
        "-rN",
        "--tb=no",
        "-o",
        "console_output_style=classic",
    ]
    if update:
        args.append("--mailflow-update")
    if workers != "0":
        args += ["-n", workers]
    if keyword:
        args += ["-k", keyword]
    console.print(f"mailflow: {len(files)} trace file(s) against target [bold]{target.name}[/bold]")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=len(files))
        plugin = ProgressPlugin(progress, task)
        with open(os.devnull, "w") as quiet:
            saved = sys.stdout
            sys.stdout = quiet  # pytest's own terminal output would tear the progress bar
            try:
                code = pytest.main(args, plugins=[plugin])
            finally:
                sys.stdout = saved
    outcomes: list[dict[str, Any]] = json.loads(results_file.read_text()) if results_file.exists() else []
    return int(code), outcomes


@main.command(name="matrix")
@click.argument("paths", nargs=-1)
@click.option("--target", "target_names", multiple=True, required=True, help="a target; give several")
@replay_options
def matrix_command(
    paths: tuple[str, ...],
    target_names: tuple[str, ...],
    reports_dir: Path,
    workers: str,
    keyword: str | None,
) -> None:
    """Run the traces on each target; write the catalogue IDs by targets matrix (Markdown and HTML)."""
    chosen = _targets(target_names)
    files = _trace_files_or_exit(paths)
    runs: dict[str, list[dict[str, Any]]] = {}
    for number, target in enumerate(chosen):
        results = reports_dir / "matrix" / f"{target.name.replace(':', '-')}.json"
        # One Allure result folder for all targets: the report tells them apart by the target label.
        _, runs[target.name] = _replay(
            files, target, reports_dir, workers, keyword, results, clean=number == 0
        )
    table = matrix.build(runs)
    names = [t.name for t in chosen]
    (reports_dir / "matrix.md").write_text(matrix.to_markdown(table, names), encoding="utf-8")
    (reports_dir / "matrix.html").write_text(matrix.to_html(table, names), encoding="utf-8")
    shown = Table(title="conformance matrix")
    shown.add_column("ID")
    for name in names:
        shown.add_column(name)
    colours = {
        "pass": "green",
        "fail": "red",
        "deviation": "yellow",
        "skipped": "bright_black",
        "none": "white",
    }
    for spec_id, row in table.items():
        shown.add_row(spec_id, *(f"[{colours[row[n].status]}]{row[n].text()}[/]" for n in names))
    console.print(shown)
    console.print(f"{reports_dir / 'matrix.md'}\n{reports_dir / 'matrix.html'}")


@main.command(name="diff")
@click.argument("paths", nargs=-1)
@click.option("--target", "target_names", multiple=True, required=True, help="give exactly two targets")
def diff_command(paths: tuple[str, ...], target_names: tuple[str, ...]) -> None:
    """Replay the same traces on two targets; show where transcripts and outcomes differ, side by side.
    Exit 1 if anything differs."""
    if len(target_names) != 2:
        raise click.BadParameter("give exactly two targets", param_hint="--target")
    first, second = _targets(target_names)
    files = _trace_files_or_exit(paths)
    differing = 0
    for path in files:
        try:
            trace = load(path.resolve())
        except SourceError as exc:
            console.print(f"[red]broken trace:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            differing += 1
            continue
        for target in (first, second):
            unavailable = target.unavailable()
            missing = target.missing(trace) + ([unavailable] if unavailable else [])
            if missing:
                lacks = ", ".join(missing)
                console.print(f"[yellow]{trace.id}: skipped: {target.name} lacks {lacks}[/yellow]")
                break
        else:
            result = differential.compare(trace, first, second)
            if not result.differs:
                console.print(f"[green]{trace.id}: same[/green]")
                continue
            differing += 1
            table = Table(title=f"{trace.id}", show_lines=True)
            table.add_column("where")
            table.add_column(first.name)
            table.add_column(second.name)
            for where, left, right in result.hunks():
                table.add_row(where, escape("\n".join(left)), escape("\n".join(right)))
            console.print(table)
    console.print(f"{len(files)} trace(s), {differing} differ")
    sys.exit(1 if differing else 0)


def print_summary(outcomes: list[dict[str, Any]]) -> None:
    table = Table(title="mailflow conformance summary", show_lines=False)
    table.add_column("trace", no_wrap=True)
    for column in ("catalogue IDs", "target", "result", "time"):
        table.add_column(column)
    colours = {
        "passed": "green",
        "failed": "red",
        "broken": "magenta",
        "skipped": "bright_black",
        "deviation": "yellow",
    }
    counts: dict[str, int] = defaultdict(int)
    for outcome in sorted(outcomes, key=lambda o: str(o["trace"])):
        counts[outcome["outcome"]] += 1
        # A pass that met known deviations of the target is shown as such (it still counts as passed).
        shown = (
            "deviation"
            if outcome["outcome"] == "passed" and outcome.get("deviations")
            else outcome["outcome"]
        )
        colour = colours.get(shown, "magenta")
        table.add_row(
            outcome["trace"],
            " ".join(outcome["spec"]),
            outcome["target"],
            f"[{colour}]{shown}[/{colour}]",
            f"{outcome['duration']:.2f}s",
        )
    console.print(table)
    for outcome in outcomes:
        if outcome["outcome"] == "failed" and outcome.get("message"):
            console.print(f"[red]✗ {outcome['trace']}[/red] ({outcome['path']})")
            console.print(outcome["message"], markup=False, highlight=False, soft_wrap=True)
    deviated = sum(1 for o in outcomes if o["outcome"] == "passed" and o.get("deviations"))
    console.print(
        f"{sum(counts.values())} traces: {counts['passed']} passed"
        + (f" ({deviated} with known deviations)" if deviated else "")
        + f", {counts['failed']} failed, {counts['skipped']} skipped"
        + (f", {counts['broken']} broken (the lab or the harness failed)" if counts["broken"] else "")
    )


@main.command()
@click.argument("paths", nargs=-1)
@click.option(
    "--results", type=click.Path(path_type=Path), default=DEFAULT_REPORTS / "last-run.json", show_default=True
)
def coverage(paths: tuple[str, ...], results: Path) -> None:
    """Catalogue IDs by traces (showing, boundary) and last result per target."""
    by_id: dict[str, list[tuple[str, bool]]] = defaultdict(list)  # ID → (trace, shows its boundary)
    broken: list[str] = []
    for path in trace_files(paths):
        try:
            trace = load(path.resolve())
        except SourceError as exc:
            broken.append(str(exc))
            continue
        for spec_id in trace.spec:
            by_id[spec_id].append((trace.id, spec_id in trace.boundary))
    last: dict[tuple[str, str], list[str]] = defaultdict(list)
    target_names: list[str] = []
    if results.exists():
        for outcome in json.loads(results.read_text()):
            if outcome["target"] not in target_names:
                target_names.append(outcome["target"])
            for spec_id in outcome["spec"]:
                last[(spec_id, outcome["target"])].append(outcome["outcome"])
    table = Table(title="conformance coverage")
    for column in ("ID", "flow", "traces", "shows", "boundary", *target_names):
        table.add_column(column)
    missing = 0
    for entry in catalogue().values():
        traces = by_id.get(entry.id, [])
        shows = sum(1 for _, boundary in traces if not boundary)
        bounds = sum(1 for _, boundary in traces if boundary)
        if not traces:
            missing += 1
        cells = []
        for name in target_names:
            seen = last.get((entry.id, name), [])
            cells.append(
                "—"
                if not seen
                else (
                    "[red]failed[/red]"
                    if "failed" in seen
                    else "[green]passed[/green]"
                    if all(s == "passed" for s in seen)
                    else "/".join(sorted(set(seen)))
                )
            )
        table.add_row(entry.id, entry.flow, str(len(traces)), str(shows), str(bounds), *cells)
    console.print(table)
    console.print(f"{len(catalogue()) - missing} of {len(catalogue())} IDs have at least one trace")
    for problem in broken:
        console.print(f"[red]broken trace:[/red] {escape(problem)}", highlight=False, soft_wrap=True)


@main.command(name="catalogue")
@click.option(
    "--write", "destination", type=click.Path(path_type=Path), default=None, help="write to this file"
)
def catalogue_command(destination: Path | None) -> None:
    """The conformance catalogue as Markdown (docs/catalogue.md)."""
    if destination is None:
        click.echo(markdown(), nl=False)
    else:
        destination.write_text(markdown(), encoding="utf-8")


@main.command()
@click.argument("paths", nargs=-1, required=True)
def check(paths: tuple[str, ...]) -> None:
    """Validate trace and lab files without running anything."""
    problems = 0
    for raw in paths:
        for path in [Path(raw)] if not Path(raw).is_dir() else sorted(Path(raw).rglob("*.y*ml")):
            try:
                if "labs" in path.resolve().parts:
                    config = lab_config.load(path.resolve())
                    # The directory is only parsed when a lab starts; a broken LDIF must show up here.
                    MockGlobalCatalog(config.global_catalog).load()
                else:
                    load(path.resolve())
                console.print(f"[green]ok[/green] {path}")
            except (SourceError, GlobalCatalogError) as exc:
                problems += 1
                # soft_wrap keeps "file:line: field: message" on one line for grep and editors.
                console.print(f"[red]error[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
    sys.exit(1 if problems else 0)


# The commands that drive a lab started by hand live in their own module.
main.add_command(cli_lab.lab)
main.add_command(cli_lab.queues)
main.add_command(cli_lab.submit)
main.add_command(cli_record.record_command)
main.add_command(cli_import.import_group)
main.add_command(cli_generate.generate)


if __name__ == "__main__":
    main()
