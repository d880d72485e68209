"""The services of Postfix's master.cf, one table for every Postfix the lab runs: the stand-in for a
server (harness/targets/postfix.py) and the real sending MTA (harness/lab/sender.py). None is chrooted:
a chroot would hide the network namespace's resolv.conf (and the stand-in's Maildir base) from the
daemons."""

from __future__ import annotations

from collections.abc import Iterable

# (service name, its master.cf line), in master.cf's order.
_TABLE = (
    ("pickup", "pickup unix n - n 60 1 pickup"),
    ("cleanup", "cleanup unix n - n - 0 cleanup"),
    ("qmgr", "qmgr unix n - n 1 1 qmgr"),
    ("rewrite", "rewrite unix - - n - - trivial-rewrite"),
    ("bounce", "bounce unix - - n - 0 bounce"),
    ("defer", "defer unix - - n - 0 bounce"),
    ("trace", "trace unix - - n - 0 bounce"),
    ("verify", "verify unix - - n - 1 verify"),
    ("flush", "flush unix n - n 1000? 0 flush"),
    ("proxymap", "proxymap unix - - n - - proxymap"),
    ("proxywrite", "proxywrite unix - - n - 1 proxymap"),
    ("smtp", "smtp unix - - n - - smtp"),
    ("relay", "relay unix - - n - - smtp"),
    ("showq", "showq unix n - n - - showq"),
    ("error", "error unix - - n - - error"),
    ("retry", "retry unix - - n - - error"),
    ("discard", "discard unix - - n - - discard"),
    ("local", "local unix - n n - - local"),
    ("virtual", "virtual unix - n n - - virtual"),
    ("lmtp", "lmtp unix - - n - - lmtp"),
    ("anvil", "anvil unix - - n - 1 anvil"),
    ("scache", "scache unix - - n - 1 scache"),
    ("postlog", "postlog unix-dgram n - n - 1 postlogd"),
    ("tlsmgr", "tlsmgr unix - - n 1000? 1 tlsmgr"),
)
# What a server keeps besides sending: mailboxes, proxied tables it writes, TLS session caches.
SERVER_ONLY = frozenset({"proxywrite", "local", "virtual", "lmtp", "tlsmgr"})


def services(leave_out: Iterable[str] = ()) -> str:
    """The master.cf service lines, in their order, without those named in `leave_out`."""
    skipped = frozenset(leave_out)
    return "".join(f"{line}\n" for name, line in _TABLE if name not in skipped)
