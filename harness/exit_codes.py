"""The exit codes of every `mailflow` command, in one place, so that a CI job can tell a failed trace from
a mistake in its own set-up and from a broken lab.

| code | meaning |
|---|---|
| 0 | every trace passed (or the command did what it was asked) |
| 1 | a trace failed, or two targets differ |
| 2 | usage or invalid input: a wrong option or name, a malformed trace or lab file, no trace found |
| 3 | the lab or the harness broke: an address in use, a daemon that did not start, an internal error |
| 128 + N | stopped by signal N before it finished, lab cleaned up: 130 Ctrl-C, 129 SIGHUP, 143 SIGTERM |

`lab up` runs until it is stopped: Ctrl-C, SIGTERM or SIGHUP is its normal end (lab cleaned up, exit 0).

Commands raise `InputError` or `BrokenError` (click prints the message as `Error: ...` on stderr and exits
with the code); click's own usage errors already exit 2.
"""

from __future__ import annotations

from enum import IntEnum

import click


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    INPUT = 2
    BROKEN = 3


def stopped_by(signal_number: int) -> int:
    """The exit code of a command stopped by a signal: 128 + its number, as a shell reports a process the
    signal ended, and apart from 0-3 so that a stopped run is never read as a verdict on the traces."""
    return 128 + signal_number


class InputError(click.ClickException):
    """The user's input is wrong: the message names the file and line, or the valid choices."""

    exit_code = ExitCode.INPUT


class BrokenError(click.ClickException):
    """The lab or the harness could not do its work; the message says what, in the user's terms."""

    exit_code = ExitCode.BROKEN
