"""Stopping on SIGTERM and SIGHUP as on Ctrl-C, with nothing left behind.

A CI job that times out, a supervisor or a closed terminal stops mailflow with SIGTERM or SIGHUP, and
Python's default for those ends the process on the spot: the lab's daemons, namespaces, bridge and state
files stay. Here SIGINT, SIGTERM and SIGHUP all raise `Stopped`, a KeyboardInterrupt, in the main thread,
so that everything that already unwinds on Ctrl-C (pytest, the labs' context managers, finally blocks)
unwinds the same way for each of them. Besides:

- the first signal is passed on to this process's children in its own process group (pytest-xdist's
  workers, each of which then stops its own lab), as a terminal's Ctrl-C reaches the whole group;
- a signal that comes again while the clean-up runs is noted, not raised: a supervisor's second TERM
  must not cut the clean-up short (SIGKILL still ends the process, and the stale-lab sweep removes what
  it leaves);
- a pytest-xdist worker also stops when the process that started it dies: the kernel sends it SIGTERM,
  so an orphaned worker does not keep its lab running;
- when a command ends, every lab whose owner died is swept (a worker killed during the run); after a
  signal, so is whatever lab the process itself still owns (a clean-up the signal cut short), in a
  worker too. A command the signal interrupted exits with 128 + the signal's number
  (harness/exit_codes.py); one whose normal end is a signal (`lab up`, through `until_stopped`) exits 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import click

from harness.exit_codes import stopped_by
from harness.lab import netns, processes

STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Stopped(KeyboardInterrupt):
    """A stopping signal arrived: unwinds like Ctrl-C."""

    def __init__(self, number: int) -> None:
        super().__init__(f"stopped by {signal.Signals(number).name}")
        self.number = number


_received: int | None = None
_holding = False  # from now on a signal is noted, never raised: the clean-up is under way
_talk = False  # say so on stderr when a signal comes again (the command's own process only)
_expected = False  # the signal was the command's normal end (`until_stopped`)
_in_command = False  # a mailflow command runs in this process (not a bare pytest)
# The handlers the command found, put back when it ends without a signal.
_before_command: dict[int, Callable[[int, FrameType | None], Any] | int] = {}


def install(*, worker: bool = False) -> None:
    """Handle the stopping signals in this process (from the main thread: Python delivers signals there
    only, and elsewhere nothing is installed). A `worker` also stops when its parent dies."""
    global _talk
    if threading.current_thread() is not threading.main_thread():
        return
    for number in STOPPING:
        # A signal the process was started with ignored stays ignored (`nohup`, a background job of a
        # non-interactive shell): Python leaves an ignored SIGINT alone for the same reason.
        if signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, _handle)
    if worker:
        stop_with_parent()
    else:
        _talk = True


def command_started() -> None:
    """Call from the CLI's group callback: signals are handled for the command, and when it ends the
    labs it left are swept and a stopped command exits 128 + N."""
    global _in_command
    if threading.current_thread() is threading.main_thread():
        for number in STOPPING:
            before = signal.getsignal(number)
            _before_command[number] = before if before is not None else signal.SIG_DFL
    install()
    _in_command = True
    click.get_current_context().call_on_close(_command_ended)


def expect_stop() -> None:
    """From now on a stopping signal is the command's normal end (`lab up` once its lab is up): it
    exits 0 after the clean-up, even when the signal comes before `until_stopped` waits for it."""
    global _expected
    _expected = True


def until_stopped() -> None:
    """Wait for Ctrl-C, SIGTERM or SIGHUP, then return: for a command that runs until it is stopped
    (`lab up`), so that it cleans up as usual and exits 0."""
    global _expected
    # Not signal.pause(): a signal that lands after Python last ran its handlers and before the process
    # sleeps would be lost, and the lab would run on. The handler's C half writes to the wake-up pipe
    # whenever the signal comes, so select() returns and the Python handler then runs.
    read, write = os.pipe()
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write)
    try:
        while _received is None:
            select.select([read], [], [])
            os.read(read, 512)
        _expected = True  # noted without a raise: the handler ran while the command was holding
    except KeyboardInterrupt:  # Stopped, or Python's own for Ctrl-C where no handler was installed
        _expected = True
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read)
        os.close(write)


def session_ended(worker: bool) -> None:
    """Call when a pytest session ends (last): after a signal, sweep what this process left; the
    controller then stops right here, so that no other session starts (`mailflow matrix` would go on to
    its next target)."""
    global _holding
    if _received is None:
        return
    _holding = True
    _sweep(own=True)
    if _in_command and not worker:
        raise Stopped(_received)


def _command_ended() -> None:
    global _holding, _in_command
    _holding = True
    _in_command = False
    _sweep(own=_received is not None)
    if _received is None:
        # The process goes on (a command run in-process, as tests do): as it was before the command.
        _holding = False
        if threading.current_thread() is threading.main_thread():
            for number, before in _before_command.items():
                signal.signal(number, before)
            _before_command.clear()
        return
    if not _expected:
        name = signal.Signals(_received).name
        said = f"mailflow: stopped by {name}; the labs it started are stopped and removed"
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print(said, file=sys.stderr)
        raise SystemExit(stopped_by(_received))


def _handle(number: int, frame: FrameType | None) -> None:
    global _received
    if _received is not None:
        if _talk:
            with contextlib.suppress(OSError):
                os.write(
                    2,
                    f"mailflow: {signal.Signals(number).name} again: still stopping the lab "
                    "(SIGKILL would leave it to the next sweep)\n".encode(),
                )
        return
    _received = number
    for child in processes.children_in_group(os.getpid(), os.getpgrp()):
        processes.send(child, number)
    if not _holding:
        raise Stopped(number)


def _sweep(own: bool) -> None:
    # Only root can have made lab networks (and remove them); for anyone else there is nothing to do.
    if netns.available() is None:
        netns.sweep_stale(own=own)


def _find_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Found once, here: stop_with_parent also runs between fork and exec (a child's preexec_fn), where
# loading a library could wait for a lock another thread of the parent held when it forked.
_prctl = _find_prctl()


def stop_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG; through ctypes, as no
    dependency of the project wraps prctl). The parent is the thread that forked this process: xdist
    starts its workers from the controller's main thread, which lives as long as the controller."""
    parent = os.getppid()
    if _prctl is None:  # not Linux: a worker then stops with the gateway only
        return
    done = _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    if done and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before the request was made
