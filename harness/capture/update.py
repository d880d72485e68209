"""`mailflow run --update`: a trace whose replies changed gets its expectations rewritten to what the
server said, explicitly and visibly (a unified diff of the file), never silently.

Only the lines of the `expect` steps that failed change, so a hand-written trace keeps its comments and
layout; each becomes the recorded form, the reply's code and its masked text (harness/capture/recorded.py). A
replay stops at its first mismatch, so the trace is replayed again after each rewrite until it passes or
a mismatch cannot be rewritten.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from harness.capture.recorded import expectation
from harness.corpus.script import Expect
from harness.corpus.trace import Session, Trace, load
from harness.corpus.writer import flow
from harness.run.runner import TraceResult
from harness.yamlsource import SourceError

# An expect step written on one line: its value on the same line as the key.
_ONE_LINE_EXPECT = re.compile(
    r"^(?P<head>[ \t]*-[ \t]*expect:[ \t]*)(?P<value>[^ \t\r\n#][^\r\n]*)(?P<end>\r?\n)?$"
)


@dataclass(frozen=True)
class Update:
    path: Path
    diff: str
    problems: tuple[str, ...] = ()  # mismatches that could not be rewritten, and why


def rewrite(trace: Trace, result: TraceResult) -> Update:
    """Rewrite the failed expect steps of `trace`'s file with the replies `result` got."""
    before = trace.path.read_text(encoding="utf-8")
    lines = before.splitlines(keepends=True)
    problems: list[str] = []
    for number, run in enumerate(result.sessions):
        item = trace.sessions[number] if number < len(trace.sessions) else None
        if not isinstance(item, Session):
            continue
        for exchange in run.result.exchanges:
            step = item.steps[exchange.index] if exchange.index < len(item.steps) else None
            if exchange.passed or not isinstance(step, Expect):
                continue
            where = item.step_lines[exchange.index]
            if exchange.reply is None:
                problems.append(f"line {where}: no reply to write ({exchange.error or 'none arrived'})")
                continue
            match = _ONE_LINE_EXPECT.match(lines[where - 1])
            if match is None:
                problems.append(f"line {where}: an expect written over several lines is left to be edited")
                continue
            masked = exchange.masked if exchange.masked is not None else exchange.reply.raw_text
            written = flow(expectation(exchange.reply.lines, masked))
            lines[where - 1] = f"{match['head']}{written}{match['end'] or ''}"
    after = "".join(lines)
    if after != before:
        # Checked as a trace before it replaces the file: a rewrite that would not load is refused.
        draft = trace.path.with_name(f".{trace.path.name}.update")
        draft.write_text(after, encoding="utf-8")
        try:
            load(draft.resolve())
        except SourceError as exc:
            draft.unlink()
            return Update(trace.path, "", (*problems, f"not rewritten: the result would not load: {exc}"))
        draft.replace(trace.path)
    diff = "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), lines, fromfile=str(trace.path), tofile=str(trace.path)
        )
    )
    return Update(trace.path, diff, tuple(problems))
