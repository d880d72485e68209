"""`--target`: a word on the command line made a target (harness/targets: get), its mistakes said in the
user's terms: a word that is no target names the forms there are (exit 2), a target profile file with a
mistake its file and line (exit 2), an outside MTA where nothing answers what happened (exit 3)."""

from __future__ import annotations

import click

from harness import targets
from harness.exit_codes import BrokenError, InputError
from harness.targets.outside import Unreachable
from harness.yamlsource import SourceError

HELP = (
    f"server under test: one of {', '.join(targets.TARGETS)} (a real MTA stands in for EX1, or for the "
    "server named after a colon: postfix:EX2); or an MTA the harness does not start, standing in for EX1: "
    "smtp://HOST[:PORT], submission://HOST[:PORT], smtps://HOST[:PORT], or a target profile file (.yaml)"
)


def chosen(name: str) -> targets.Target:
    try:
        return targets.get(name)
    except SourceError as exc:
        raise InputError(f"target profile {exc}") from None
    except Unreachable as exc:
        raise BrokenError(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--target") from None
