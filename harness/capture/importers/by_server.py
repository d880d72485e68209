"""Which sessions of a capture are the production server's: a capture taken on a mail server holds the
sessions clients opened to it, the server's own deliveries to next hops (it is the client there), and
perhaps sessions between other hosts on the same wire. Only the first are replayed against the lab
server; the server's own deliveries show where an accepted message went (`harness.capture.importers.outcome`).

Without a server address, a capture whose sessions go to one address is taken whole; one with sessions
to several is refused with the addresses found, since replaying every one of them against one lab server
would mix the production server's sessions with those it opened itself.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness.capture.importers import BadInput
from harness.capture.recorded import RecordedSession


@dataclass
class Selection:
    sessions: list[RecordedSession] = field(default_factory=list)  # to the server: replayed
    onward: list[RecordedSession] = field(default_factory=list)  # the server's own, to its next hops
    others: list[RecordedSession] = field(default_factory=list)  # between other hosts

    def left_out(self) -> list[str]:
        """What was left out, in words, for the user."""
        said = []
        if self.onward:
            hops = sorted({s.server for s in self.onward})
            said.append(
                f"left out {_count(len(self.onward))} the server opened itself (its deliveries to "
                f"{', '.join(hops)})"
            )
        if self.others:
            servers = Counter(s.server for s in self.others)
            listed = ", ".join(f"{a} ({_count(n)})" for a, n in sorted(servers.items()))
            said.append(f"left out {_count(len(self.others))} to other servers: {listed}")
        return said


def normalized(address: str) -> str:
    """An IP address in its one canonical spelling (IPv6 has many); `ValueError` if it is none."""
    return str(ipaddress.ip_address(address.strip("[]")))


def select(sessions: list[RecordedSession], server_address: str | None, source: Path) -> Selection:
    """The sessions to `server_address` and the rest, sorted out; `BadInput` when the choice cannot be
    made from the capture (no session to that address, or several servers and no address given)."""
    if not sessions:
        return Selection()
    servers = Counter(normalized(s.server) for s in sessions)
    if server_address is None:
        if len(servers) > 1:
            raise BadInput(
                source,
                "",
                f"the capture holds sessions to {len(servers)} servers: {_listed(servers, sessions)}; "
                "choose the production server with --server-addr",
            )
        return Selection(sessions=list(sessions))
    wanted = normalized(server_address)
    if wanted not in servers:
        raise BadInput(
            source,
            "",
            f"no session to {wanted} in the capture; the servers found: {_listed(servers, sessions)}",
        )
    selection = Selection()
    for session in sessions:
        if normalized(session.server) == wanted:
            selection.sessions.append(session)
        elif normalized(session.client) == wanted:
            selection.onward.append(session)
        else:
            selection.others.append(session)
    return selection


def _listed(servers: Counter[str], sessions: list[RecordedSession]) -> str:
    clients = Counter(normalized(s.client) for s in sessions)
    parts = []
    for address, count in servers.most_common():
        own = f", and it opened {_count(clients[address])} itself" if clients[address] else ""
        parts.append(f"{address} ({_count(count)} to it{own})")
    return "; ".join(parts)


def _count(n: int) -> str:
    return f"{n} session{'s' if n != 1 else ''}"
