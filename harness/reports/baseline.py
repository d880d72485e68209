"""Baselines, the regression check: what a target did with each trace, saved to a file that lives in a
team's repository, and a later run (a new MTA version, a changed configuration) compared with it.

What is kept of a trace is what `mailflow diff` compares (harness/reports/differential.py), masked the
same way (harness/smtp/masking.py), so an unchanged rerun is equal and a difference reads as `diff` shows
it: each session's transcript, and the outcome — passed, or the failures; every message that left the
system under test (mailboxes, Internet hosts, gateways), sorted; each NDR's recipient, action and status.

The file is YAML (harness/schemas/baseline.schema.json), traces sorted by id and one transcript line a
line, so a change of behaviour is a readable `git diff` too. `version` says which form it is; a file of
another version is refused rather than misread.
"""

from __future__ import annotations

import email
import email.policy
import os
import tempfile
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

import yaml

from harness.corpus.trace import Trace
from harness.judge.evidence import Delivery
from harness.reports.differential import Side, TraceDiff, masker_for, side
from harness.run.runner import TraceResult
from harness.targets import Target
from harness.yamlsource import SourceError, validate
from harness.yamlsource import load as load_yaml

VERSION = 1
BASELINE_SIDE = "baseline"

_HEADER = (
    "# A mailflow baseline: what one target did with each trace, volatile values masked.\n"
    "# Written by `mailflow baseline save`, checked by `mailflow run --baseline`.\n"
    "# Save again to accept a change (docs/baselines.md).\n"
)


@dataclass(frozen=True)
class Entry:
    """One trace as the target ran it: its file (relative to the baseline's folder), each session's masked
    transcript lines, and the outcome lines."""

    file: str
    sessions: list[list[str]]
    outcome: list[str]


@dataclass
class Baseline:
    target: str
    traces: dict[str, Entry] = field(default_factory=dict)


def entry(trace: Trace, target: Target, result: TraceResult, baseline_file: Path) -> Entry:
    """What a run of `trace` on `target` leaves in a baseline."""
    ran = side(trace, target, result)
    masker = masker_for(trace, target)
    left: list[str] = []
    if result.evidence is not None:
        for delivery in sorted(result.evidence.deliveries, key=lambda d: (d.kind, d.where, d.server, d.rcpt)):
            left.append(masker.text(f"delivered: {delivery.describe()}"))
            left += [masker.text(line) for line in _ndr_lines(delivery)]
    return Entry(_relative(trace.path, baseline_file), ran.sessions, ran.outcome + sorted(left))


def skipped(trace: Trace, reason: str, baseline_file: Path) -> Entry:
    """A trace the target could not run: its reason is what a later run must say too."""
    return Entry(_relative(trace.path, baseline_file), [], [f"skipped: {reason}"])


def compare(trace_id: str, saved: Entry, now: Entry, target: str) -> TraceDiff:
    """The baseline on the left, this run on the right, as `mailflow diff` puts two targets."""
    return TraceDiff(
        trace_id,
        Side(BASELINE_SIDE, saved.sessions, saved.outcome),
        Side(target, now.sessions, now.outcome),
    )


def dump(baseline: Baseline, path: Path) -> None:
    """Write the baseline; the old file stays whole until the new one is complete."""
    data = {
        "version": VERSION,
        "target": baseline.target,
        "traces": {
            trace_id: {"file": e.file, "sessions": e.sessions, "outcome": e.outcome}
            for trace_id, e in sorted(baseline.traces.items())
        },
    }
    # Version first and each trace's file before its lines, for the reader; the traces sorted by id.
    text = _HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100_000)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load(path: Path) -> Baseline:
    """Read a baseline; anything wrong is a SourceError with the file, the line and what is wrong."""
    document = load_yaml(path)
    data = document.data
    if not isinstance(data, dict):
        raise SourceError(path, document.line_of([]), "", "not a mailflow baseline (expected a mapping)")
    # The version first: a file of another version is named as such, not as a list of schema errors.
    if "version" not in data:
        raise SourceError(path, None, "version", f"missing (this mailflow reads baseline version {VERSION})")
    if data["version"] != VERSION:
        raise SourceError(
            path,
            document.key_line(["version"]),
            "version",
            f"{data['version']!r} is not a baseline version this mailflow reads (it reads {VERSION}); "
            "save the baseline again with this mailflow",
        )
    validate(document, "baseline.schema.json")
    traces = {
        str(trace_id): Entry(str(value["file"]), [list(s) for s in value["sessions"]], list(value["outcome"]))
        for trace_id, value in data["traces"].items()
    }
    return Baseline(str(data["target"]), traces)


def _ndr_lines(delivery: Delivery) -> list[str]:
    """A delivery status notification's per-recipient fields: who, what became of it, its status.
    Parsed with the standard library's MIME parser (RFC 3464 blocks are header blocks)."""
    message = email.message_from_bytes(delivery.data, policy=email.policy.compat32)
    found: list[str] = []
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        for block in blocks if isinstance(blocks, list) else []:
            if not isinstance(block, Message) or block.get("Status") is None:
                continue
            recipient = str(block.get("Final-Recipient") or block.get("Original-Recipient") or "")
            recipient = recipient.split(";", 1)[-1].strip()
            action = str(block.get("Action") or "").strip()
            found.append(f"dsn: {recipient} {action} {str(block['Status']).strip()}".replace("  ", " "))
    return found


def _relative(trace_file: Path, baseline_file: Path) -> str:
    return Path(os.path.relpath(trace_file.resolve(), baseline_file.resolve().parent)).as_posix()
