"""What the lab's hosts remember of what they saw (DNS and LDAP queries, an Internet sink's messages
and sessions), kept to a fixed number of entries.

Bounded rather than cleared between traces: the runner gives each trace a lab of its own, so a trace's
evidence starts from an empty log anyway, while `mailflow lab up` may run for hours under load with no
trace boundary to clear at. Only the oldest entries go, and how many went is counted, so that whoever
reads the log can tell a complete one from a cut one.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Final, Generic, TypeVar

# Far above what one trace makes (tens of queries, a few messages); a long run under load keeps its
# most recent minutes.
DEFAULT_LIMIT: Final = 10_000

T = TypeVar("T")


class BoundedLog(Generic[T]):
    """The most recent `limit` entries in arrival order, and a count of the older ones dropped.
    Safe to use from several threads (the global catalog answers from the LDAP server's thread)."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"a query log keeps at least 1 entry, not {limit}")
        self.limit = limit
        self._entries: deque[T] = deque(maxlen=limit)
        self._dropped = 0
        self._lock = threading.Lock()

    def append(self, entry: T) -> None:
        with self._lock:
            if len(self._entries) == self.limit:
                self._dropped += 1
            self._entries.append(entry)

    def entries(self) -> list[T]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._dropped = 0

    @property
    def dropped(self) -> int:
        """Older entries dropped to stay within `limit`, since the log was made or cleared."""
        with self._lock:
            return self._dropped

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
