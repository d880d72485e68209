"""`mailflow chaos`: kill the lab with SIGKILL under load, start it again, and account for every
acknowledged message (harness/run/chaos.py does the work)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from harness.cli.lab import load_lab, placement
from harness.exit_codes import BrokenError, ExitCode, InputError, help_text
from harness.run import chaos
from harness.run.chaos_accounting import Pair
from harness.run.chaos_recipients import ChaosSetupError


@click.command(epilog=help_text())
@click.option("--kills", type=click.IntRange(min=0), required=True, help="how many times to kill the lab")
@click.option(
    "--senders", type=click.IntRange(min=1), default=6, show_default=True, help="concurrent clients"
)
@click.option("--lab", "lab_name", default="contoso", show_default=True, help="a lab name or lab file")
@click.option("--base", default=None, help="address base in 127.0.0.0/8 [default: MAILFLOW_LAB_BASE]")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="for the same kill moments and recipients"
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.5,
    show_default=True,
    help="mean seconds the lab runs between a start and the next kill",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="seconds to wait for every queue to empty after the last start",
)
@click.option(
    "--max-restart",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="seconds a start may take until the virtual server answers EHLO",
)
@click.option(
    "--internet",
    default=None,
    metavar="ADDRESS",
    help="also send to this Internet address (a sink; a kill between its 250 and the queue's record of it "
    "makes a copy too many there: the window every MTA leaves, docs/decisions.md)",
)
@click.option(
    "--client", default="relay-host", show_default=True, help="the lab client the senders connect from"
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="the lab's folder, kept [default: a temporary folder, kept only when the test fails]",
)
def chaos_command(
    kills: int,
    senders: int,
    lab_name: str,
    base: str | None,
    seed: int,
    interval: float,
    drain_timeout: float,
    max_restart: float,
    internet: str | None,
    client: str,
    workdir: Path | None,
) -> None:
    """Send to the first server of the lab from concurrent clients while the lab is killed (SIGKILL)
    and started again KILLS times; then wait for the queues to drain and check that every acknowledged
    message reached each of its recipients exactly once."""
    base, port_offset = placement(base, None, netns=False)
    config = load_lab(lab_name, base, port_offset)
    if internet is not None and "@" not in internet:
        raise InputError(f"--internet {internet!r} is not an address (name@domain)")
    if workdir is not None and workdir.exists() and any(workdir.iterdir()):
        raise InputError(f"--workdir {workdir}: not empty; the test counts every delivery it finds there")
    folder = Path(tempfile.mkdtemp(prefix="mailflow-chaos-")) if workdir is None else workdir
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--workdir {folder}: {exc.strerror or exc}") from None
    lab_dir = folder / "lab"
    settings = chaos.Settings(kills, senders, seed, interval, drain_timeout, internet=internet, client=client)
    click.echo(f"lab {config.name} in {lab_dir}: {senders} senders, {kills} kills (seed {seed})")
    try:
        outcome = chaos.run(settings, config, lab_dir, base)
    except ChaosSetupError as exc:
        shutil.rmtree(folder, ignore_errors=workdir is None)
        raise InputError(str(exc)) from None
    except chaos.ChaosBroken as exc:
        raise BrokenError(f"{exc} (the lab's folder: {lab_dir})") from None
    failures = _report(outcome, max_restart)
    if failures:
        click.echo(f"FAILED: {'; '.join(failures)} (the lab's folder: {lab_dir})")
        raise SystemExit(ExitCode.FAILED)
    if workdir is None:
        shutil.rmtree(folder, ignore_errors=True)


def _pair(pair: Pair) -> str:
    return f"<{pair[0]}> to {pair[1]}"


def _report(outcome: chaos.Outcome, max_restart: float) -> list[str]:
    """Prints the figures; returns what failed."""
    books = outcome.books
    echo = click.echo
    echo(f"messages sent:         {books.sent}")
    echo(f"  acknowledged (250):  {books.acknowledged}")
    echo(f"  unacknowledged:      {books.unacknowledged}")
    echo(f"deliveries expected:   {books.expected}")
    echo(f"  delivered once:      {books.delivered_once}")
    echo(f"  lost:                {len(books.lost)}")
    worst = books.worst
    worst_text = f" (worst: {_pair(worst[0])}, {worst[1]} copies)" if worst else ""
    echo(f"  duplicated:          {len(books.duplicated)}{worst_text}")
    echo(f"  still queued:        {len(books.queued)}")
    echo(f"leftover files:        {len(outcome.leftovers)}")
    echo(f"repeats the stores dropped: {outcome.repeats}")
    restarts = f"median {outcome.restart_median:.2f} s, max {outcome.restart_max:.2f} s"
    echo(f"restart time:          {restarts} over {len(outcome.restarts)} restarts")
    for pair in books.lost[:10]:
        echo(f"lost: {_pair(pair)}")
    for pair in books.queued[:10]:
        echo(f"still queued: {_pair(pair)}")
    for path in outcome.leftovers[:10]:
        echo(f"leftover: {path}")
    failures = []
    if books.lost:
        failures.append(f"{len(books.lost)} lost")
    if books.duplicated:
        failures.append(f"{len(books.duplicated)} duplicated")
    if books.queued or not outcome.drained:
        failures.append("the queues did not drain within --drain-timeout")
    if outcome.restart_max > max_restart:
        failures.append(f"a restart took {outcome.restart_max:.2f} s (--max-restart {max_restart:g})")
    return failures
