"""Targets: what stands in for the server under test. Each declares its capabilities, and a trace that
requires one a target lacks is skipped with the reason.

`reference` runs every Exchange server of the lab as the reference MTA, so everything is visible
(white box: tracking logs, LDAP log, queues, mailbox stores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.lab.config import LabConfig
from harness.lab.runtime import Lab


@dataclass(frozen=True)
class Target:
    name: str
    capabilities: frozenset[str]
    description: str

    def missing(self, requires: frozenset[str]) -> list[str]:
        return sorted(requires - self.capabilities)

    def lab(self, config: LabConfig, workdir: Path | None = None) -> Lab:
        return Lab(config, workdir, reference_servers=True)


REFERENCE = Target(
    name="reference",
    capabilities=frozenset({"tracking", "ldap_log", "mailbox", "queues", "reference"}),
    description="the reference MTA (Exchange 2003 model) runs every server of the lab",
)

TARGETS = {REFERENCE.name: REFERENCE}


def get(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; known targets: {', '.join(sorted(TARGETS))}") from None
