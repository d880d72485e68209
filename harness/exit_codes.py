"""The exit codes of every `mailflow` command, in one place, so that a CI job can tell a failed trace from
a mistake in its own set-up and from a broken lab.

The codes and what each means are `MEANINGS` below (`--help` shows them; docs/exit-codes.md says
the same at length, with examples).

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


# What each code means, for `--help` (docs/exit-codes.md says the same at length; a test keeps the two
# in step).
MEANINGS: tuple[tuple[str, str], ...] = (
    ("0", "every trace passed (or the command did what it was asked)"),
    (
        "1",
        "a trace failed, two targets differ, a run differs from its baseline, or a crash test lost or "
        "duplicated mail",
    ),
    (
        "2",
        "usage or invalid input (a wrong option or name, a malformed trace or lab file, no trace found, "
        "an environment variable a trace needs not set)",
    ),
    ("3", "the lab or the harness broke (an address in use, a daemon that did not start)"),
    ("128 + N", "stopped by signal N, its lab cleaned up (130 Ctrl-C, 143 SIGTERM)"),
)


def help_text() -> str:
    """The exit codes as a command's `--help` ends with them."""
    codes = "; ".join(f"{code} {meaning}" for code, meaning in MEANINGS)
    return f"Exit codes: {codes}. When a run's traces call for several of 1-3, 3 wins over 2, and 2 over 1."


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
