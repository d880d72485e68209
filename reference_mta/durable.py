"""Files written and moved so that a crash at any moment leaves each one whole, in one folder only."""

from __future__ import annotations

import os
from pathlib import Path


def move(source: Path, target: Path) -> None:
    """An atomic rename, made durable: after a crash the file is in one folder or the other."""
    os.replace(source, target)
    sync_folder(target.parent)


def write(path: Path, data: bytes) -> None:
    """Written under a temporary name (no reader's pattern matches it) and renamed into place: a reader
    never sees half a file, and writing the same name again replaces it."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    move(temporary, path)


def sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
