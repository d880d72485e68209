"""What a lab leaves on the machine, seen from outside the harness: its state files under /run/mailflow,
its namespaces, veths and bridge, and the processes running in its namespaces. For the tests that stop
mailflow with a signal (or kill it) while its lab runs, then look for anything left behind.

Read straight from /proc, `ip` and the state files, not through the harness's own helpers, so that a
mistake there cannot hide itself here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.lab.placement import netns_first_octet

STATE_DIR = Path("/run/mailflow")
NETNS_RUN = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")
MAILFLOW = str(Path(sys.executable).with_name("mailflow"))
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)


def child_env(**settings: str) -> dict[str, str]:
    """The environment for a mailflow started by a test: this one, less what marks it as a pytest-xdist
    worker (a mailflow that inherited PYTEST_XDIST_WORKER would move its labs as that worker's)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}
    return {**env, **settings}


def subnet(band: int) -> str:
    """MAILFLOW_NETNS_SUBNET for a mailflow started by a test: this worker's two /24s (a `run -n 2` uses
    both) in the test module's band, apart from the other modules' labs."""
    # Wrapped into 1..249 (the variable's range, less the second /24 of `run -n 2`), whatever
    # MAILFLOW_NETNS_SUBNET this run has.
    return str(1 + (netns_first_octet() + band + 2 * (WORKER % 5)) % 248)


@contextmanager
def short_folder() -> Iterator[Path]:
    """A lab folder with a short path: Dovecot's sockets live under it, and a Unix socket's path has at
    most 107 bytes (a pytest tmp_path is too deep)."""
    folder = Path(tempfile.mkdtemp(prefix="mf-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Proc:
    pid: int
    parent: int
    started: int
    name: str
    zombie: bool


def proc(pid: int) -> Proc | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return Proc(pid, int(fields[1]), int(fields[19]), name, fields[0] in "ZX")


def all_procs() -> list[Proc]:
    return [p for entry in Path("/proc").iterdir() if entry.name.isdigit() and (p := proc(int(entry.name)))]


def descendants(pid: int) -> set[int]:
    procs = all_procs()
    found = {pid}
    grew = True
    while grew:
        more = {p.pid for p in procs if p.parent in found} - found
        found |= more
        grew = bool(more)
    return found


def netns_key(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def in_namespaces(keys: set[tuple[int, int]]) -> list[Proc]:
    return [p for p in all_procs() if not p.zombie and netns_key(Path(f"/proc/{p.pid}/ns/net")) in keys]


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


@dataclass
class Seen:
    """What the labs of one mailflow were seen to own while they ran."""

    states: dict[Path, dict[str, object]] = field(default_factory=dict)
    namespaces: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)
    namespace_keys: set[tuple[int, int]] = field(default_factory=set)
    processes: dict[tuple[int, int], str] = field(default_factory=dict)  # (pid, start tick) → name

    def add(self, path: Path, state: dict[str, object]) -> None:
        self.states[path] = state
        namespaces = [str(n) for n in state["namespaces"]]  # type: ignore[attr-defined]
        self.namespaces.update(namespaces)
        self.links.update([str(n) for n in state["links"]], [str(state["bridge"])])  # type: ignore[attr-defined]
        self.namespace_keys.update(k for n in namespaces if (k := netns_key(NETNS_RUN / n)))
        for daemon in state.get("daemons", []):  # type: ignore[attr-defined]
            if daemon["pid"] is not None:
                self.processes[(daemon["pid"], daemon["started"])] = daemon["name"]
        for p in in_namespaces(self.namespace_keys):
            self.processes[(p.pid, p.started)] = p.name

    def names(self) -> set[str]:
        return set(self.processes.values())


def states_of(owners: set[int]) -> dict[Path, dict[str, object]]:
    found = {}
    for path in STATE_DIR.glob("*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if state["pid"] in owners:
            found[path] = state
    return found


def wait_for_labs(
    process: subprocess.Popen[bytes],
    count: int,
    output: Path,
    daemon: str = "postfix master",
    timeout: float = 180,
) -> Seen:
    """Poll until `count` labs of `process` (or of its pytest-xdist workers) are up: each with its MTA's
    `daemon` noted in its state file with a pid, which it gets once it has started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"mailflow ended ({process.returncode}) before its lab was up:\n{output.read_text()}"
            )
        states = states_of(descendants(process.pid))
        ready = {
            path: state
            for path, state in states.items()
            if any(d["name"] == daemon and d["pid"] for d in state.get("daemons", []))  # type: ignore[attr-defined]
        }
        if len(ready) >= count:
            seen = Seen()
            for path, state in ready.items():
                seen.add(path, state)
            return seen
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"no {count} lab(s) up after {timeout} s:\n{output.read_text()}")


def wait_until_answering(process: subprocess.Popen[bytes], output: Path, timeout: float = 120) -> None:
    """Poll until `lab up` says how to stop it, which it does once every host of the lab answers."""
    deadline = time.monotonic() + timeout
    while "Ctrl-C stops the lab." not in output.read_text(errors="replace"):
        assert process.poll() is None, output.read_text()
        assert time.monotonic() < deadline, output.read_text()
        time.sleep(0.1)


def left_behind(seen: Seen) -> list[str]:
    """Everything of `seen` still on the machine."""
    left = [f"state file {path}" for path in seen.states if path.exists()]
    listed = ip("netns", "list")
    left += [f"namespace {name}" for name in seen.namespaces if name in listed.split()]
    left += [f"/etc/netns/{name}" for name in seen.namespaces if (NETNS_ETC / name).exists()]
    links = {line.split()[0].split("@")[0] for line in ip("-br", "link").splitlines() if line.strip()}
    left += [f"link {name}" for name in seen.links & links]
    for (pid, started), name in seen.processes.items():
        now = proc(pid)
        if now is not None and not now.zombie and now.started == started:
            left.append(f"process {pid} ({name})")
    # A namespace's inode number is reused once it is gone: one that now belongs to another namespace
    # (the next lab's) says nothing about this lab.
    reused = {netns_key(path) for path in NETNS_RUN.glob("*") if path.name not in seen.namespaces}
    left += [
        f"process {p.pid} ({p.name}) in the lab's namespace"
        for p in in_namespaces(seen.namespace_keys - reused)
    ]
    return left


def wait_until_gone(seen: Seen, timeout: float = 30) -> list[str]:
    """What is still left once `timeout` seconds have passed (less if all is gone sooner)."""
    deadline = time.monotonic() + timeout
    while (left := left_behind(seen)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# A trace that keeps its lab up for a minute: the client waits after the greeting.
HOLD = """\
id: hold/{name}
title: A client waits a minute after the greeting
spec: [PROTO-15]
lab: contoso
sessions:
  - client: internet
    connect: {{server: EX1}}
    script:
      - expect: 220
      - wait: 60
      - send: QUIT
      - expect: 221
outcome:
  nothing_delivered: true
"""


def hold_traces(tmp_path: Path, count: int = 1) -> list[str]:
    folder = tmp_path / "traces"
    folder.mkdir(exist_ok=True)
    paths = []
    for number in range(count):
        path = folder / f"hold-{number}.yaml"
        path.write_text(HOLD.format(name=f"n{number}"), encoding="utf-8")
        paths.append(str(path))
    return paths
