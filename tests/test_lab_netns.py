"""The netns lab network: real namespaces, a real bridge and veth pairs, real sockets across them.

These tests need root (CAP_NET_ADMIN); without it they are skipped with the reason, and the error a user
gets is checked separately.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from harness.lab import netns
from harness.lab.netns import LabNetwork, NetnsError

REASON = netns.available()
needs_netns = pytest.mark.skipif(REASON is not None, reason=REASON or "")
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
SUBNET = ipaddress.IPv4Network(f"198.18.{200 + WORKER % 50}.0/24")


def host(number: int) -> str:
    return str(SUBNET.network_address + number)


def run_in(namespace: netns.Namespace, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        namespace.command([sys.executable, "-c", code]), capture_output=True, text=True, timeout=20
    )


def links() -> str:
    return subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


@needs_netns
def test_a_namespace_reaches_the_lab_hosts_and_nothing_else() -> None:
    with LabNetwork(SUBNET, "reach") as network:
        network.add_local(host(53))
        inside = network.add_namespace("EX1", host(11), host(53))
        with socket.create_server((host(53), 2525)) as server:

            def answer() -> None:
                connection, peer = server.accept()
                connection.sendall(f"hello {peer[0]}".encode())
                connection.close()

            threading.Thread(target=answer, daemon=True).start()
            connect = f"socket.create_connection(('{host(53)}', 2525), timeout=3)"
            reached = run_in(inside, f"import socket; print({connect}.recv(100).decode())")
        assert reached.stdout.strip() == f"hello {host(11)}", reached.stderr
        # No default route: an address outside the lab's /24 is unreachable, not merely unanswered.
        outside = run_in(inside, "import socket; socket.create_connection(('192.0.2.1', 25), timeout=2)")
        assert "Network is unreachable" in outside.stderr, outside.stderr
        # Its resolver is the lab's DNS.
        resolv = subprocess.run(inside.command(["cat", "/etc/resolv.conf"]), capture_output=True, text=True)
        assert f"nameserver {host(53)}" in resolv.stdout


@needs_netns
def test_everything_made_is_removed_again() -> None:
    with LabNetwork(SUBNET, "clean") as network:
        inside = network.add_namespace("EX2", host(21), host(53))
        bridge = network.state.bridge
        assert inside.name in namespaces() and bridge in links()
    assert inside.name not in namespaces()
    assert bridge not in links()
    assert not (netns.NETNS_ETC / inside.name).exists()
    assert not (netns.STATE_DIR / f"{network.lab_id}.json").exists()


@needs_netns
def test_a_lab_that_died_is_swept_by_the_next_one() -> None:
    # A child process makes a network and is killed before it can clean up.
    code = (
        "import ipaddress, sys, time; from harness.lab.netns import LabNetwork; "
        f"n = LabNetwork(ipaddress.IPv4Network('{SUBNET}'), 'dead').create(); "
        f"n.add_namespace('EX3', '{host(31)}', '{host(53)}'); print(n.lab_id, flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    lab_id = child.stdout.readline().strip()
    child.send_signal(signal.SIGKILL)
    child.wait()
    state = json.loads((netns.STATE_DIR / f"{lab_id}.json").read_text())
    assert state["namespaces"][0] in namespaces()
    assert lab_id in netns.sweep_stale()
    assert state["namespaces"][0] not in namespaces()
    assert state["bridge"] not in links()


@needs_netns
def test_only_a_slash_24_inside_the_benchmarking_range() -> None:
    with pytest.raises(NetnsError, match=r"198\.18\.0\.0/15"):
        LabNetwork(ipaddress.IPv4Network("10.0.0.0/24"))
    with pytest.raises(NetnsError, match="/24"):
        LabNetwork(ipaddress.IPv4Network("198.18.0.0/16"))
    with LabNetwork(SUBNET, "range") as network, pytest.raises(NetnsError, match="not in the lab network"):
        network.add_local("198.19.0.1")


def test_without_root_the_error_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NetnsError, match="needs root"):
        LabNetwork(SUBNET)
