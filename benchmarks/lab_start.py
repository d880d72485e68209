"""Benchmark: how long a whole lab takes to start and stop, against a peer measured in the same run —
one bare aiosmtpd server started and stopped on loopback the same way (its own loop thread).

Run from the repository root: python -m benchmarks.lab_start [ROUNDS] (the lab goes where
MAILFLOW_LAB_BASE and MAILFLOW_PORT_OFFSET say, else to 127.66.0.0 with ports moved up 21000)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time

from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP

from benchmarks import machine, options, runner
from harness.lab import config as lab_config
from harness.lab.placement import relocation
from harness.lab.runtime import Lab


def bare_aiosmtpd(address: str, port: int) -> float:
    began = time.perf_counter()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(
        loop.create_server(lambda: SMTP(Sink()), address, port), loop
    ).result()
    server.close()
    asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
    return time.perf_counter() - began


def lab_round(config: lab_config.LabConfig) -> tuple[float, float]:
    began = time.perf_counter()
    lab = Lab(config).start()
    started = lab.started_in
    lab.stop()
    return started, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.lab_start", description="a whole lab's start and stop against aiosmtpd's"
    )
    parser.add_argument("rounds", nargs="?", type=options.positive_int, default=20, help="default 20")
    rounds = parser.parse_args().rounds
    try:
        base, offset = relocation()
    except ValueError as exc:
        sys.exit(f"lab_start: {exc}")
    config = lab_config.load(
        lab_config.lab_path("contoso"),
        base=base or "127.66.0.0",
        port_offset=offset if offset is not None else 21000,
    )
    hosts = len(config.hosts)

    def measure() -> list[str]:
        lab_round(config)  # warm imports and caches
        starts, totals, peers = [], [], []
        for _ in range(rounds):
            started, total = lab_round(config)
            starts.append(started)
            totals.append(total)
            # An address of the lab's block that no lab host takes, on the lab's SMTP port.
            peers.append(bare_aiosmtpd(str(config.base + 250), config.port(25)))
        start_ms = statistics.median(starts) * 1000
        total_ms = statistics.median(totals) * 1000
        peer_ms = statistics.median(peers) * 1000
        return [
            f"contoso lab ({hosts} hosts, {len(config.organization.servers)} Exchange servers), "
            f"{rounds} rounds",
            f"  lab start          median {start_ms:7.1f} ms   (max {max(starts) * 1000:.1f} ms)",
            f"  lab start + stop   median {total_ms:7.1f} ms (the folder is removed in the background)",
            f"  peer: one bare aiosmtpd server start + stop   median {peer_ms:7.2f} ms",
            f"  ratio lab/peer (start + stop): {total_ms / peer_ms:.1f}x",
            machine.summary(
                "lab_start",
                f"contoso lab start + stop median {total_ms:.1f} ms (start {start_ms:.1f} ms), bare aiosmtpd "
                f"{peer_ms:.2f} ms; ratio {total_ms / peer_ms:.1f}x",
            ),
        ]

    runner.run("lab_start", measure)


if __name__ == "__main__":
    main()
