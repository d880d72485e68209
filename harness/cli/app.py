"""The `mailflow` command.

`mailflow run` is the main job: it replays the trace corpus through pytest (so the same traces run under
`pytest traces/` with identical results), shows progress while the corpus runs, writes Allure results,
JUnit XML and a JSON summary, prints a summary (`reports/summary.py`), and exits with one of the codes of
harness/exit_codes.py — the CI gate.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import pytest
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness import exit_codes, targets
from harness.cli import baseline as cli_baseline
from harness.cli import chaos as cli_chaos
from harness.cli import generate as cli_generate
from harness.cli import images as cli_images
from harness.cli import importing as cli_import
from harness.cli import lab as cli_lab
from harness.cli import record as cli_record
from harness.cli import report as cli_report
from harness.cli import shard_option, target_option
from harness.corpus.catalogue import catalogue, markdown
from harness.corpus.claims import Claim, claims
from harness.corpus.lab_view import lab_view
from harness.corpus.trace import Trace, in_corpus, is_trace_file, load, sniff, yaml_files
from harness.exit_codes import ExitCode, InputError
from harness.judge.deviations import deviations
from harness.lab import config as lab_config
from harness.lab.gc import GlobalCatalogError, MockGlobalCatalog
from harness.lab.placement import relocation
from harness.reports import differential, matrix, matrix_page, summary
from harness.reports.coverage import IdCoverage, black_box, select, short_of
from harness.reports.coverage import coverage as coverage_of
from harness.run import outcomes, signals
from harness.yamlsource import SourceError

console = Console(stderr=False)
if not console.is_terminal and "COLUMNS" not in os.environ:
    # CI logs are read in wide windows: don't fold the summary into 80 columns.
    console = Console(stderr=False, width=150)
DEFAULT_REPORTS = Path("reports")

EXIT_CODES = exit_codes.help_text()
TARGET_HELP = target_option.HELP


def trace_files(paths: tuple[str, ...]) -> list[Path]:
    """The trace files the PATHS name (default: traces/), by the rule pytest collects them with: a file
    named is a trace, and a folder's YAML files are when they are in the corpus or look like traces."""
    files: dict[Path, Path] = {}  # resolved → as given, so a file named twice runs once
    for raw in paths or ("traces",):
        path = Path(raw)
        if path.is_dir():
            found = []
            for candidate in yaml_files(path):
                if is_trace_file(candidate):
                    found.append(candidate)
                elif sniff(candidate) == "unreadable":
                    # It may be a trace with a typo: say so rather than leave it out unseen.
                    note = f"skipped {escape(str(candidate))}: its YAML does not parse (see mailflow check)"
                    console.print(f"[yellow]{note}[/yellow]", highlight=False, soft_wrap=True)
        elif path.exists():
            if not is_trace_file(path, named=True):
                raise click.BadParameter(
                    f"{raw} is not a trace: a trace is a .yaml or .yml file", param_hint="PATHS"
                )
            found = [path]
        else:
            raise click.BadParameter(f"{raw} does not exist", param_hint="PATHS")
        files.update((p.resolve(), p) for p in found if p.resolve() not in files)
    return list(files.values())


class ProgressPlugin:
    """Feeds pytest's per-trace reports into a rich progress bar (works with xdist: the controller
    receives every worker's reports)."""

    def __init__(self, progress: Progress | None, task: Any) -> None:
        self.progress = progress
        self.task = task

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # -k and -m deselect traces: the bar counts those that run. Under xdist the controller collects
        # nothing itself; its workers' collections say it (below).
        if self.progress is not None and session.items:
            self.progress.update(self.task, total=len(session.items))
            self.progress.refresh()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, total=len(ids))
            self.progress.refresh()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.progress is None:
            return
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            name = report.nodeid.rsplit("::", 1)[-1]
            self.progress.update(self.task, advance=1, description=f"{name} [{report.outcome}]")
            # Drawn now, not at the next of rich's ten refreshes a second: a trace often takes less, and
            # the count would skip the traces that ended in between.
            self.progress.refresh()


