"""Named commit points where a crash is most likely to break exactly-once delivery, and the switch that
ends the process at one of them, so that each window can be tested by a real crash.

`MAILFLOW_CRASH_AT=<point>` (or `<point>:<n>`, the n-th time it is reached) makes the process exit at
once, with `EXIT_CODE`, when it reaches that point; without the variable nothing happens.
"""

from __future__ import annotations

import os
import sys
import threading

VARIABLE = "MAILFLOW_CRASH_AT"
EXIT_CODE = 86  # distinctive: no other way out of the process gives it

# AQ: one envelope turned into others, the outputs written and the input not yet removed.
CATEGORIZED = "aq.categorized"
ROUTED = "aq.routed"
NDR_SUBMITTED = "aq.ndr-submitted"
# AQ: a delivery done, and not yet recorded in the envelope.
NEXT_HOP_ACCEPTED = "aq.next-hop-accepted"
STORE_DELIVERED = "aq.store-delivered"
# The store: the message is in the mailbox, and its line is not yet in the mailbox's index.
STORE_FILE_WRITTEN = "store.file-written"
# The MTA and the gateway: a message's content moved on and its envelope not yet; the memos written
# to the foreign system and the message not yet out of MTS-OUT.
MTA_CONTENT_MOVED = "mta.content-moved"
GATEWAY_MEMOS_WRITTEN = "gateway.memos-written"

POINTS = (
    CATEGORIZED,
    ROUTED,
    NDR_SUBMITTED,
    NEXT_HOP_ACCEPTED,
    STORE_DELIVERED,
    STORE_FILE_WRITTEN,
    MTA_CONTENT_MOVED,
    GATEWAY_MEMOS_WRITTEN,
)

_lock = threading.Lock()  # points are reached from worker threads too
_counts: dict[str, int] = {}


def reached(point: str) -> None:
    """The process is at `point`: it ends here if `MAILFLOW_CRASH_AT` names it (and this is the n-th
    time)."""
    setting = os.environ.get(VARIABLE)
    if not setting:
        return
    name, _, nth = setting.partition(":")
    if name != point:
        return
    with _lock:
        _counts[point] = _counts.get(point, 0) + 1
        if _counts[point] < (int(nth) if nth.isdigit() else 1):
            return
    sys.stderr.write(f"crash point {point} reached: exiting with {EXIT_CODE}\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)  # no clean-up of any kind: as a kill -9 would leave it


def check(setting: str | None) -> str | None:
    """What is wrong with a `MAILFLOW_CRASH_AT` value, in the user's words (None if nothing)."""
    if not setting:
        return None
    name, colon, nth = setting.partition(":")
    if name not in POINTS:
        return f"{VARIABLE}={setting}: no crash point {name!r}; the points are {', '.join(POINTS)}"
    if colon and not (nth.isdigit() and int(nth) >= 1):
        return f"{VARIABLE}={setting}: the count after ':' must be a whole number from 1"
    return None
