"""Traces: one YAML file each, validated against `harness/schemas/trace.schema.json`.

Beyond the schema a trace must name catalogue IDs that exist, scripts that parse, message files that
are there and a lab that exists; each problem is reported with the file, the line and the field, so a
broken trace is fixed from the error message alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import yamlsource
from harness.catalogue import catalogue
from harness.lab.config import FIXTURES, lab_path
from harness.replay import resolve_message_path
from harness.script import Data, ScriptError, Step, parse_script, parse_step
from harness.yamlsource import SourceError

MESSAGE_DIRS = (FIXTURES / "messages",)


@dataclass(frozen=True)
class Connect:
    mx: str | None = None
    server: str | None = None
    virtual_server: str | None = None
    host: str | None = None


@dataclass(frozen=True)
class Session:
    client: str
    connect: Connect
    steps: tuple[Step, ...]
    refused: bool = False


@dataclass(frozen=True)
class Trace:
    id: str
    title: str
    path: Path
    spec: tuple[str, ...]
    lab: Path
    requires: frozenset[str]
    sessions: tuple[Session, ...]
    outcome: dict[str, Any]
    boundary: frozenset[str] = frozenset()
    description: str = ""
    timeout: float = 30.0

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def _clearer(document: yamlsource.Document, error: SourceError) -> SourceError:
    """A schema error inside a script step says "not valid under any of the given schemas"; the step
    parser says what is wrong in the trace author's terms, so ask it for the same step."""
    match = re.match(r"sessions\[(\d+)\]\.script\[(\d+)\]", error.field)
    vague = "valid under" in error.message or error.field == (match[0] if match else None)
    if match is None or not vague:
        return error
    session, index = int(match[1]), int(match[2])
    try:
        raw = document.data["sessions"][session]["script"][index]
        parse_step(raw, index=index) if isinstance(raw, dict) else None
    except ScriptError as exc:
        location: tuple[str | int, ...] = ("sessions", session, "script", index)
        return document.error((*location, exc.key) if exc.key else location, exc.message)
    except (KeyError, IndexError, TypeError):
        pass
    return error


def is_trace_file(path: Path) -> bool:
    return path.suffix in (".yaml", ".yml") and "traces" in path.parts


def load(path: Path) -> Trace:
    document = yamlsource.load(path)
    if not isinstance(document.data, dict):
        raise SourceError(path, 1, "", "a trace is a YAML mapping (id, title, spec, sessions, outcome)")
    try:
        yamlsource.validate(document, "trace.schema.json")
    except SourceError as exc:
        raise _clearer(document, exc) from None
    data: dict[str, Any] = document.data
    known = catalogue()
    for index, spec_id in enumerate(data["spec"]):
        if spec_id not in known:
            raise document.error(
                ("spec", index), f"unknown catalogue ID {spec_id!r} (see harness/catalogue.yaml)"
            )
    for index, spec_id in enumerate(data.get("boundary") or []):
        if spec_id not in data["spec"]:
            raise document.error(("boundary", index), f"{spec_id!r} is not one of this trace's spec IDs")
    lab = lab_path(data.get("lab", "contoso"), path.parent)
    if not lab.is_file():
        raise document.error(("lab",), f"no lab {data.get('lab')!r}: {lab} does not exist")
    sessions = []
    for number, raw in enumerate(data["sessions"]):
        try:
            steps = parse_script(raw["script"]) if "script" in raw else []
        except ScriptError as exc:
            location: tuple[str | int, ...] = ("sessions", number, "script", exc.index)
            raise document.error((*location, exc.key) if exc.key else location, exc.message) from exc
        for index, step in enumerate(steps):
            if (
                isinstance(step, Data)
                and step.source is not None
                and (resolve_message_path(step.source, path.parent, MESSAGE_DIRS) is None)
            ):
                raise document.error(
                    ("sessions", number, "script", index, "data"),
                    f"message file {step.source!r} not found next to the trace or in fixtures/messages",
                )
        connect = raw["connect"]
        sessions.append(Session(raw["client"], Connect(**connect), tuple(steps), raw.get("refused", False)))
    return Trace(
        id=data["id"],
        title=data["title"],
        path=path,
        spec=tuple(data["spec"]),
        lab=lab,
        requires=frozenset(data.get("requires") or []),
        sessions=tuple(sessions),
        outcome=data.get("outcome") or {},
        boundary=frozenset(data.get("boundary") or []),
        description=data.get("description", ""),
        timeout=float(data.get("timeout", 30.0)),
    )
