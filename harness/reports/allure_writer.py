"""Allure's result files, written by a background thread so that a trace's replay never waits for them.

allure-pytest writes each attachment and each result to its own file as soon as it is made: some twenty
files per trace, and on a busy disk that was a tenth of a trace's time. The files are the same; only the
writing moves to one thread of this process, which is drained before pytest ends, so the folder is whole
when `mailflow run` returns. A file that cannot be written is reported then, with the reason.

allure-pytest registers its writer in its own pytest_configure, with nothing to configure it by, so the
plugin's configure, which runs after it, puts this one in its place (`take_over`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import allure_commons
import pytest
from allure_commons.logger import INDENT, AllureFileLogger
from attr import asdict


class BackgroundFileLogger(AllureFileLogger):
    def __init__(self, report_dir: str, clean: bool) -> None:
        super().__init__(report_dir, clean)  # type: ignore[no-untyped-call]  # allure_commons has no hints
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="allure-writer")
        self._pending: list[Future[None]] = []

    def _later(self, write: Callable[..., None], *args: Any) -> None:
        self._pending.append(self._writer.submit(write, *args))
        self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]

    def _indent(self) -> int | None:
        return INDENT if os.environ.get("ALLURE_INDENT_OUTPUT") else None  # as allure-pytest's own

    def _report_item(self, item: Any) -> None:
        # The item is turned into data now (allure may change it once the hook returns); only the
        # file is written later.
        data = asdict(item, filter=lambda _, v: v or v is False)
        filename = item.file_pattern.format(prefix=os.urandom(16).hex())
        self._later(self._write_json, filename, data)

    def _write_json(self, filename: str, data: Any) -> None:
        partial = self._report_dir / f"{filename}.tmp"
        with open(partial, "w", encoding="utf8") as file:
            json.dump(data, file, indent=self._indent(), ensure_ascii=False)
        os.replace(partial, self._report_dir / filename)

    @allure_commons.hookimpl
    def report_attached_data(self, body: str | bytes, file_name: str) -> None:
        self._later(super().report_attached_data, body, file_name)

    def drain(self) -> None:
        """Wait for every file queued so far; say which could not be written."""
        pending, self._pending = self._pending, []
        failed = [error for f in pending if (error := f.exception()) is not None]
        if failed:
            print(
                f"mailflow: {len(failed)} Allure result file(s) could not be written to "
                f"{self._report_dir}: {failed[0]}",
                file=sys.stderr,
            )

    def close(self) -> None:
        self.drain()
        self._writer.shutdown(wait=True)


_WRITER = pytest.StashKey[BackgroundFileLogger]()


def drain(config: pytest.Config) -> None:
    """Wait for the files of this run (call at the end of the session: a pytest-xdist worker is stopped
    soon after it says it has finished, before its clean-up may have run)."""
    writer = config.stash.get(_WRITER, None)
    if writer is not None:
        writer.drain()


def take_over(config: pytest.Config) -> None:
    """Put this writer in the place of the one allure-pytest registered for `--alluredir` (call after
    allure-pytest's own pytest_configure). Before allure-pytest's clean-up, its own is put back, which
    that clean-up then unregisters as it expects."""
    manager = allure_commons.plugin_manager
    theirs = next((p for p in manager.get_plugins() if type(p) is AllureFileLogger), None)
    if theirs is None:
        return  # no --alluredir
    name = manager.get_name(theirs)
    manager.unregister(theirs)
    ours = BackgroundFileLogger(str(theirs._report_dir), clean=False)  # allure-pytest has cleaned it
    manager.register(ours)
    config.stash[_WRITER] = ours

    def put_back() -> None:
        manager.unregister(ours)
        manager.register(theirs, name=name)
        ours.close()

    config.add_cleanup(put_back)
