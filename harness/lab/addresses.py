"""Where lab hosts may live: the one rule every listener and every lab file is checked against.

In-process labs bind only inside 127.0.0.0/8; hosts inside network namespaces the lab creates itself
use 198.18.0.0/15 (RFC 2544's benchmarking range), on interfaces with no route out. Any other address
is refused before a socket is made.
"""

from __future__ import annotations

import ipaddress

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
NETNS = ipaddress.IPv4Network("198.18.0.0/15")
LAB_NETWORKS = (LOOPBACK, NETNS)


def is_lab_address(address: str | ipaddress.IPv4Address, *, loopback_only: bool = False) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    networks = (LOOPBACK,) if loopback_only else LAB_NETWORKS
    return isinstance(ip, ipaddress.IPv4Address) and any(ip in network for network in networks)


def check_endpoint(address: str, port: int) -> None:
    """Raise ValueError unless (address, port) is somewhere a lab host may listen."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not a lab address (not an IP address)") from None
    if not is_lab_address(address):
        raise ValueError(f"{address} is not a lab address (must be in 127.0.0.0/8 or 198.18.0.0/15)")
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