@contextmanager
def _progress(total: int) -> Iterator[ProgressPlugin]:
    """A progress bar on the terminal, when there is one (piped: none). It writes to its own copy of
    the terminal's file descriptor: while pytest runs, sys.stdout is /dev/null (pytest's own output
    would tear the bar) and pytest captures file descriptors 1 and 2 around each trace."""
    stream = sys.stderr if sys.stderr.isatty() else sys.stdout if sys.stdout.isatty() else None
    if stream is None:
        yield ProgressPlugin(None, None)
        return
    with (
        os.fdopen(os.dup(stream.fileno()), "w") as terminal,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=terminal, force_terminal=True),
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as progress,
    ):
        yield ProgressPlugin(progress, progress.add_task("starting", total=total))


def replay_options(command: Any) -> Any:
    """The options every command that replays traces takes: where reports go, workers, -k and -m filters."""
    for option in reversed(
        (
            click.option(
                "--reports",
                "reports_dir",
                type=click.Path(path_type=Path),
                default=DEFAULT_REPORTS,
                show_default=True,
                help="folder for the Allure results, junit.xml and the run's JSON results",
            ),
            click.option(
                "-n",
                "--workers",
                default="0",
                show_default=True,
                help="parallel workers (pytest-xdist), or auto",
            ),
            click.option(
                "-k",
                "keyword",
                default=None,
                help="only traces whose id or catalogue IDs match this pytest -k expression (-k RELAY-7)",
            ),
            click.option(
                "-m",
                "marker",
                default=None,
                help="only traces whose flows and catalogue IDs match this pytest -m expression "
                '(-m "relay and not RELAY_1")',
            ),
        )
    ):
        command = option(command)
    return command


def _trace_files_or_exit(paths: tuple[str, ...]) -> list[Path]:
    files = trace_files(paths)
    if not files:
        # A run of nothing is not a pass.
        raise InputError(f"no trace files found in {' '.join(paths) or 'traces'}")
    return files


def _targets(names: tuple[str, ...], backend: str = "local") -> list[targets.Target]:
    chosen = [target_option.on_backend(target_option.chosen(name), backend) for name in names]
    for target in chosen:
        try:
            # Where each target's labs will go, checked before any starts: a mistake in
            # MAILFLOW_LAB_BASE, MAILFLOW_PORT_OFFSET or MAILFLOW_NETNS_SUBNET is the user's, said once.
            relocation(netns=target.needs_netns, docker=target.in_docker)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    return chosen


@click.group(epilog=EXIT_CODES)
@click.version_option(package_name="mailflow", prog_name="mailflow")
def main() -> None:
    """mailflow: trace-replay and conformance test harness for mail transfer agents."""
    signals.command_started()  # SIGTERM and SIGHUP stop a command as Ctrl-C does, lab cleaned up


@main.command(epilog=EXIT_CODES)
@click.argument("paths", nargs=-1)
@click.option("--target", "target_name", default="reference", show_default=True, help=TARGET_HELP)
@click.option(
    "--update",
    is_flag=True,
    help="rewrite failing expect steps to what the server said (code, masked text), showing the diff",
)
@click.option(
    "-v", "--verbose", is_flag=True, help="list every trace in the summary, not only the ones to look at"
)
@click.option(
    "--baseline",
    "baseline_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="compare each trace's transcript and outcome with this baseline (mailflow baseline save) "
    "instead of writing reports; exit 1 on any difference",
)
@target_option.backend_option
@replay_options
@shard_option.options
def run(
    paths: tuple[str, ...],
    target_name: str,
    backend: str,
    update: bool,
    verbose: bool,
    baseline_file: Path | None,
    reports_dir: Path,
    workers: str,
    keyword: str | None,
    marker: str | None,
    shard_text: str | None,
    durations_file: Path | None,
) -> None:
    """Replay traces (default: traces/) against a target, write Allure results, JUnit XML
    (REPORTS/junit.xml) and REPORTS/last-run.json, print a summary."""
    (target,) = _targets((target_name,), backend)
    if update and target.name != "reference":
        # A real MTA's replies are what the corpus compares against Exchange, not what it expects.
        raise click.BadParameter(
            "--update rewrites traces to the reference MTA's replies only", param_hint="--update"
        )
    files = _trace_files_or_exit(paths)
    if baseline_file is not None:
        if shard_text is not None:
            raise click.BadParameter(
                "a baseline is checked whole: run it without --shard", param_hint="--shard"
            )
        sys.exit(
            int(cli_baseline.check(console, files, target, baseline_file, update, workers, keyword, marker))
        )
    results = reports_dir / "last-run.json"
    junit = reports_dir / "junit.xml"
    selection = _selection(keyword, marker)
    sharding = shard_option.chosen(shard_text, durations_file, [results])
    with shard_option.arguments(sharding) as sharded:
        code, ran = _replay(
            files, target, reports_dir, workers, selection + sharded, results, update=update, junit=junit
        )
    summary.print_summary(console, ran, verbose, details=[p for p in (results, junit) if p.exists()])
    shard_option.report(console, sharding, results)
    for outcome in ran:
        if outcome.get("update"):
            console.print(outcome["update"], markup=False, highlight=False, soft_wrap=True)
    status = outcomes.run_exit_code(code, ran)
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        console.print("no trace was run (none matched)", style="red", highlight=False)
    elif code in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR):
        console.print("the run did not finish: its results are incomplete", style="red", highlight=False)
    sys.exit(int(status))


