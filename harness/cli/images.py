"""`mailflow images ...`: the lab's container images, built from Debian packages (harness/lab/images.py)."""

from __future__ import annotations

import os

import click
from rich.console import Console
from rich.table import Table

from harness import exit_codes
from harness.exit_codes import BrokenError, InputError
from harness.lab import images

console = Console(stderr=False)
if not console.is_terminal and "COLUMNS" not in os.environ:
    console = Console(stderr=False, width=150)

KIND = click.Choice(images.KINDS)


def _say(line: str) -> None:
    click.echo(line)


@click.group(name="images", epilog=exit_codes.help_text())
def images_group() -> None:
    """The lab's container images (mailflow-base, -lab, -postfix, -exim, -opensmtpd), built from
    Debian packages with mmdebstrap and tagged by their content, so an unchanged image is never built
    twice. Needs Docker and mmdebstrap; exits 3 without them."""


@images_group.command()
@click.argument("kinds", nargs=-1, type=KIND)
@click.option(
    "--rebuild",
    is_flag=True,
    help="build the images of KINDS again even where they exist, to take Debian's updates (the old "
    "ones lose their names: images prune removes them)",
)
def build(kinds: tuple[str, ...], rebuild: bool) -> None:
    """Build the images of KINDS (default: all) that this checkout does not have yet; with
    MAILFLOW_IMAGE_REGISTRY set, pull each from that registry first."""
    try:
        images.ensure(kinds or images.KINDS, say=_say, rebuild=rebuild)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    except images.ImageError as exc:
        raise BrokenError(str(exc)) from None


@images_group.command(name="list")
def list_command() -> None:
    """The images there are: kind, tag, size, when built, and whether it is this checkout's."""
    try:
        found = images.listed(images.client())
    except images.ImageError as exc:
        raise BrokenError(str(exc)) from None
    table = Table(title="mailflow images")
    for column in ("kind", "tag", "size", "created", "current"):
        # A tag folded over two lines could not be copied or searched for.
        table.add_column(column, no_wrap=column == "tag")
    for item in found:
        current = "?" if item.current is None else "yes" if item.current else "no"
        tag = item.tag or f"(no name) {item.image_id.removeprefix('sha256:')[:12]}"
        table.add_row(
            item.kind, tag, f"{item.size / 1e6:.0f} MB", item.created[:19].replace("T", " "), current
        )
    console.print(table)
    if not found:
        console.print("no images yet: mailflow images build", highlight=False)


@images_group.command()
def prune() -> None:
    """Remove the images whose content is not this checkout's (older keys of each kind)."""
    try:
        removed = images.prune(images.client(), say=_say)
    except images.ImageError as exc:
        raise BrokenError(str(exc)) from None
    click.echo(f"{removed} removed")


@images_group.command()
@click.argument("registry")
@click.argument("kinds", nargs=-1, type=KIND)
def push(registry: str, kinds: tuple[str, ...]) -> None:
    """Tag this checkout's images of KINDS (default: all) REGISTRY/mailflow-KIND:KEY and push them;
    REGISTRY is host[:port][/path]. Set MAILFLOW_IMAGE_REGISTRY=REGISTRY where the images are needed
    and `images build` (and every run that needs an image) pulls them instead of building."""
    try:
        name = images.check_registry(registry)
    except ValueError as exc:
        raise InputError(f"REGISTRY: {exc}") from None
    try:
        images.push(images.client(), name, kinds or images.KINDS, say=_say)
    except images.ImageError as exc:
        raise BrokenError(str(exc)) from None
