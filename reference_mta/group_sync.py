"""Group commit of a folder's entries: one fsync of the folder for every rename and unlink made in
it before that fsync began, shared by all the threads that asked meanwhile.

Concurrent sessions each wrote their files and then synced the queue folder on their own; the
folder's fsyncs queued one behind the other, and each message waited for all of them. A folder fsync
makes durable every change to the folder made before it starts, so a caller only needs one that
starts after its own changes: the first caller starts one, and those who ask while it runs wait for
it to end and then share the next. No library does this for a plain folder (database engines do it
inside their own log), hence the few lines here.
"""

from __future__ import annotations

import threading
from pathlib import Path

from reference_mta.durable import sync_folder


class FolderSync:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._changed = threading.Condition()
        self._begun = 0  # folder fsyncs begun
        self._ended = 0  # the latest fsync that ended well (by the order they began)
        self._running = False

    def sync(self) -> None:
        """Returns once a folder fsync that began after this call has ended: every change the caller
        made in the folder before calling is durable. An error of the fsync that would have covered
        the caller's changes is raised to the caller that ran it; the others try again."""
        with self._changed:
            wanted = self._begun + 1  # the first fsync to begin from now on
            while self._ended < wanted:
                if self._running:
                    self._changed.wait()
                    continue
                self._running = True
                self._begun += 1
                this = self._begun
                try:
                    self._changed.release()
                    try:
                        sync_folder(self.path)
                    finally:
                        self._changed.acquire()
                    self._ended = this
                finally:
                    self._running = False
                    self._changed.notify_all()
