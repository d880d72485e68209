"""`python -m harness.cli`, the way `mailflow chaos` starts `lab up` (the `mailflow` script itself is
`harness.cli.app:main`).

The commands that drive a lab (`lab`, `queues`, `submit`, `sinks`) are loaded without the rest of the
application (the corpus runner and pytest, the reports, the generator), which `harness.cli.app` imports
up front: `lab up` then starts in about two thirds of the time, and a crash test restarts it many times
and holds each start to a bound. Every other word, `--help` and `--version` included, loads the whole
command (`app.main`), which holds these commands too.
"""

from __future__ import annotations

import sys

_LAB_WORDS = frozenset({"lab", "queues", "submit", "sinks"})


def main() -> None:
    if sys.argv[1:2] and sys.argv[1] in _LAB_WORDS:
        from harness.cli.lab_commands import lab_commands

        lab_commands(prog_name="mailflow")
    else:
        from harness.cli.app import main as whole

        whole(prog_name="mailflow")
