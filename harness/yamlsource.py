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
import jsonschema_rs
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

    def key_line(self, location: Sequence[str | int]) -> int | None:
        """1-based line of the key that names the last part of `location` in its mapping."""
        parent = self.root
        for part in location[:-1]:
            parent = _child(parent, part)
        if isinstance(parent, yaml.MappingNode):
            for key, _ in parent.value:
                if isinstance(key, yaml.ScalarNode) and key.value == location[-1]:
                    line: int = key.start_mark.line + 1
                    return line
        return self.line_of(location[:-1])

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
    if _FastLoader is not None:
        # libyaml parses a corpus about ten times faster. A file it refuses, or one whose graph is
        # wrong, is parsed again by the pure-Python loader below: its messages and alias lines are
        # the ones users see, whichever parser found the problem first.
        fast = _FastLoader(text)
        try:
            root: yaml.Node | None = fast.get_single_node()
            data = fast.construct_document(root) if root is not None else None
            document = Document(path=path, data=data, root=root)
            _check_graph(document, ())
            return document
        except (yaml.YAMLError, SourceError):
            pass
        finally:
            fast.dispose()
    return _load_slowly(path, text)


def _load_slowly(path: Path, text: str) -> Document:
    loader = _Loader(text)
    try:
        root: yaml.Node | None = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        # The context mark is where the broken construct began (an unclosed quote or bracket); the
        # problem mark is where the parser gave up, which can be the end of the file.
        problem = exc.problem_mark.line + 1 if exc.problem_mark else None
        context = exc.context_mark.line + 1 if exc.context_mark else None
        at_end = "end of stream" in (exc.problem or "")
        line = (context or problem) if at_end else (problem or context)
        message = f"YAML syntax error: {exc.problem or exc.context}"
        if at_end and context and problem and problem != context:
            message += f" ({exc.context} that starts here, never closed)"
        raise SourceError(path, line, "", message) from exc
    except yaml.YAMLError as exc:
        raise SourceError(path, None, "", f"YAML error: {exc}") from exc
    finally:
        loader.dispose()
    document = Document(path=path, data=data, root=root)
    _check_graph(document, loader.aliases)
    return document


# PyYAML built without libyaml has no C loader; everything then takes the pure-Python path.
_FastLoader: type[yaml.CSafeLoader] | None = getattr(yaml, "CSafeLoader", None)


class _Loader(yaml.SafeLoader):
    """A SafeLoader that remembers where each alias is used: the node graph keeps only the node an alias
    stands for, whose line is that of its anchor."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases: list[tuple[yaml.Node, str, int]] = []  # (node, anchor name, 1-based line of *alias)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        alias: yaml.AliasEvent | None = None
        if self.check_event(yaml.AliasEvent):
            alias = self.peek_event()  # type: ignore[no-untyped-call]  # unannotated in types-PyYAML
        node = super().compose_node(parent, index)
        if alias is not None and alias.start_mark is not None and node is not None:
            self.aliases.append((node, str(alias.anchor), alias.start_mark.line + 1))
        return node


def _check_graph(document: Document, aliases: Sequence[tuple[yaml.Node, str, int]]) -> None:
    """Refuse duplicate keys (PyYAML silently keeps the last of two; a hand-written file means the
    first one too) and recursive aliases (a value that contains itself: nothing in a trace or a lab
    is recursive, and every later walk of the data, the schema's included, would recurse until
    Python gives up)."""
    checked: set[int] = set()  # a node reached again through a plain alias needs no second look
    ancestors: set[int] = set()

    def walk(node: yaml.Node | None, location: list[str | int], line: int | None) -> None:
        if node is None:
            return
        if id(node) in ancestors:
            _recursive_alias(document, node, location, line, aliases)
        if id(node) in checked:
            return
        checked.add(id(node))
        ancestors.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        raise SourceError(
                            document.path,
                            key.start_mark.line + 1,
                            field_name([*location, key.value]),
                            f"duplicate key {key.value!r} (first at line {seen[key.value]})",
                        )
                    seen[key.value] = key.start_mark.line + 1
                    walk(value, [*location, key.value], key.start_mark.line + 1)
                else:
                    walk(key, location, key.start_mark.line + 1)
                    walk(value, location, key.start_mark.line + 1)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, [*location, index], None)
        ancestors.discard(id(node))

    walk(document.root, [], None)


def _recursive_alias(
    document: Document,
    node: yaml.Node,
    location: list[str | int],
    line: int | None,
    aliases: Sequence[tuple[yaml.Node, str, int]],
) -> None:
    anchor_line = node.start_mark.line + 1
    # The alias that closes the loop is the one inside the anchored value's own lines.
    inside = [
        (name, at)
        for target, name, at in aliases
        if target is node and anchor_line <= at <= node.end_mark.line + 1
    ]
    alias = f"recursive alias *{inside[0][0]}" if inside else "recursive alias"
    at = inside[0][1] if inside else (line or anchor_line)
    raise SourceError(
        document.path,
        at,
        field_name(location),
        f"{alias}: the value anchored at line {anchor_line} contains itself",
    )


@cache
def schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in harness/schemas/."""
    text = resources.files("harness").joinpath("schemas", name).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    if not jsonschema_rs.meta.is_valid(loaded):  # jsonschema's own check takes a sixth of a second
        jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    # Made once: building one resolves the schema's references again, a cost paid per file otherwise.
    return jsonschema.Draft202012Validator(schema(name))


