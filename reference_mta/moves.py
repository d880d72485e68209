"""Moves of messages between folders that go on in the background (the gateway's and the MTA's).

A component with moves under way is busy, not idle, until they end; stopping it cancels them where they
are, and since every move is a durable rename (`durable`), each message then rests in one folder, for
the component's recovery at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterator
from typing import Any

log = logging.getLogger(__name__)


class Moves:
    def __init__(self) -> None:
        self._busy = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background; busy from now until it ends."""
        self._busy += 1
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            self._busy -= 1
            if not finished.cancelled() and finished.exception() is not None:
                # The message stays where the move found it; say why, or nobody would know.
                log.error("a move ended in an error", exc_info=finished.exception())

        task.add_done_callback(done)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Busy while a move runs in the caller's own task."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1

    async def cancel(self) -> None:
        """The moves under way end where they are."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def idle(self) -> bool:
        return not self._busy
