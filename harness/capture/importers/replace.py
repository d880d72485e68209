"""Writing imported traces and their message files over files that may already exist, so that a failed
write loses nothing: each file in the way is moved aside first, and put back if the write fails."""

from __future__ import annotations

from pathlib import Path


class Replacement:
    """The files one import writes. `place(path)` before writing each; then `undo()` if anything failed
    (what was written goes, what it replaced comes back) or `done()` (what it replaced goes)."""

    def __init__(self) -> None:
        self.created: list[Path] = []
        self._aside: list[tuple[Path, Path]] = []  # (the file as it was, moved aside; where it belongs)

    def place(self, path: Path) -> Path:
        if path.exists() and path not in self.created:
            aside = path.with_name(f".{path.name}.before-import")
            path.replace(aside)
            self._aside.append((aside, path))
        self.created.append(path)
        return path

    def undo(self) -> None:
        for path in self.created:
            path.unlink(missing_ok=True)
        for aside, path in self._aside:
            aside.replace(path)

    def done(self) -> None:
        for aside, _ in self._aside:
            aside.unlink(missing_ok=True)
