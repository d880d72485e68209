"""Command-line options shared by the benchmarks: argparse gives the usage line and exit status 2 on a
wrong value; these types say what a valid value looks like."""

from __future__ import annotations

import argparse
import re

_SIZE = re.compile(r"(\d+)\s*([KM]?)B?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024 * 1024}


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def positive_ints(text: str) -> list[int]:
    """A comma-separated list such as 1,10."""
    return [positive_int(part.strip()) for part in text.split(",")]


def byte_size(text: str) -> int:
    """A size such as 2048, 10K or 25M (K and M are 1024 and 1024 * 1024 bytes)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or int(match[1]) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: give bytes, or K or M, e.g. 2048, 10K, 25M"
        )
    return int(match[1]) * _UNITS[match[2].upper()]


def byte_sizes(text: str) -> list[int]:
    """A comma-separated list such as 10K,1M,10M,25M."""
    return [byte_size(part) for part in text.split(",")]


def shown_size(size: int) -> str:
    for unit in ("M", "K"):
        if size >= _UNITS[unit] and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]} {unit}B"
    return f"{size} B"
