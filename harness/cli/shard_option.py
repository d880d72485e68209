"""`--shard K/N` and `--durations FILE` of `mailflow run` and `matrix`: the values checked in the user's
terms (exit 2), handed to the pytest plugin, which makes the split (harness/run/shard.py), and the line the
summary ends with, from the shard's record."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from harness.exit_codes import InputError
from harness.run import shard


def options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--durations",
        "durations_file",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="with --shard: balance the shards by the trace durations in this last-run.json of an earlier "
        "run (the same file on every shard)  [default: REPORTS/last-run.json if there is one, else by count]",
    )(command)
    return click.option(
        "--shard",
        "shard_text",
        default=None,
        metavar="K/N",
        help="run only shard K of N: the selected traces split in N parts of about equal work, the same "
        "on every machine (one CI job per shard; mailflow report merge puts their results together)",
    )(command)


@dataclass(frozen=True)
class Sharding:
    shard: shard.Shard | None = None
    durations: dict[str, float] | None = None
    source: Path | None = None  # the file the durations came from


def chosen(shard_text: str | None, durations_file: Path | None, defaults: Sequence[Path]) -> Sharding:
    """The shard and its durations: `durations_file`, else those of the `defaults` that exist (an earlier
    run's results, read now: the run about to start replaces them)."""
    if shard_text is None:
        if durations_file is not None:
            raise InputError("--durations: it balances shards: give --shard K/N too")
        return Sharding()
    try:
        parsed = shard.parse(shard_text)
    except ValueError as exc:
        raise InputError(f"--shard: {exc}") from None
    sources = [durations_file] if durations_file is not None else [p for p in defaults if p.is_file()]
    durations: dict[str, float] = {}
    for source in sources:
        try:
            for trace, seconds in shard.read_durations(source).items():
                durations[trace] = durations.get(trace, 0.0) + seconds
        except ValueError as exc:
            hint = "" if durations_file is not None else " (or name another with --durations)"
            raise InputError(f"--durations: {exc}{hint}") from None
    return Sharding(parsed, durations or None, sources[0] if len(sources) == 1 else None)


@contextmanager
def arguments(sharding: Sharding) -> Iterator[list[str]]:
    """The plugin's options for this shard. The durations go in a file of their own, which lives as long
    as the run: the file they came from may be the one the run rewrites."""
    if sharding.shard is None:
        yield []
        return
    args = ["--mailflow-shard", str(sharding.shard)]
    if not sharding.durations:
        yield args
        return
    with tempfile.TemporaryDirectory(prefix="mailflow-durations-") as folder:
        path = Path(folder) / "durations.json"
        listed = [
            {"trace": trace, "duration": seconds} for trace, seconds in sorted(sharding.durations.items())
        ]
        path.write_text(json.dumps(listed), encoding="utf-8")
        yield [*args, "--mailflow-durations", str(path)]


def report(console: Console, sharding: Sharding, results: Path) -> None:
    """The summary's shard line: which shard this was and how many of the selected traces it ran."""
    if sharding.shard is None:
        return
    try:
        record = shard.Split.from_json(json.loads(shard.record_path(results).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError):
        return  # the run did not finish: the summary says so
    source = str(sharding.source) if sharding.source else "the results of the earlier run"
    console.print(record.line(source), markup=False, highlight=False, soft_wrap=True)
