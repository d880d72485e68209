"""A real MTA's commands run in its container (the Docker backend), as a network namespace runs them
for the local backend: the stand-ins (harness/targets/) are written against `Namespace`, and this is one.

`docker exec` through Docker's own client: the stand-ins run each command as an argument list, the way
`ip netns exec` is run, and the client reads DOCKER_HOST as the SDK does. The MTA's daemons end with
their container, which the backend removes, so nothing is noted for a sweep here.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.lab.netns import Daemon, Namespace, RecordedDaemon


class ContainerCommandFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class ContainerShell(Namespace):
    container: str = ""

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["docker", "exec", "-i", self.container, *argv]

    @property
    def etc(self) -> Path | None:
        return None

    @property
    def shares_pids(self) -> bool:
        return False

    def user(self, name: str) -> tuple[int, int]:
        return int(self._output("id", "-u", name)), int(self._output("id", "-g", name))

    def group(self, name: str) -> int:
        return int(self._output("getent", "group", name).split(":")[2])

    def daemon(self, name: str) -> RecordedDaemon:
        return RecordedDaemon(None, Daemon(name, self.name))

    def _output(self, *argv: str) -> str:
        result = subprocess.run(self.command(argv), capture_output=True, text=True, check=False, timeout=30)
        if result.returncode != 0:
            raise KeyError(f"{' '.join(argv)} in container {self.container}: {result.stderr.strip()}")
        return result.stdout.strip()
