"""A real sending MTA on the lab's Internet: Postfix (Debian's package) running as one of the lab's
outside hosts (`mail.fabrikam.com`) in a network namespace of its own, handed messages with `sendmail`.

It is what IN-1 and IN-2 are about: a sending server looks up the destination domain's MX, then the A
record of the exchanger it chose, and connects to port 25 of the virtual server there. The lab's DNS
server is its only resolver (the namespace's resolv.conf names nothing else, its hosts file names only
localhost) and Postfix is told to ask DNS and nothing else (smtp_host_lookup = dns, disable_dns_lookups =
no, no daemon chrooted, so /etc/resolv.conf is the namespace's). Its queries, with its own address, are
in the lab DNS server's query log, and its sessions in the receiving virtual servers' protocol logs.

It sends and never receives: no SMTP listener, and a bounce for its own domain is discarded (it would
otherwise go looking for fabrikam.com's MX, which is itself). Every daemon runs from a configuration
directory in the lab's folder (`postfix -c`), logging to a file the report attaches.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.lab import netns
from harness.lab.config import Host, LabConfig
from harness.lab.netns import Namespace
from harness.lab.postfix_services import SERVER_ONLY, services
from harness.lab.processes import open_to_daemons, pid_file

MTAS = ("postfix",)  # the sending MTAs a trace may name (`via: {mta: ...}`)
_SPOOL_QUEUES = ("maildrop", "incoming", "active", "deferred")
# "<queue id>: to=<rcpt>, relay=..., delay=..., dsn=2.0.0, status=sent (250 ...)"
_STATUS = re.compile(r"\bto=<(?P<rcpt>[^>]*)>,.*\bstatus=(?P<status>\w+)(?: \((?P<why>.*)\))?$")
_FINAL = ("sent", "bounced", "expired")


class SenderError(RuntimeError):
    """The sending MTA could not be configured, started or handed a message; quotes Postfix's words."""


def available() -> str | None:
    """None if a real sending MTA can run here, else why not (a reason to skip, never a failure)."""
    reason = netns.available()
    if reason is not None:
        return f"a real sending MTA runs in a network namespace: {reason}"
    if shutil.which("postfix") is None or shutil.which("sendmail") is None:
        return "the real sending MTA is Postfix, which is not installed (Debian package postfix; `make mtas`)"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "the postfix user does not exist (install the Debian package postfix)"
    return None


@dataclass(frozen=True)
class Attempt:
    """What the sending MTA did with one recipient of a message: its last status line in its log."""

    recipient: str
    status: str  # sent, deferred, bounced, expired; "" if it logged nothing yet
    line: str

    @property
    def final(self) -> bool:
        return self.status in _FINAL


