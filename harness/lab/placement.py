"""Where this process's labs go: the loopback block or namespace /24 of each pytest-xdist worker, moved
by MAILFLOW_LAB_BASE, MAILFLOW_PORT_OFFSET and MAILFLOW_NETNS_SUBNET, so that labs run side by side."""

from __future__ import annotations

import ipaddress
import os
import re

_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def relocation(netns: bool = False, docker: bool = False) -> tuple[str | None, int | None]:
    """The address base and port offset for this process's labs (None: the lab file's own).

    Each pytest-xdist worker gets its own address block so labs run side by side: worker gwN uses
    127.(101 + N).0.0, or, when MAILFLOW_LAB_BASE is set, that base with its second octet moved up by N
    (otherwise every worker would get the same base and their labs would clash). A lab with servers in
    network namespaces lives on 198.18.(10 + N).0/24 with standard ports (a real MTA looks up MX records
    on port 53 and delivers to port 25), or on 198.18.(MAILFLOW_NETNS_SUBNET + N).0/24.
    """
    match = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    if docker:
        # Docker labs take 198.19.0.0/16, the other half of the benchmarking range: never a /24 that
        # a netns lab's bridge holds at the same time.
        worker = int(match[1]) if match else 0
        first = docker_first_octet()
        return f"198.19.{first + worker % (256 - first)}.0", 0
    if netns:
        worker = int(match[1]) if match else 0
        first = netns_first_octet()
        return f"198.18.{first + worker % (256 - first)}.0", 0
    base = os.environ.get("MAILFLOW_LAB_BASE") or None
    if base is not None:
        _loopback_base(base)
    if match is not None:
        worker = int(match[1])
        base = f"127.{101 + worker % 150}.0.0" if base is None else _shifted(base, worker)
    return base, _port_offset()


def _port_offset() -> int | None:
    value = os.environ.get("MAILFLOW_PORT_OFFSET", "")
    if not value:
        return None
    if not value.isdigit() or int(value) > 65000:
        raise ValueError(f"MAILFLOW_PORT_OFFSET={value!r} is not a port offset (a number, e.g. 10000)")
    return int(value)


def docker_first_octet() -> int:
    """MAILFLOW_DOCKER_SUBNET moves Docker labs to 198.19.N.0/24 and up (one /24 per worker)."""
    value = os.environ.get("MAILFLOW_DOCKER_SUBNET", "10")
    if not value.isdigit() or not 1 <= int(value) <= 250:
        raise ValueError(f"MAILFLOW_DOCKER_SUBNET={value!r} is not a number from 1 to 250 (198.19.N.0/24)")
    return int(value)


def netns_first_octet() -> int:
    """MAILFLOW_NETNS_SUBNET moves namespace labs to 198.18.N.0/24 and up, so that two runs on one
    machine (each numbering its workers from 0) do not put the same /24 on two bridges."""
    value = os.environ.get("MAILFLOW_NETNS_SUBNET", "10")
    if not value.isdigit() or not 1 <= int(value) <= 250:
        raise ValueError(f"MAILFLOW_NETNS_SUBNET={value!r} is not a number from 1 to 250 (198.18.N.0/24)")
    return int(value)


def _loopback_base(base: str) -> ipaddress.IPv4Address:
    try:
        address = ipaddress.IPv4Address(base)
    except ValueError:
        raise ValueError(f"MAILFLOW_LAB_BASE={base!r} is not an IPv4 address") from None
    if address not in _LOOPBACK:
        raise ValueError(f"MAILFLOW_LAB_BASE={base} is outside 127.0.0.0/8: a lab only binds on loopback")
    return address


def _shifted(base: str, worker: int) -> str:
    address = _loopback_base(base)
    moved = int(address) + (worker << 16)
    if moved > int(_LOOPBACK.broadcast_address):
        raise ValueError(
            f"MAILFLOW_LAB_BASE={base} moved up {worker} in the second octet for pytest-xdist worker "
            f"gw{worker} leaves 127.0.0.0/8; choose a lower base"
        )
    return str(ipaddress.IPv4Address(moved))
