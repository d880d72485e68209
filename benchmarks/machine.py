"""The machine a run measured on, and the one-line summary each benchmark ends with."""

from __future__ import annotations

import datetime
import os
import platform


def describe() -> str:
    cores = os.cpu_count() or 0
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    return f"{cores} cores, {platform.machine()}, {today}"


def summary(script: str, figures: str) -> str:
    return f"{script}: {figures} [{describe()}]"
