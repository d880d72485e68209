"""YAML documents that remember where each value came from.

Traces and lab files are written by hand, so every error must name the file, the line and the
field. PyYAML's composed node graph keeps line numbers; we keep that graph beside the plain data
and walk it along a JSON Schema error path to find the line of the offending value. (ruamel.yaml
would also do this, but PyYAML is already a dependency and this walk is a dozen lines.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml


class SourceError(Exception):
    """A problem in a hand-written file, located as precisely as we can."""

    def __init__(self, path: Path | str, line: int | None, field: str, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        where = f"{self.path}:{line}" if line else self.path
        field_part = f" {field}:" if field else ""
        super().__init__(f"{where}:{field_part} {message}")


@dataclass(frozen=True)
class Document:
    """Plain data loaded from YAML plus the node graph that locates any value in it."""

    path: Path
    data: Any
    root: yaml.Node | None

    def line_of(self, location: Sequence[str | int]) -> int | None:
        """1-based line of the value at `location`, or of its nearest ancestor that exists."""
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        for part in location:
            child = _child(node, part)
            if child is None:
                break
            node = child
            line = node.start_mark.line + 1
        return line

    def error(self, location: Sequence[str | int], message: str) -> SourceError:
        return SourceError(self.path, self.line_of(location), field_name(location), message)


def field_name(location: Iterable[str | int]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                found: yaml.Node = value
                return found
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        child: yaml.Node = node.value[part]
        return child
    return None


def load(path: Path) -> Document:
    """Parse one YAML file; a syntax error becomes a SourceError with the parser's line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(path, None, "", f"cannot read file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(path, None, "", f"not UTF-8 text: {exc.reason}") from exc
    loader = yaml.SafeLoader(text)
    try:
        root: yaml.Node | None = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SourceError(path, line, "", f"YAML syntax error: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise SourceError(path, None, "", f"YAML error: {exc}") from exc
    finally:
        loader.dispose()
    return Document(path=path, data=data, root=root)


@cache
def schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in harness/schemas/."""
    text = resources.files("harness").joinpath("schemas", name).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


def validate(document: Document, schema_name: str) -> None:
    """Raise the most specific schema violation, located in the source file."""
    validator = jsonschema.Draft202012Validator(schema(schema_name))
    errors = sorted(validator.iter_errors(document.data), key=_error_rank)
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        location = list(best.absolute_path)
        raise document.error(location, _describe(best))


def _error_rank(error: jsonschema.ValidationError) -> tuple[int, int]:
    return (-len(error.absolute_path), 0)


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return f"unknown field ({error.message})"
    if error.validator == "required":
        return f"missing field: {error.message}"
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {error.validator_value}"
    return error.message
