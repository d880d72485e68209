"""The `--wording` option of the commands that write traces from captured sessions."""

from __future__ import annotations

import click

from harness.corpus.trace import CAPTURED_WORDING, WORDING_HELP, wording_name


def _checked(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return wording_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


wording_option = click.option(
    "--wording", default=CAPTURED_WORDING, show_default=True, help=WORDING_HELP, callback=_checked
)
