"""Writing trace files: what the recording proxy, the importers and the generator produce, in the house
style of the hand-written corpus (one step per line, leaf mappings in flow style, long texts as blocks),
and checked by loading it back before anything is kept.

PyYAML writes the values; the layout of a trace (top-level keys in a fixed order, a script step per
line) is ours, since no emitter setting gives "block sequence of one-key mappings with flow values".
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from harness.corpus.trace import Trace, load

# The order a reader expects, as in the hand-written traces.
TOP_LEVEL = ("id", "title", "description", "spec", "boundary", "lab", "requires", "timeout", "masks")


def dump(document: Mapping[str, Any]) -> str:
    """A trace document as YAML text: `sessions` written step by step, everything else by PyYAML."""
    lines: list[str] = []
    for key in (*TOP_LEVEL, *(k for k in document if k not in (*TOP_LEVEL, "sessions", "outcome"))):
        if key not in document:
            continue
        value = document[key]
        if key == "description" and isinstance(value, str):
            lines.append("description: >")
            lines += [f"  {line}" if line else "" for line in value.strip().splitlines()]
        else:
            lines.append(f"{key}: {flow(value)}")
    lines.append("sessions:")
    for session in document.get("sessions", []):
        lines += _session(session)
    if "outcome" in document:
        lines.append("outcome:" if document["outcome"] else "outcome: {}")
        for key, value in document["outcome"].items():
            if isinstance(value, list) and value:
                lines.append(f"  {key}:")
                lines += [f"    - {flow(item)}" for item in value]
            else:
                lines.append(f"  {key}: {flow(value)}")
    return "\n".join(lines) + "\n"


def write(document: Mapping[str, Any], path: Path) -> Trace:
    """Write a trace file and load it back: a document the loader refuses is never left behind, and the
    error names what is wrong with it."""
    text = dump(document)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name that is not a trace file's, so that a run collecting the folder meanwhile skips it.
    draft = path.with_name(f".{path.name}.draft")
    draft.write_text(text, encoding="utf-8")
    try:
        trace = load(draft.resolve())
    except BaseException:
        draft.unlink(missing_ok=True)
        raise
    draft.replace(path)
    return dataclasses.replace(trace, path=path.resolve())


def _session(session: Mapping[str, Any]) -> list[str]:
    first = True
    lines: list[str] = []
    for key, value in session.items():
        if key == "script":
            continue
        lines.append(f"  {'- ' if first else '  '}{key}: {flow(value)}")
        first = False
    if "script" in session:
        lines.append("    script:")
        lines += [f"      - {_step(step)}" for step in session["script"]]
    return lines


def _step(step: Mapping[str, Any] | str) -> str:
    if isinstance(step, str):
        return flow(step)
    ((key, value),) = step.items()
    return f"{key}: {flow(value)}"


def flow(value: Any, inside: bool = False) -> str:
    """One value on one line: scalars quoted only where YAML needs it (stricter inside a flow
    collection), collections in flow style, and a text with line breaks as a double-quoted scalar with
    escapes (JSON's are YAML's)."""
    if isinstance(value, Mapping):
        items = (f"{flow(key, True)}: {flow(item, True)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flow(item, True) for item in value) + "]"
    if isinstance(value, str) and ("\n" in value or "\r" in value):
        # Characters YAML will not read raw (controls, DEL) are escaped; readable text stays as it is.
        return json.dumps(value, ensure_ascii=not all(c.isprintable() or c in "\r\n\t" for c in value))
    # A scalar dumped inside a one-item flow sequence gets the quoting a flow context needs.
    text = yaml.safe_dump(
        [value] if inside else value, default_flow_style=True, width=1 << 20, allow_unicode=True
    )
    text = text.removesuffix("\n...\n").rstrip("\n")
    return text[1:-1] if inside else text
