"""What every real MTA standing in for a lab server needs around it, whichever MTA it is: running its
commands inside the server's namespace, a private mount namespace for an MTA unpacked outside the
system's package manager (or, in a container of its own, links from the paths its package reads to the
lab folder), noting its daemons in the lab's state file (so that a sweep stops them if the lab dies),
waiting until it answers, and reading the Maildirs it delivered into.

Where Exim's and OpenSMTPD's binaries are depends on where they run (`packaged`):

- in a network namespace of this machine (the local backend), from their Debian packages unpacked into
  tools/mtas/root: their packages conflict with Postfix's, which is installed. Each command runs in a
  private mount namespace where the lab folder's directories are bind-mounted over the paths compiled
  into the binary; nothing of the machine changes.
- in a container of the MTA's image (the Docker backend), from its package installed there, at
  /usr/sbin. The container's files are the MTA's alone, so the lab folder's files are linked where the
  package reads them before the daemon starts, as an administrator configures a dedicated mail server.
  The same private mounts there would need CAP_SYS_ADMIN for the container, nearly root on this
  machine (docs/decisions.md).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from harness.lab.certificates import LabCertificates
from harness.lab.config import LabConfig
from harness.lab.container_shell import ContainerShell
from harness.lab.netns import Namespace

# Kept in the lab's room, which starts a real sending MTA too; named here for the stand-ins.
from harness.lab.processes import open_to_daemons as open_to_daemons
from harness.lab.processes import pid_file as pid_file
from harness.lab.recipients import RecipientTable
from harness.lab.standin import MailboxDelivery, from_maildir
from reference_mta.topology import VirtualServer

# Where `make mtas` unpacks the MTAs whose Debian packages conflict with the installed one.
UNPACKED = Path(__file__).resolve().parents[2] / "tools" / "mtas" / "root"
# How long a daemon gets to end on TERM before it is killed.
STOP_GRACE = 10.0


class StandInError(RuntimeError):
    """A real MTA could not be configured or started; the message quotes the MTA's own words."""


class StandInBase:
    """What every real MTA standing in for a server is made from: the lab's configuration, the server's
    name, the directory's recipients, its own folder in the lab's, and the lab's CA (for a certificate)."""

    def __init__(
        self,
        config: LabConfig,
        server: str,
        table: RecipientTable,
        root: Path,
        certificates: LabCertificates | None = None,
    ) -> None:
        self.config = config
        self.server = server
        self.table = table
        self.root = root
        self.certificates = certificates

    @property
    def default_virtual_server(self) -> VirtualServer:
        return self.config.organization.server(self.server).default_virtual_server


def in_private_mounts(binds: Sequence[tuple[Path, str]], argv: Sequence[str]) -> list[str]:
    """`argv` in a mount namespace of its own where each (source, target) is bind-mounted: how a binary
    unpacked from a package finds its configuration, spool and helpers at the paths compiled into it
    without anything changing on the system."""
    mounts = " && ".join(f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}" for src, dst in binds)
    script = f'{mounts} && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


def packaged(namespace: Namespace) -> bool:
    """Whether the MTA runs from its package installed where it runs (a container of its image), rather
    than unpacked into tools/mtas/root on this machine."""
    return isinstance(namespace, ContainerShell)


def link_into_place(namespace: Namespace, links: Sequence[tuple[Path, str]], what: str) -> None:
    """In a container of the MTA's own, each (source, target): `target`, a path the packaged binaries
    read, becomes a symbolic link to `source` in the lab folder, whatever the package had put there.
    Each trace links its own lab folder; a container outlives the trace, its links do not matter."""
    script = " && ".join(
        f"rm -rf {shlex.quote(dst)} && ln -s {shlex.quote(str(src))} {shlex.quote(dst)}" for src, dst in links
    )
    run(namespace, ["sh", "-c", script], what)


