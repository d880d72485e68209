"""The commands that drive a lab, as a `mailflow` of their own: what `entry.main` runs for them."""

from __future__ import annotations

import click

from harness import exit_codes
from harness.cli import lab as cli_lab
from harness.run import signals


@click.group(epilog=exit_codes.help_text())
def lab_commands() -> None:
    """mailflow: trace-replay and conformance test harness for mail transfer agents."""
    signals.command_started()  # as `app.main` does: SIGTERM and SIGHUP stop a command as Ctrl-C does


for _command in (cli_lab.lab, cli_lab.queues, cli_lab.submit, cli_lab.sinks):
    lab_commands.add_command(_command)
