"""`--target`: a word on the command line made a target (harness/targets: get), its mistakes said in the
user's terms: a word that is no target names the forms there are (exit 2), a target profile file with a
mistake its file and line (exit 2), an outside MTA where nothing answers what happened (exit 3)."""

from __future__ import annotations

import click

from harness import targets
from harness.exit_codes import BrokenError, InputError
from harness.lab import containers
from harness.targets.outside import Unreachable
from harness.yamlsource import SourceError

HELP = (
    f"server under test: one of {', '.join(targets.TARGETS)} (a real MTA stands in for EX1, or for the "
    "server named after a colon: postfix:EX2); or an MTA the harness does not start, standing in for EX1: "
    "smtp://HOST[:PORT], submission://HOST[:PORT], smtps://HOST[:PORT], or a target profile file (.yaml)"
)


BACKEND_HELP = (
    "where the lab's hosts run: local (this process; a real MTA in a network namespace) or docker (each "
    "host in a container of its own; images are built on first use: mailflow images build)"
)

backend_option = click.option(
    "--backend",
    type=click.Choice(targets.BACKENDS),
    default="local",
    show_default=True,
    help=BACKEND_HELP,
)


def on_backend(target: targets.Target, backend: str) -> targets.Target:
    """`target` on `backend`; without a Docker engine the Docker backend says how to get one (exit 3)."""
    try:
        placed = targets.on_backend(target, backend)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--backend") from None
    if backend == "docker" and (reason := containers.unavailable()) is not None:
        raise BrokenError(f"--backend docker: {reason}")
    return placed


def chosen(name: str) -> targets.Target:
    try:
        return targets.get(name)
    except SourceError as exc:
        raise InputError(f"target profile {exc}") from None
    except Unreachable as exc:
        raise BrokenError(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--target") from None