def _selection(keyword: str | None, marker: str | None) -> list[str]:
    """pytest's own -k and -m: the plugin gives every trace its IDs as keywords and markers."""
    return [*(["-k", keyword] if keyword else []), *(["-m", marker] if marker else [])]


def _replay(
    files: list[Path],
    target: targets.Target,
    reports_dir: Path,
    workers: str,
    selection: list[str],
    results_file: Path,
    clean: bool = True,
    update: bool = False,
    junit: Path | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """Run the traces on one target through pytest (the plugin does the work); its exit code and the
    outcome of every trace."""
    results_file.parent.mkdir(parents=True, exist_ok=True)
    # A pytest that stops before its session finishes writes no summary: show none, not the last run's.
    results_file.unlink(missing_ok=True)
    args = [str(p) for p in files] + [
        "--mailflow-target",
        target.name,
        "--mailflow-backend",
        target.backend,
        "--mailflow-results",
        str(results_file),
        "--alluredir",
        str(reports_dir / "allure-results"),
        *(["--clean-alluredir"] if clean else []),
        "-p",
        "no:cacheprovider",
        # Traces use no Hypothesis; its plugin (a dev extra) costs every worker seconds at its exit.
        "-p",
        "no:hypothesispytest",
        "-q",
        "--no-header",
        "-rN",
        "--tb=no",
        "-o",
        "console_output_style=classic",
    ]
    if update:
        args.append("--mailflow-update")
    if junit is not None:
        # One testcase per trace, named by its id (the item's name), for CI systems that read JUnit.
        args += ["--junitxml", str(junit), "-o", "junit_suite_name=mailflow", "-o", "junit_family=xunit2"]
    if workers != "0":
        args += ["-n", workers]
    args += selection
    console.print(f"mailflow: {len(files)} trace file(s) against target [bold]{target.name}[/bold]")
    with _progress(len(files)) as plugin, open(os.devnull, "w") as quiet:
        saved = sys.stdout
        sys.stdout = quiet  # pytest's own terminal output would tear the progress bar
        try:
            code = pytest.main(args, plugins=[plugin])
        finally:
            sys.stdout = saved
    ran: list[dict[str, Any]] = json.loads(results_file.read_text()) if results_file.exists() else []
    return int(code), ran


@main.command(name="matrix", epilog=EXIT_CODES)
@click.argument("paths", nargs=-1)
@click.option("--target", "target_names", multiple=True, required=True, help=f"{TARGET_HELP}; give several")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="print the matrix as JSON (what matrix.json holds) instead of a table",
)
@target_option.backend_option
@replay_options
@shard_option.options
def matrix_command(
    paths: tuple[str, ...],
    target_names: tuple[str, ...],
    as_json: bool,
    backend: str,
    reports_dir: Path,
    workers: str,
    keyword: str | None,
    marker: str | None,
    shard_text: str | None,
    durations_file: Path | None,
) -> None:
    """Run the traces on each target; write the catalogue IDs by targets matrix (Markdown, HTML and JSON).
    Exits 1 when a trace fails on a target (a known deviation is not a failure)."""
    # With --json, standard output carries the JSON alone, so it pipes into jq; what a person reads goes
    # to standard error.
    saved, console.stderr = console.stderr, as_json
    try:
        _matrix(
            paths,
            target_names,
            as_json,
            backend,
            reports_dir,
            workers,
            keyword,
            marker,
            shard_text,
            durations_file,
        )
    finally:
        console.stderr = saved