@cache
def _fast_validator(name: str) -> jsonschema_rs.Validator:
    # jsonschema-rs checks a valid file a thousand times faster than jsonschema, which made the schema
    # check most of the time it took to collect a corpus. Only a file it finds invalid goes on to
    # jsonschema, whose errors the messages below are made from.
    return jsonschema_rs.validator_for(schema(name))


def validate(document: Document, schema_name: str) -> None:
    """Raise the most specific schema violation, located in the source file."""
    fast = _fast_validator(schema_name)
    try:
        if fast.is_valid(document.data):
            return
    except ValueError:
        pass  # a value it cannot take (a number as a key, a YAML date): jsonschema judges it
    validator = _validator(schema_name)
    errors = sorted(validator.iter_errors(document.data), key=_error_rank)
    if errors:
        best = _within_alternatives(jsonschema.exceptions.best_match(errors))
        location: list[str | int] = list(best.absolute_path)
        if best.validator == "additionalProperties" and isinstance(best.instance, dict):
            allowed = set(best.schema.get("properties", {})) if isinstance(best.schema, dict) else set()
            unexpected = [key for key in best.instance if key not in allowed]
            if unexpected:
                key_line = document.key_line([*location, unexpected[0]])
                known = ", ".join(sorted(allowed))
                raise SourceError(
                    document.path,
                    key_line,
                    field_name([*location, unexpected[0]]),
                    f"unknown field {unexpected[0]!r} (expected one of: {known})",
                )
        raise document.error(location, _describe(best))


def _within_alternatives(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For "not valid under any of the given schemas", the error of the alternative the author meant:
    the one whose fields the value uses (no unknown field at its own level), with the fewest errors."""
    if error.validator != "anyOf" or not error.context:
        return error
    branches: dict[int, list[jsonschema.ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(int(sub.relative_schema_path[0]), []).append(sub)

    def fit(item: tuple[int, list[jsonschema.ValidationError]]) -> tuple[int, int]:
        unknown = sum(1 for e in item[1] if e.validator == "additionalProperties" and not e.relative_path)
        return (unknown, len(item[1]))

    _, chosen = min(branches.items(), key=fit)
    return _within_alternatives(jsonschema.exceptions.best_match(chosen))


def _error_rank(error: jsonschema.ValidationError) -> tuple[int, int]:
    return (-len(error.absolute_path), 0)


def _describe(error: jsonschema.ValidationError) -> str:
    alternatives = _exclusive_keys(error)
    if alternatives is not None and isinstance(error.instance, dict):
        found = [key for key in alternatives if key in error.instance]
        return f"give exactly one of {', '.join(alternatives)} (found {', '.join(found) or 'none'})"
    return _plain(error)


def _exclusive_keys(error: jsonschema.ValidationError) -> list[str] | None:
    """The keys of a oneOf whose branches each just require one key (connect: mx | server | host)."""
    if error.validator != "oneOf" or not isinstance(error.validator_value, list):
        return None
    keys: list[str] = []
    for branch in error.validator_value:
        required = branch.get("required") if isinstance(branch, dict) else None
        if not required or len(required) != 1 or set(branch) - {"required", "not"}:
            return None
        keys.append(required[0])
    return keys


def _plain(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return f"unknown field ({error.message})"
    if error.validator == "required":
        return f"missing field: {error.message}"
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {error.validator_value}"
    return error.message
