"""A crash test of the reference MTA (`mailflow chaos`): concurrent SMTP clients send to the first
server's default virtual server while the lab process (`mailflow lab up`, a child process) is killed
with SIGKILL at random moments and started again on the same folder; then the queues drain and every
acknowledged message is accounted for (`chaos_accounting.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

import aiosmtplib

from harness.lab import control
from harness.lab.config import LabConfig
from harness.run.chaos_accounting import (
    Sent,
    Tally,
    deliveries,
    leftovers,
    queued_messages,
    store_repeats,
    tally,
)
from harness.run.chaos_recipients import ChaosSetupError, Recipients, recipients

# How long one attempt to reach the virtual server may take before the next: a lab being started
# refuses connections at once, so the probe spins quickly until it answers.
_PROBE_TIMEOUT = 2.0
_PROBE_EVERY = 0.02
_POLL_EVERY = 0.2


class ChaosBroken(RuntimeError):
    """The lab did not start, or stopped answering."""


@dataclass(frozen=True)
class Settings:
    kills: int
    senders: int = 6
    seed: int = 0
    interval: float = 1.5  # mean seconds between the lab answering and the next kill
    drain_timeout: float = 120.0
    start_timeout: float = 60.0
    internet: str | None = None  # an Internet address (a lab sink receives it), or none
    client: str = "relay-host"  # the lab client whose address the senders bind


@dataclass
class Outcome:
    books: Tally
    restarts: list[float] = field(default_factory=list)  # seconds from spawn to the EHLO answer
    leftovers: list[Path] = field(default_factory=list)
    repeats: int = 0  # deliveries the mailbox stores dropped as repeats
    drained: bool = True

    @property
    def restart_median(self) -> float:
        return statistics.median(self.restarts) if self.restarts else 0.0

    @property
    def restart_max(self) -> float:
        return max(self.restarts, default=0.0)


class LabChild:
    """`mailflow lab up` in a process of its own, on one folder, killed and started again."""

    def __init__(self, config: LabConfig, workdir: Path, base: str | None, client: str) -> None:
        self.workdir = workdir
        vs = config.organization.servers[0].default_virtual_server
        self.address, self.port, self.client = vs.address, vs.port, client
        placement = ["--base", base, "--port-offset", str(config.port_offset)] if base else []
        self.command = [sys.executable, "-m", "harness.cli", "lab", "up", "--workdir", str(workdir)]
        self.command += [*placement, str(config.path)]
        self.log = workdir.parent / "lab-up.log"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float) -> float:
        """Spawn the lab; return how long it took until the virtual server answered EHLO."""
        began = time.monotonic()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C at the terminal reaches this process, which stops the lab.
                start_new_session=True,
                env=os.environ | {"COLUMNS": "150"},
            )
        while time.monotonic() - began < timeout:
            if self.process.poll() is not None:
                raise ChaosBroken(f"the lab exited with {self.process.returncode} on start: {self.tail()}")
            if await self.answers():
                return time.monotonic() - began
            await asyncio.sleep(_PROBE_EVERY)
        raise ChaosBroken(f"the lab did not answer EHLO within {timeout:g} s: {self.tail()}")

    async def answers(self) -> bool:
        smtp = aiosmtplib.SMTP(
            hostname=self.address,
            port=self.port,
            source_address=(self.client, 0),
            timeout=_PROBE_TIMEOUT,
            start_tls=False,
        )
        try:
            await smtp.connect()
            await smtp.ehlo()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            return False
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await smtp.quit()
        return True

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, its orderly end (SIGINT would be ignored in a background job); SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return " | ".join(text.strip().splitlines()[-5:]) or "(no output)"


def _message(msgid: str, sender: str, to: list[str], body: str) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = f"chaos {msgid}"
    message["Date"] = formatdate()
    message["Message-ID"] = f"<{msgid}>"
    message.set_content(body)
    return message.as_bytes().replace(b"\n", b"\r\n")


async def _sender(
    index: int, child: LabChild, who: Recipients, rng: random.Random, ledger: list[Sent], stop: asyncio.Event
) -> None:
    run = uuid.uuid4().hex[:8]
    number = 0
    while not stop.is_set():
        number += 1
        msgid = f"chaos-{run}-{index}-{number}@mailflow.invalid"
        chosen = who.pick(rng)
        content = _message(msgid, who.sender, list(chosen), f"message {number} of sender {index}\n")
        smtp = aiosmtplib.SMTP(
            hostname=child.address,
            port=child.port,
            source_address=(child.client, 0),
            timeout=10,
            start_tls=False,
        )
        refused: dict[str, aiosmtplib.SMTPResponse] = {}
        acknowledged = False
        try:
            await smtp.connect()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            # The lab is down or starting: nothing was sent; try again a moment later rather than spin.
            await asyncio.sleep(0.05)
            continue
        try:
            refused, _ = await smtp.sendmail(who.sender, list(chosen), content)
            acknowledged = True
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        finally:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.quit()
        owed = tuple(m for r, members in chosen.items() if r not in refused for m in members)
        ledger.append(Sent(msgid, owed, acknowledged))


async def _drained(workdir: Path, timeout: float) -> bool:
    """Polls the lab's queues until every one is empty twice running (a message moving between queues
    is in neither for an instant), or the deadline passes."""
    deadline = time.monotonic() + timeout
    empty_in_a_row = 0
    while time.monotonic() < deadline:
        try:
            rows = await asyncio.to_thread(control.request, workdir, {"op": "queues"}, 10.0)
            empty = all(row["count"] == 0 for row in rows)
        except control.ControlError:
            empty = False
        empty_in_a_row = empty_in_a_row + 1 if empty else 0
        if empty_in_a_row >= 2:
            return True
        await asyncio.sleep(_POLL_EVERY)
    return False


async def _run(settings: Settings, child: LabChild, who: Recipients, outcome: Outcome) -> list[Sent]:
    rng = random.Random(settings.seed)
    outcome.restarts.clear()
    await child.start(settings.start_timeout)
    ledger: list[Sent] = []
    stop = asyncio.Event()
    senders = [
        asyncio.create_task(_sender(i, child, who, random.Random(f"{settings.seed}/{i}"), ledger, stop))
        for i in range(settings.senders)
    ]
    try:
        for _ in range(settings.kills):
            # The moment of each kill is the test's own random schedule, not a wait for anything.
            await asyncio.sleep(rng.uniform(0.5, 1.5) * settings.interval)
            child.kill()
            outcome.restarts.append(await child.start(settings.start_timeout))
        await asyncio.sleep(settings.interval)  # load on the last start too
    finally:
        stop.set()
        await asyncio.gather(*senders, return_exceptions=True)
    outcome.drained = await _drained(child.workdir, settings.drain_timeout)
    return ledger


def run(settings: Settings, config: LabConfig, workdir: Path, base: str | None) -> Outcome:
    """The whole test; the lab is stopped whatever happens (a Ctrl-C too)."""
    who = recipients(config, settings.internet)
    try:
        client = config.host(settings.client).address
    except KeyError:
        names = ", ".join(h.name for h in config.clients)
        raise ChaosSetupError(
            f"lab {config.name} has no client {settings.client!r}; clients: {names}"
        ) from None
    child = LabChild(config, workdir, base, client)
    outcome = Outcome(Tally())
    try:
        ledger = asyncio.run(_run(settings, child, who, outcome))
    finally:
        child.stop()
    outcome.books = tally(ledger, deliveries(workdir), queued_messages(workdir))
    outcome.leftovers = leftovers(workdir)
    outcome.repeats = store_repeats(workdir)
    return outcome