def _matrix(
    paths: tuple[str, ...],
    target_names: tuple[str, ...],
    as_json: bool,
    backend: str,
    reports_dir: Path,
    workers: str,
    keyword: str | None,
    marker: str | None,
    shard_text: str | None = None,
    durations_file: Path | None = None,
) -> None:
    chosen = _targets(target_names, backend)
    for target in chosen:
        try:
            # A mistake in a deviations file stops the run before it starts.
            deviations(target.deviations_of or target.name)
        except SourceError as exc:
            raise InputError(str(exc)) from None
    files = _trace_files_or_exit(paths)
    runs: dict[str, list[dict[str, Any]]] = {}
    statuses: list[ExitCode] = []
    results_of = {t.name: reports_dir / "matrix" / f"{t.name.replace(':', '-')}.json" for t in chosen}
    # One split for every target, balanced by each trace's time on all of them.
    sharding = shard_option.chosen(shard_text, durations_file, list(results_of.values()))
    for number, target in enumerate(chosen):
        results = results_of[target.name]
        # One Allure result folder for all targets: the report tells them apart by the target label.
        with shard_option.arguments(sharding) as sharded:
            code, runs[target.name] = _replay(
                files,
                target,
                reports_dir,
                workers,
                _selection(keyword, marker) + sharded,
                results,
                clean=number == 0,
            )
        statuses.append(outcomes.run_exit_code(code, runs[target.name]))
    table = matrix.build(runs)
    unused = matrix.stale(runs)
    names = [t.name for t in chosen]
    (reports_dir / "matrix.md").write_text(matrix.to_markdown(table, names, unused), encoding="utf-8")
    rows = matrix.trace_rows(runs, matrix.allure_results(reports_dir / "allure-results"))
    page = matrix_page.page(table, names, unused, rows, base=reports_dir)
    (reports_dir / "matrix.html").write_text(page, encoding="utf-8")
    data = json.dumps(matrix.to_json(table, rows, names, unused), indent=1)
    (reports_dir / "matrix.json").write_text(data + "\n", encoding="utf-8")
    if as_json:
        click.echo(data)
    # Plain columns, each cell the status and the number of traces: readable piped and at 80 columns
    # (matrix.md has the counts by status and the deviations' reasons).
    cells = {
        spec_id: [f"{row[n].status} ({sum(row[n].counts.values())})" if row[n].counts else "-" for n in names]
        for spec_id, row in matrix.claimed(table).items()
    }
    first = max([len("ID"), *(len(spec_id) for spec_id in cells)])
    widths = [max([len(name), *(len(row[i]) for row in cells.values())]) for i, name in enumerate(names)]
    console.print(
        (f"{'ID':<{first}}" + "".join(f"  {n:<{w}}" for n, w in zip(names, widths, strict=True))).rstrip(),
        markup=False,
        highlight=False,
    )
    for spec_id, row in cells.items():
        text = f"{spec_id:<{first}}" + "".join(f"  {c:<{w}}" for c, w in zip(row, widths, strict=True))
        console.print(text.rstrip(), markup=False, highlight=False)
    if empty := matrix.unclaimed(table):
        console.print(f"no trace of this run claims {', '.join(empty)}", markup=False, highlight=False)
    width = summary.terminal_width(console)
    for name, ran in runs.items():
        # The traces to look at on each target, with their reasons (a deviation passed: not listed).
        for outcome in ran:
            if outcome["outcome"] != "passed":
                console.print(summary.trace_line(outcome, width), soft_wrap=True, highlight=False)
        console.print(f"{name}: {summary.totals(ran)}", markup=False, highlight=False)
    shard_option.report(console, sharding, results_of[chosen[0].name])
    for line in matrix.stale_lines(unused):
        # A warning, not a failure: the entry waives nothing, so it hides nothing either.
        console.print(f"warning: {line}", markup=False, highlight=False)
    console.print(
        f"{reports_dir / 'matrix.md'}\n{reports_dir / 'matrix.html'}\n{reports_dir / 'matrix.json'}"
    )
    sys.exit(int(outcomes.worst(statuses)))


