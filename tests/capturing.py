"""tcpdump on lo for the importer tests: a real capture of what a lab session put on the wire."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import dpkt
import pytest

from harness.capture.importers import BadInput, pcap


class Tcpdump:
    """tcpdump on lo writing what matches `expression` to `path`, from when it says it listens until
    `stop_when` sees the connections it waits for closed in the file."""

    def __init__(self, path: Path, expression: str) -> None:
        if shutil.which("tcpdump") is None:
            pytest.skip("tcpdump is not installed (scripts/install_mtas.sh installs it)")
        if os.geteuid() != 0:
            pytest.skip("capturing on lo with tcpdump needs root")
        self.path = path
        # --immediate-mode and -U: packets reach the file as they come, not when a kernel buffer block
        # fills; -Z root: pytest's folders are not writable by the tcpdump user it would switch to;
        # -B: a larger capture buffer (KiB), so a burst of small segments is less likely to be lost.
        options = ["-i", "lo", "--immediate-mode", "-B", "16384", "-U", "-Z", "root", "-w", str(path)]
        self.process = subprocess.Popen(
            ["tcpdump", *options, expression], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if b"listening on" in line:
                break
        else:
            pytest.fail(f"tcpdump did not start (exit {self.process.wait()})")

    def stop_when(self, closed: int, ports: list[int], deadline: float = 10.0) -> None:
        """Stop once the file holds `closed` SMTP sessions on `ports` whose end (FIN or RST) was
        captured, or when the deadline passes (the test then sees what is missing)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                capture = pcap.read(self.path, ports)
            except BadInput:  # the file header not written yet
                capture = None
            if capture is not None and capture.cut is None and len(capture.sessions) >= closed:
                break
            time.sleep(0.05)  # the interval of a poll bounded by the deadline, not a synchronisation
        self.process.terminate()
        self.process.wait(timeout=10)


def frame(source: tuple[str, int], destination: tuple[str, int], seq: int, flags: int, data: bytes) -> bytes:
    """One TCP segment in an Ethernet frame, as a capture file holds it."""
    segment = dpkt.tcp.TCP(sport=source[1], dport=destination[1], seq=seq, flags=flags, data=data)
    packet = dpkt.ip.IP(
        src=bytes(map(int, source[0].split("."))),
        dst=bytes(map(int, destination[0].split("."))),
        p=dpkt.ip.IP_PROTO_TCP,
        data=segment,
    )
    return bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=packet))