def run(namespace: Namespace, argv: Sequence[str], what: str, log: Path | None = None) -> str:
    """Run a command of the MTA in the namespace; a failure raises with its output (or its log's tail)."""
    result = subprocess.run(
        namespace.command(argv),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        tail = ""
        if log is not None and log.exists():
            tail = log.read_text(encoding="utf-8", errors="replace").strip()[-2000:]
        raise StandInError(
            f"{what} failed (exit {result.returncode}): "
            f"{(result.stderr.strip() or result.stdout.strip() or tail) or 'no output'}"
        )
    return result.stdout


class Foreground:
    """An MTA daemon kept in the foreground as our child, its output in `log`: stopping it is a signal,
    and a crash at start shows as an exit with its words in the log. It leads a process group of its
    own (its children are in it), noted in the lab's state file as `name`.

    In a container our child is the `docker exec` client, not the daemon, and the daemon's pids are the
    container's own: there it leads a session started by setsid, writes its pid (its process group's id
    in the container) to `log` with the suffix .pid, and is signalled by `kill` run in the container.
    The client ends when the daemon does, with its exit status."""

    def __init__(self, namespace: Namespace, argv: Sequence[str], log: Path, name: str) -> None:
        self.log = log
        self.namespace = namespace
        self.group_file = None if namespace.shares_pids else log.with_suffix(".pid")
        if self.group_file is not None:
            self.group_file.unlink(missing_ok=True)
            # setsid forks when its caller leads a process group already; --wait keeps the client
            # attached until the daemon ends.
            script = 'echo $$ > "$0" && exec "$@"'
            argv = ["setsid", "--wait", "sh", "-c", script, str(self.group_file), *argv]
        record = namespace.daemon(name)
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                namespace.command(argv),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # `ip netns exec`, `unshare` and `sh` each exec the next: this pid becomes the daemon's.
        record.started(self.process.pid)

    def failed(self) -> str | None:
        if self.process.poll() is None:
            return None
        text = self.log.read_text(encoding="utf-8", errors="replace").strip()
        return f"exited with {self.process.returncode}: {text[-2000:] or 'no output'}"

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        # The whole session: the daemon's own children (delivery processes) go with it.
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait(timeout=STOP_GRACE)

    def _signal(self, number: signal.Signals) -> None:
        if self.group_file is None:
            os.killpg(self.process.pid, number)
            return
        group = self._group()
        if group is None:  # it never got as far as its shell: the client is all there is
            self.process.kill()
            return
        subprocess.run(
            self.namespace.command(["kill", f"-{number.name.removeprefix('SIG')}", "--", f"-{group}"]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=30,
        )

    def _group(self) -> int | None:
        """The daemon's process group in its container, once its shell has written it."""
        assert self.group_file is not None
        deadline = time.monotonic() + STOP_GRACE
        while self.process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int(self.group_file.read_text(encoding="utf-8").strip())
            time.sleep(0.05)
        return None


def wait_until_listening(
    address: str, port: int, what: str, daemon: Foreground | None = None, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon is not None and (failure := daemon.failed()):
            raise StandInError(f"{what} {failure}")
        try:
            with socket.create_connection((address, port), timeout=1) as probe:
                if probe.recv(4).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    raise StandInError(f"{what} does not answer on {address}:{port}")


def maildir_deliveries(base: Path, server: str, by_folder: bool = False) -> list[MailboxDelivery]:
    """What an MTA delivered into `base/<primary address>/` Maildirs. The sender is the Return-Path the
    delivery agent added ("" for the null sender); the mailbox is the folder's name unless the agent
    recorded the mailbox in Delivered-To (`by_folder`: it records another address there)."""
    found: list[MailboxDelivery] = []
    for path in sorted(base.glob("*/new/*")) + sorted(base.glob("*/cur/*")):
        data, headers, sender = from_maildir(path.read_bytes())
        folder = path.parent.parent.name
        mailbox = folder if by_folder else str(headers.get("Delivered-To", folder)).strip().lower()
        found.append(MailboxDelivery(mailbox, server, sender, data))
    return found