class PostfixSender:
    """Postfix as a lab host's sending MTA: configured, started in the host's namespace, handed
    messages, stopped."""

    mta = "Postfix"

    def __init__(self, config: LabConfig, host: Host, root: Path) -> None:
        self.config = config
        self.host = host
        self.root = root
        self.namespace: Namespace | None = None

    @property
    def log_path(self) -> Path:
        return self.root / "postfix.log"

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    def main_cf(self) -> dict[str, str]:
        fqdn = self.host.fqdn or f"{self.host.name}.invalid"
        domain = fqdn.split(".", 1)[1] if "." in fqdn else fqdn
        timers = self.config.timers
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(self.root / "spool"),
            "data_directory": str(self.root / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.root),
            "myhostname": fqdn,
            "mydomain": domain,
            "myorigin": "$mydomain",
            "inet_interfaces": self.host.address,
            "inet_protocols": "ipv4",
            "smtp_bind_address": self.host.address,
            "mydestination": "",
            "local_recipient_maps": "",
            "relay_domains": "",
            "mynetworks": "127.0.0.0/8",
            "append_dot_mydomain": "no",
            # The next hop from DNS alone: MX, then the exchanger's A record, never /etc/hosts.
            "smtp_host_lookup": "dns",
            "disable_dns_lookups": "no",
            "smtp_dns_support_level": "enabled",
            # Its own domain's bounces and notices go nowhere: the lab's fabrikam.com MX is this host.
            "transport_maps": f"inline:{{ {domain}=discard: }}",
            "queue_run_delay": f"{max(1, round(timers.intervals[0]))}s",
            "minimal_backoff_time": f"{max(1, round(timers.intervals[0]))}s",
            "maximal_backoff_time": f"{max(1, round(timers.intervals[-1]))}s",
            "smtp_connect_timeout": "5s",
        }

    def start(self, namespace: Namespace) -> None:
        self.namespace = namespace
        for folder in ("etc", "spool", "data"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        os.chown(self.root / "data", *namespace.user("postfix"))
        open_to_daemons(self.root)  # its daemons run as the postfix user
        if (etc := namespace.etc) is not None:
            # `ip netns exec` puts this namespace's files over /etc: no name of the lab resolves but by
            # DNS. (A container's /etc/hosts names only the container itself.)
            (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n", encoding="utf-8")
        main = "".join(f"{key} = {value}\n" for key, value in self.main_cf().items())
        (self.etc / "main.cf").write_text(main, encoding="utf-8")
        (self.etc / "master.cf").write_text(services(SERVER_ONLY), encoding="utf-8")
        master = namespace.daemon(f"postfix master ({self.host.name})")
        self._run("postfix", "-c", str(self.etc), "start")
        if (pid := pid_file(self.root / "spool" / "pid" / "master.pid")) is not None:
            master.started(pid)

    def stop(self) -> None:
        if self.namespace is None:
            return
        # abort, not stop: nothing left in its queue matters once the trace is over.
        subprocess.run(
            self.namespace.command(["postfix", "-c", str(self.etc), "abort"]),
            capture_output=True,
            check=False,
            timeout=30,
        )
        self.namespace = None

    def idle(self) -> bool:
        spool = self.root / "spool"
        return not any(path.is_file() for queue in _SPOOL_QUEUES for path in (spool / queue).rglob("*"))

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def send(self, sender: str, recipients: Sequence[str], message: bytes) -> None:
        """Hand a message to the MTA as a local program does: `sendmail -f sender -- recipients`."""
        argv = ["sendmail", "-C", str(self.etc), "-i", "-f", sender, "--", *recipients]
        self._run(*argv, stdin=message)

    def wait(self, recipients: Sequence[str], since: int, timeout: float) -> list[Attempt]:
        """Poll the MTA's log (from byte `since`) until each recipient has a final status (sent, bounced,
        expired) or `timeout` seconds have passed; the last status of each."""
        deadline = time.monotonic() + timeout
        while True:
            attempts = self.attempts(recipients, since)
            if all(a.final for a in attempts) or time.monotonic() >= deadline:
                return attempts
            time.sleep(0.05)

    def attempts(self, recipients: Sequence[str], since: int) -> list[Attempt]:
        last: dict[str, tuple[str, str]] = {}
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                text = log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            if (found := _STATUS.search(line)) is not None:
                last[found["rcpt"].lower()] = (found["status"], line)
        return [
            Attempt(rcpt, *last.get(rcpt.lower(), ("", f"no delivery attempt logged for {rcpt}")))
            for rcpt in recipients
        ]

    def _run(self, *argv: str, stdin: bytes | None = None) -> None:
        assert self.namespace is not None
        result = subprocess.run(
            self.namespace.command(argv), input=stdin, capture_output=True, check=False, timeout=60
        )
        if result.returncode != 0:
            words = (result.stderr or result.stdout).decode("utf-8", errors="replace").strip()
            if not words and self.log_path.exists():
                words = self.log_path.read_text(encoding="utf-8", errors="replace").strip()[-2000:]
            raise SenderError(
                f"{argv[0]} for the sending MTA on {self.host.name} failed (exit {result.returncode}): "
                f"{words or 'no output'}"
            )
