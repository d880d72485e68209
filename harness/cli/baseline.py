"""`mailflow baseline save` and the check behind `mailflow run --baseline`: the regression check of one
target against what it did before (harness/reports/baseline.py keeps the file's form).

Both replay each trace directly, one after another, as `mailflow diff` does: a baseline is about what the
target said and did, which the pytest run's reports do not keep.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from harness import targets
from harness.corpus.trace import Trace, load
from harness.exit_codes import ExitCode, InputError
from harness.reports import baseline as baselines
from harness.reports import differential
from harness.run import outcomes
from harness.run.runner import run_trace
from harness.yamlsource import SourceError

# What becomes of one trace: its id and entry, or None when it did not run (invalid, broken, ...).
Ran = tuple[str, baselines.Entry] | None


def replay(
    files: list[Path], target: targets.Target, baseline_file: Path, seen: list[dict[str, Any]], out: Console
) -> list[tuple[Path, Ran]]:
    """Run each trace on the target and make its baseline entry. An invalid trace or one that could not
    run is said at once and its outcome put in `seen`, for the exit code."""
    ran: list[tuple[Path, Ran]] = []
    ids: dict[str, Path] = {}
    for path in files:
        try:
            trace = load(path.resolve())
        except SourceError as exc:
            out.print(f"[red]invalid trace:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            seen.append({"outcome": "invalid"})
            ran.append((path, None))
            continue
        if trace.id in ids:
            # A baseline is keyed by trace id: two files with one id would overwrite each other.
            out.print(
                f"invalid trace: {path}: id {trace.id!r} is also the id of {ids[trace.id]}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            seen.append({"outcome": "invalid"})
            ran.append((path, None))
            continue
        ids[trace.id] = path
        ran.append((path, _one(trace, target, baseline_file, seen, out)))
    return ran


def _one(
    trace: Trace, target: targets.Target, baseline_file: Path, seen: list[dict[str, Any]], out: Console
) -> Ran:
    unavailable = target.unavailable(trace)
    missing = target.missing(trace)
    if missing or unavailable:
        reason = f"target {target.name} lacks {', '.join(missing)}" if missing else str(unavailable)
        return trace.id, baselines.skipped(trace, reason, baseline_file)
    try:
        result = run_trace(trace, target)
    except Exception as exc:
        verdict, reason_of = outcomes.problem(exc)
        out.print(f"{verdict} {trace.id}: {outcomes.one_line(reason_of)}", markup=False, highlight=False)
        seen.append({"outcome": verdict})
        return None
    return trace.id, baselines.entry(trace, target, result, baseline_file)


def check(
    out: Console,
    files: list[Path],
    target: targets.Target,
    baseline_file: Path,
    update: bool = False,
    workers: str = "0",
    keyword: str | None = None,
    marker: str | None = None,
) -> ExitCode:
    """`mailflow run --baseline`: run the traces and compare each with the baseline; exit 1 on any
    difference, on a trace the baseline lacks and on a baseline trace that was not run."""
    # The check replays trace by trace, not through pytest: the options that only pytest gives are refused
    # rather than silently ignored (and a partial selection would read as traces "not run").
    for given, option in ((update, "--update"), (workers != "0", "-n"), (keyword, "-k"), (marker, "-m")):
        if given:
            raise click.BadParameter(f"{option} does not go with --baseline; name the traces as PATHS")
    saved = _read(baseline_file)
    if saved.target != target.name:
        raise InputError(
            f"{baseline_file}: saved on target {saved.target}, not {target.name} "
            f"(run with --target {saved.target}, or compare two targets with mailflow diff)"
        )
    out.print(
        f"mailflow: {len(files)} trace file(s) against target [bold]{target.name}[/bold], "
        f"compared with {escape(str(baseline_file))}",
        highlight=False,
    )
    seen: list[dict[str, Any]] = []
    same = differing = 0
    unknown: list[str] = []
    ran_ids: set[str] = set()
    for path, ran in replay(files, target, baseline_file, seen, out):
        if ran is None:
            continue
        trace_id, now = ran
        ran_ids.add(trace_id)
        if trace_id not in saved.traces:
            unknown.append(f"{trace_id} ({path})")
            continue
        diff = baselines.compare(trace_id, saved.traces[trace_id], now, target.name)
        if diff.differs:
            differing += 1
            out.print(differential.table(diff))
        else:
            same += 1
            out.print(f"[green]{escape(trace_id)}: same[/green]", highlight=False)
    not_run = sorted(set(saved.traces) - ran_ids)
    for line in unknown:
        out.print(f"not in the baseline: {line}", style="red", markup=False, highlight=False, soft_wrap=True)
    for trace_id in not_run:
        file = saved.traces[trace_id].file
        out.print(
            f"in the baseline, not run: {trace_id} ({file})",
            style="red",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    out.print(
        f"{same} same, {differing} differ, {len(unknown)} not in the baseline, "
        f"{len(not_run)} in the baseline but not run",
        highlight=False,
    )
    if differing or unknown or not_run:
        seen.append({"outcome": "failed"})
    return outcomes.exit_code(seen)


def _read(path: Path) -> baselines.Baseline:
    try:
        return baselines.load(path)
    except SourceError as exc:
        raise InputError(f"invalid baseline: {exc}") from None


@click.group(name="baseline")
def baseline_group() -> None:
    """Baselines: save what a target does with the traces, then check later runs against it with
    `mailflow run --baseline FILE`."""


def register(
    main: click.Group,
    trace_files: Callable[[tuple[str, ...]], list[Path]],
    target_of: Callable[[str], targets.Target],
    target_help: str,
    epilog: str,
    out: Console,
) -> None:
    """Add `baseline save` to the `mailflow` command. The rule for which files are traces, the target
    check, the help texts and the console are app.py's, which imports this module (so this one cannot
    import it)."""

    @baseline_group.command(name="save", epilog=epilog)
    @click.argument("paths", nargs=-1)
    @click.option("--target", "target_name", default="reference", show_default=True, help=target_help)
    @click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path, dir_okay=False),
        required=True,
        help="the baseline file to write (YAML)",
    )
    def save(paths: tuple[str, ...], target_name: str, output: Path) -> None:
        """Run the traces (default: traces/) on a target and save each one's masked transcript and
        outcome to a baseline file. Nothing is written if a trace is invalid or could not run."""
        target = target_of(target_name)
        files = trace_files(paths)
        if output.parent.exists() and not output.parent.is_dir():
            # Said before the traces run, not after minutes of running them.
            raise InputError(f"cannot write {output}: {output.parent} is not a folder")
        out.print(
            f"mailflow: {len(files)} trace file(s) against target [bold]{target.name}[/bold]", highlight=False
        )
        seen: list[dict[str, Any]] = []
        saved = baselines.Baseline(target.name)
        for _, ran in replay(files, target, output, seen, out):
            if ran is not None:
                saved.traces[ran[0]] = ran[1]
        code = outcomes.exit_code(seen)
        if code != ExitCode.OK:
            out.print(f"{output} not written: fix the traces above, then save again", style="red")
            sys.exit(int(code))
        try:
            baselines.dump(saved, output)
        except OSError as exc:
            raise InputError(f"cannot write {output}: {exc.strerror or exc}") from None
        failing = sum(1 for e in saved.traces.values() if e.outcome[:1] != ["passed"])
        note = f" ({failing} did not pass their own checks; saved as they are)" if failing else ""
        out.print(f"{output}: {len(saved.traces)} trace(s) saved on target {target.name}{note}", markup=False)

    main.add_command(baseline_group)
