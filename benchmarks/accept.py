"""Benchmark: how fast EX1 accepts mail under 50 concurrent sessions, against a peer measured in the same
run — the Debian Postfix standing in for EX1 in the same lab (its network namespace), fed the same way.

Each session says HELO once, then sends message after message to a mailbox on EX1 until the time is up.
Accept latency is from the end of data (the final CRLF.CRLF written) to the reply read; messages/s
counts the 250s.

Run (as root, with Postfix installed for the peer): .venv/bin/python benchmarks/accept.py [SECONDS]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field

from harness import targets
from harness.lab import config as lab_config
from harness.lab.placement import relocation

SESSIONS = 50
SENDER = "ann@fabrikam.com"
RECIPIENT = "alice@contoso.com"  # a mailbox on EX1 itself
BODY = (
    b"From: ann@fabrikam.com\r\nTo: alice@contoso.com\r\nSubject: accept\r\n\r\n" + (b"x" * 76 + b"\r\n") * 26
)


@dataclass
class Figures:
    latencies: list[float] = field(default_factory=list)  # seconds, one per 250
    refused: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def ms(self, which: str) -> float:
        if which == "median":
            return statistics.median(self.latencies) * 1000
        if which == "p95":
            return statistics.quantiles(self.latencies, n=20)[18] * 1000
        return max(self.latencies) * 1000


async def _reply(reader: asyncio.StreamReader) -> str:
    """One whole reply, its lines joined; the last line has a space after the code."""
    lines = []
    while True:
        line = (await reader.readline()).decode("ascii", "replace")
        if not line:
            raise ConnectionError("the server closed the connection")
        lines.append(line.rstrip("\r\n"))
        if line[3:4] != "-":
            return "\n".join(lines)


async def _session(server: tuple[str, int], client: str, until: float, figures: Figures) -> None:
    # Plain streams, not an SMTP client library: the clock must start when the final dot is written,
    # and a library's DATA call also times the DATA command and its 354.
    reader, writer = await asyncio.open_connection(*server, local_addr=(client, 0))
    try:
        await _reply(reader)
        writer.write(b"HELO mail-out.fabrikam.com\r\n")
        await _reply(reader)
        while time.monotonic() < until:
            # One command at a time: after HELO, no PIPELINING was offered.
            writer.write(f"MAIL FROM:<{SENDER}>\r\n".encode())
            mail = await _reply(reader)
            writer.write(f"RCPT TO:<{RECIPIENT}>\r\n".encode())
            rcpt = await _reply(reader)
            if not (mail.startswith("250") and rcpt.startswith("250")):
                figures.refused += 1
                writer.write(b"RSET\r\n")
                await _reply(reader)
                continue
            writer.write(b"DATA\r\n")
            if not (await _reply(reader)).startswith("354"):
                figures.refused += 1
                continue
            writer.write(BODY + b".\r\n")
            await writer.drain()
            began = time.perf_counter()
            reply = await _reply(reader)
            if reply.startswith("250"):
                figures.latencies.append(time.perf_counter() - began)
            else:
                figures.refused += 1
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()


async def _load(server: tuple[str, int], client: str, seconds: float) -> Figures:
    figures = Figures()
    began = time.monotonic()
    await asyncio.gather(*(_session(server, client, began + seconds, figures) for _ in range(SESSIONS)))
    figures.seconds = time.monotonic() - began
    return figures


def measure(target: targets.Target, config: lab_config.LabConfig, seconds: float) -> Figures:
    with target.lab(config) as lab:
        ex1 = lab.config.organization.server("EX1").default_virtual_server
        client = lab.config.host("internet").address
        return asyncio.run(_load((ex1.address, ex1.port), client, seconds))


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    path = lab_config.lab_path("contoso")
    base, offset = relocation()
    reference = measure(
        targets.get("reference"), lab_config.load(path, base=base, port_offset=offset), seconds
    )
    peer_target = targets.get("postfix")
    why_not = peer_target.unavailable()
    print(f"accept latency, {SESSIONS} concurrent sessions for {seconds:g} s, to {RECIPIENT} on EX1")
    rows = [("reference MTA EX1", reference)]
    if why_not is None:
        netns_base, netns_offset = relocation(netns=True)
        rows.append(
            (
                "peer: Postfix as EX1",
                measure(
                    peer_target, lab_config.load(path, base=netns_base, port_offset=netns_offset), seconds
                ),
            )
        )
    for name, figures in rows:
        print(
            f"  {name:22} {len(figures.latencies):6d} accepted ({figures.refused} refused)  "
            f"{figures.rate:7.1f} msg/s   end of data to 250: median {figures.ms('median'):7.1f} ms  "
            f"p95 {figures.ms('p95'):7.1f} ms  max {figures.ms('max'):7.1f} ms"
        )
    if why_not is not None:
        print(f"  peer not measured: {why_not}")
        return
    peer = rows[1][1]
    print(
        f"  ratio reference/Postfix: msg/s {reference.rate / peer.rate:.2f}x, "
        f"median latency {reference.ms('median') / peer.ms('median'):.1f}x, "
        f"p95 latency {reference.ms('p95') / peer.ms('p95'):.1f}x"
    )


if __name__ == "__main__":
    main()
