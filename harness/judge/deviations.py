"""Known deviations of a target: reply mismatches that differ from Exchange 2003 but conform to the
RFCs, each with its reason, in `harness/targets/deviations/<target>.yaml`. The replay tolerates them
(the session goes on) and the conformance matrix shows them as deviations, not failures."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import yaml

# A target's known deviations: the reason a reply mismatch is tolerated, or None if it is a failure.
Tolerate = Callable[[str], str | None]


@dataclass(frozen=True)
class Deviation:
    failure: re.Pattern[str]  # matched against one failure line of a trace
    reason: str
    traces: tuple[str, ...] = ()  # trace-id prefixes it is limited to; empty: every trace


def deviations(target: str) -> list[Deviation]:
    """The known deviations of a target (`postfix:EX2` shares postfix's); none if it has no file."""
    name = f"{target.partition(':')[0]}.yaml"
    folder = resources.files("harness.targets").joinpath("deviations")
    source = folder.joinpath(name)
    if not source.is_file():
        return []
    raw = yaml.safe_load(source.read_text(encoding="utf-8")) or []
    return [
        Deviation(re.compile(item["failure"]), item["reason"], tuple(item.get("traces") or ()))
        for item in raw
    ]
