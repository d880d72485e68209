"""Benchmark: how long a whole lab takes to start and stop, against a peer measured in the same run —
one bare aiosmtpd server started and stopped on loopback the same way (its own loop thread).

Run: .venv/bin/python benchmarks/lab_start.py [ROUNDS]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time

from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP

from harness.lab import config as lab_config
from harness.lab.runtime import Lab


def bare_aiosmtpd(port: int) -> float:
    began = time.perf_counter()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(
        loop.create_server(lambda: SMTP(Sink()), "127.66.0.1", port), loop
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
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    config = lab_config.load(lab_config.lab_path("contoso"), base="127.66.0.0", port_offset=21000)
    hosts = len(config.hosts)
    lab_round(config)  # warm imports and caches
    starts, totals, peers = [], [], []
    for _ in range(rounds):
        started, total = lab_round(config)
        starts.append(started)
        totals.append(total)
        peers.append(bare_aiosmtpd(21025))
    start_ms = statistics.median(starts) * 1000
    total_ms = statistics.median(totals) * 1000
    peer_ms = statistics.median(peers) * 1000
    print(
        f"contoso lab ({hosts} hosts, {len(config.organization.servers)} Exchange servers), {rounds} rounds"
    )
    print(f"  lab start          median {start_ms:7.1f} ms   (max {max(starts) * 1000:.1f} ms)")
    print(f"  lab start + stop   median {total_ms:7.1f} ms")
    print(f"  peer: one bare aiosmtpd server start + stop   median {peer_ms:7.2f} ms")
    print(f"  ratio lab/peer (start + stop): {total_ms / peer_ms:.1f}x")


if __name__ == "__main__":
    main()
