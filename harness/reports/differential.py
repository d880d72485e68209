"""Differential replay: the same trace on two targets, the transcripts and outcomes masked
(`normalize`) and compared, so what differs is what the targets do, not when or where they ran."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from rich.markup import escape
from rich.table import Table

from harness.corpus.trace import Trace
from harness.lab import config as lab_config
from harness.lab.placement import relocation
from harness.run.runner import TraceResult, run_trace
from harness.smtp.masking import Masker
from harness.targets import Target


@dataclass
class Side:
    target: str
    sessions: list[list[str]] = field(default_factory=list)  # masked transcript lines per session
    outcome: list[str] = field(default_factory=list)  # "passed", or the masked failures


@dataclass
class TraceDiff:
    trace: str
    first: Side
    second: Side

    @property
    def differs(self) -> bool:
        return self.first.sessions != self.second.sessions or self.first.outcome != self.second.outcome

    def hunks(self, context: int = 2) -> list[tuple[str, list[str], list[str]]]:
        """(where, lines of the first, lines of the second) for every differing stretch."""
        found: list[tuple[str, list[str], list[str]]] = []
        pairs = list(zip(self.first.sessions, self.second.sessions, strict=False))
        for number, (left, right) in enumerate(pairs, start=1):
            matcher = difflib.SequenceMatcher(a=left, b=right, autojunk=False)
            for group in matcher.get_grouped_opcodes(context):
                a0, a1, b0, b1 = group[0][1], group[-1][2], group[0][3], group[-1][4]
                found.append((f"session {number}", left[a0:a1], right[b0:b1]))
        if len(self.first.sessions) != len(self.second.sessions):
            found.append(
                (
                    "sessions",
                    [f"{len(self.first.sessions)} session(s) run"],
                    [f"{len(self.second.sessions)} session(s) run"],
                )
            )
        if self.first.outcome != self.second.outcome:
            found.append(("outcome", self.first.outcome, self.second.outcome))
        return found


def masker_for(trace: Trace, target: Target) -> Masker:
    """A masker that names the lab's hosts where this trace's lab ran: in network namespaces for a target
    that needs them and for a trace with a real sending MTA (`via:`), as harness/run/runner.py places it."""
    base, offset = relocation(netns=target.needs_netns or bool(trace.senders), docker=target.in_docker)
    config = lab_config.load(trace.lab, base=base, port_offset=offset)
    return Masker({host.address: host.name for host in reversed(list(config.hosts.values()))})


def side(trace: Trace, target: Target, result: TraceResult) -> Side:
    masker = masker_for(trace, target)
    sessions = [masker.text(run.result.transcript).splitlines() for run in result.sessions]
    outcome = ["passed"] if result.passed else [masker.text(f) for f in result.failures()]
    return Side(target.name, sessions, outcome)


def compare(trace: Trace, first: Target, second: Target) -> TraceDiff:
    return TraceDiff(
        trace.id,
        side(trace, first, run_trace(trace, first)),
        side(trace, second, run_trace(trace, second)),
    )


def table(diff: TraceDiff) -> Table:
    """The differences of one trace side by side, as `mailflow diff` and `mailflow run --baseline` show
    them: where, then the first side's lines and the second's."""
    shown = Table(title=diff.trace, show_lines=True)
    shown.add_column("where")
    shown.add_column(diff.first.target)
    shown.add_column(diff.second.target)
    for where, left, right in diff.hunks():
        shown.add_row(where, escape("\n".join(left)), escape("\n".join(right)))
    return shown
