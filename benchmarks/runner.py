"""How a benchmark runs: progress on stderr, the report on stdout only once every figure is measured (so
Ctrl-C leaves nothing half-written), and what went wrong in one line instead of a traceback."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn


class BenchmarkError(Exception):
    """What could not be measured, and why, in the user's terms."""


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _stop(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def run(script: str, measure: Callable[[], list[str]]) -> NoReturn:
    # SIGTERM and SIGHUP end a run as Ctrl-C does: the context managers stop the children on the way out.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    try:
        lines = measure()
    except KeyboardInterrupt:
        note(f"{script}: interrupted; its child processes are stopped and nothing is reported")
        sys.exit(130)
    except BenchmarkError as exc:
        note(f"{script}: {exc}")
        sys.exit(3)
    print("\n".join(lines), flush=True)
    sys.exit(0)