@main.command(name="diff", epilog=EXIT_CODES)
@click.argument("paths", nargs=-1)
@click.option(
    "--target", "target_names", multiple=True, required=True, help=f"{TARGET_HELP}; give exactly two"
)
@target_option.backend_option
def diff_command(paths: tuple[str, ...], target_names: tuple[str, ...], backend: str) -> None:
    """Replay the same traces on two targets; show where transcripts and outcomes differ, side by side.
    Exit 1 if anything differs, 2 if a trace is invalid, 3 if a trace could not be run."""
    if len(target_names) != 2:
        raise click.BadParameter("give exactly two targets", param_hint="--target")
    first, second = _targets(target_names, backend)
    files = _trace_files_or_exit(paths)
    differing = 0
    seen: list[dict[str, str]] = []  # each trace's outcome, for the exit code
    for path in files:
        try:
            trace = load(path.resolve())
        except SourceError as exc:
            console.print(f"[red]invalid trace:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            seen.append({"outcome": "invalid"})
            continue
        for target in (first, second):
            unavailable = target.unavailable(trace)
            missing = target.missing(trace) + ([unavailable] if unavailable else [])
            if missing:
                lacks = ", ".join(missing)
                console.print(f"[yellow]{trace.id}: skipped: {target.name} lacks {lacks}[/yellow]")
                break
        else:
            try:
                result = differential.compare(trace, first, second)
            except Exception as exc:
                verdict, reason = outcomes.problem(exc)
                console.print(
                    f"{verdict} {trace.id}: {outcomes.one_line(reason)}", markup=False, highlight=False
                )
                seen.append({"outcome": verdict})
                continue
            if not result.differs:
                console.print(f"[green]{trace.id}: same[/green]")
                continue
            differing += 1
            seen.append({"outcome": "failed"})
            console.print(differential.table(result))
    console.print(f"{len(files)} trace(s), {differing} differ")
    sys.exit(int(outcomes.exit_code(seen)))


@main.command()
@click.argument("paths", nargs=-1)
@click.option(
    "--results",
    type=click.Path(path_type=Path),
    default=None,
    help=f"a run's JSON results  [default: {DEFAULT_REPORTS / 'last-run.json'}, if there is one]",
)
@click.option("--json", "as_json", is_flag=True, help="print the coverage as JSON instead of a table")
@click.option(
    "--min",
    "minimum",
    type=click.IntRange(min=1),
    default=None,
    help="exit 1 if an ID is shown by fewer than N traces that passed on the target",
)
@click.option(
    "--min-boundary",
    "minimum_boundary",
    type=click.IntRange(min=1),
    default=None,
    help="exit 1 if an ID's boundary is shown by fewer than N traces that passed on the target",
)
@click.option(
    "--target",
    default=None,
    help="the target of the results that --min and --min-boundary count (default: the only one)",
)
@click.option("--flow", "flows", multiple=True, help="only the IDs of this flow (Inbound, Relay, ...)")
@click.option(
    "--black-box",
    "observable",
    is_flag=True,
    help="only the IDs a black box can show (the catalogue declares a black-box form for them)",
)
@click.option(
    "--seed-ids",
    "seed",
    is_flag=True,
    help="only the IDs of the steps the seed documents describe, not the catalogue's extensions",
)
def coverage(
    paths: tuple[str, ...],
    results: Path | None,
    as_json: bool,
    minimum: int | None,
    minimum_boundary: int | None,
    target: str | None,
    flows: tuple[str, ...],
    observable: bool,
    seed: bool,
) -> None:
    """Catalogue IDs by the traces that claim and show them, show their boundary, and how many of those
    passed on each target of a run. On a real MTA (any target but the reference MTA) a claim counts only
    by its black-box form. Exits 2 if a trace is invalid or the results file named does not exist; with
    --min or --min-boundary, 1 if an ID has fewer such traces that passed."""
    if results is not None and not results.is_file():
        raise InputError(f"--results: {results} does not exist (mailflow run writes it)")
    results = results or DEFAULT_REPORTS / "last-run.json"
    _check_flows(flows)
    traces, broken = _loaded_traces(paths)
    ids, targets_run = coverage_of(traces, _results(results) if results.exists() else [])
    ids = select(ids, flows, observable, seed)
    gates = minimum is not None or minimum_boundary is not None
    gate_target = _gate_target(target, targets_run) if gates or target is not None else None
    if as_json:
        click.echo(
            json.dumps({"targets": targets_run, "ids": [e.as_json(targets_run) for e in ids]}, indent=2)
        )
    else:
        _coverage_table(ids, targets_run)
    for problem in broken:
        console.print(f"[red]invalid trace:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    if broken:
        sys.exit(ExitCode.INPUT)
    if gate_target is None:
        return
    short = False
    for wanted, boundary, verb in ((minimum, False, "shown"), (minimum_boundary, True, "bounded")):
        if wanted is None:
            continue
        for entry, count in short_of(ids, gate_target, wanted, boundary):
            short = True
            click.echo(
                f"{entry.id}: {verb} by {count} trace(s) that passed on {gate_target}, fewer than {wanted}",
                err=True,
            )
    if short:
        sys.exit(ExitCode.FAILED)


def _loaded_traces(paths: tuple[str, ...]) -> tuple[list[Trace], list[str]]:
    """Every trace that loads; the others' errors."""
    traces: list[Trace] = []
    broken: list[str] = []
    for path in trace_files(paths):
        try:
            trace = load(path.resolve())
            lab_view(trace.lab)  # coverage judges claims by the evidence rule, which reads the directory
            traces.append(trace)
        except SourceError as exc:
            broken.append(str(exc))
    return traces, broken


def _check_flows(flows: tuple[str, ...]) -> None:
    known = sorted({entry.flow for entry in catalogue().values()})
    for flow in flows:
        if flow.lower() not in {k.lower() for k in known}:
            raise InputError(f"--flow: no flow {flow!r}; flows: {', '.join(known)}")


def _gate_target(target: str | None, targets: list[str]) -> str:
    if target is not None:
        if target not in targets:
            ran = ", ".join(targets) or "none (run the traces first: mailflow run --target ...)"
            raise InputError(f"--target: the results have no run on {target!r}; targets run: {ran}")
        return target
    if len(targets) != 1:
        ran = ", ".join(targets) or "none (run the traces first)"
        raise InputError(
            f"--min, --min-boundary: say which target's results count with --target; targets run: {ran}"
        )
    return targets[0]


def _coverage_table(ids: list[IdCoverage], targets: list[str]) -> None:
    table = Table(title="conformance coverage")
    for column in ("ID", "flow", "claims", "shows", "boundary"):
        table.add_column(column)
    for target in targets:
        table.add_column(f"{target} (black box)" if black_box(target) else target)
    for entry in ids:
        cells = [_coverage_cell(entry, target) for target in targets]
        shows, bounds = entry.showing(), entry.bounding()
        table.add_row(entry.id, entry.flow, str(len(entry.claims)), str(len(shows)), str(len(bounds)), *cells)
    console.print(table)
    claimed = sum(1 for entry in ids if entry.claims)
    console.print(f"{claimed} of {len(ids)} IDs have at least one trace")


def _coverage_cell(entry: IdCoverage, target: str) -> str:
    """How many of the ID's showing (and bounding) traces, as the target is judged, passed on it; red
    when any of its traces failed."""
    seen = entry.outcomes.get(target, {})
    if not seen:
        return "—"
    shows, bounds = entry.showing(black_box(target)), entry.bounding(black_box(target))
    text = f"{entry.showing_passed(target)}/{len(shows)} passed"
    if bounds:
        text += f", {entry.bounding_passed(target)}/{len(bounds)} bounding"
    if "failed" in seen.values():
        return f"[red]{text}, {sum(1 for o in seen.values() if o == 'failed')} failed[/red]"
    return f"[green]{text}[/green]" if all(o == "passed" for o in seen.values()) else text


_results = cli_report.read_results


@main.command(name="catalogue")
@click.option(
    "--write", "destination", type=click.Path(path_type=Path), default=None, help="write to this file"
)
def catalogue_command(destination: Path | None) -> None:
    """The conformance catalogue as Markdown (docs/catalogue.md)."""
    if destination is None:
        click.echo(markdown(), nl=False)
        return
    try:
        destination.write_text(markdown(), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"--write: cannot write {destination}: {exc.strerror or exc}") from exc


@main.command(epilog=EXIT_CODES)
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--claims",
    "claims_report",
    is_flag=True,
    help="report the claims instead of each file: only the unbacked ones, then totals per ID and flow",
)
def check(paths: tuple[str, ...], claims_report: bool) -> None:
    """Validate trace and lab files without running anything, and hold each trace's spec:/boundary: IDs
    against the evidence the catalogue declares for them (harness/corpus/catalogue.yaml, shown_by): a
    claim the trace's assertions do not show is listed with file, line and what is missing. Exits 2 if
    any file is invalid, 1 if every file is valid but a trace claims a step it does not show."""
    problems = 0
    judged: list[Claim] = []
    for raw in paths:
        named = not Path(raw).is_dir()
        for path in [Path(raw)] if named else yaml_files(Path(raw)):
            # What a file is, is told by its content; a folder's YAML that is neither is not checked.
            kind = sniff(path)
            if not named and kind == "other" and not in_corpus(path):
                if not claims_report:
                    note = f"skipped {escape(str(path))}: neither a trace nor a lab file"
                    console.print(f"[bright_black]{note}[/]", highlight=False)
                continue
            try:
                if kind == "lab":
                    config = lab_config.load(path.resolve())
                    # The directory is only parsed when a lab starts; a broken LDIF must show up here.
                    MockGlobalCatalog(config.global_catalog).load()
                    missing = 0
                else:
                    trace = load(path.resolve())
                    lab_view(trace.lab)  # the evidence rule reads the lab's directory: a broken one is input
                    found = claims(trace)
                    judged += found
                    missing = _print_unbacked(trace, found)
                if not claims_report and not missing:  # the report is long enough without good files
                    console.print(f"[green]ok[/green] {path}")
            except (SourceError, GlobalCatalogError) as exc:
                problems += 1
                # soft_wrap keeps "file:line: field: message" on one line for grep and editors.
                console.print(f"[red]error[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
    if claims_report:
        _claims_totals(judged)
    unbacked = any(not claim.shown for claim in judged)
    sys.exit(ExitCode.INPUT if problems else ExitCode.FAILED if unbacked else ExitCode.OK)


def _print_unbacked(trace: Trace, found: list[Claim]) -> int:
    """Print each claim of the trace that its assertions do not show; return how many there are."""
    unbacked = 0
    for claim in found:
        if not claim.shown:
            unbacked += 1
            where = f"{_shown_path(trace.path)}:{claim.line}"
            text = f"[red]unbacked[/red] {escape(where)}: {escape(claim.missing)}"
            console.print(text, highlight=False, soft_wrap=True)
    return unbacked


def _claims_totals(judged: list[Claim]) -> None:
    """The claims per ID and per flow: how many, how many shown."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # ID → [claims, shown]
    for claim in judged:
        counts[claim.id][0] += 1
        counts[claim.id][1] += claim.shown
    table = Table(title="claims backed by the trace's assertions")
    for column in ("ID", "flow", "claims", "shown", "unbacked"):
        table.add_column(column)
    flows: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for entry in catalogue().values():
        total, shown = counts.get(entry.id, [0, 0])
        flows[entry.flow][0] += total
        flows[entry.flow][1] += shown
        if total:
            table.add_row(entry.id, entry.flow, str(total), str(shown), str(total - shown))
    console.print(table)
    for flow, (total, shown) in flows.items():
        console.print(f"{flow}: {total} claims, {shown} shown, {total - shown} unbacked")
    total = sum(count[0] for count in counts.values())
    shown = sum(count[1] for count in counts.values())
    console.print(f"total: {total} claims, {shown} shown, {total - shown} unbacked")


def _shown_path(path: Path) -> str:
    """A trace's path relative to the working directory when it is below it, as the user named it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# The commands that drive a lab started by hand live in their own module.
main.add_command(cli_lab.lab)
main.add_command(cli_chaos.chaos_command, name="chaos")
main.add_command(cli_lab.queues)
main.add_command(cli_lab.submit)
main.add_command(cli_lab.sinks)
main.add_command(cli_record.record_command)
main.add_command(cli_import.import_group)
main.add_command(cli_generate.generate)
cli_report.register(main, EXIT_CODES, console)
main.add_command(cli_images.images_group)
cli_baseline.register(
    main, _trace_files_or_exit, lambda name: _targets((name,))[0], TARGET_HELP, EXIT_CODES, console
)


if __name__ == "__main__":
    main()
