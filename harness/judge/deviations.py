"""Known deviations of a target: failures that differ from Exchange 2003 but conform to the RFCs, each
with its reason and the reference it rests on, in `harness/targets/deviations/<target>.yaml`
(checked against harness/schemas/deviations.schema.json). The replay tolerates them (the session goes
on) and the conformance matrix shows them as deviations, not failures.

An entry matches a failure record's fields (harness/judge/records.py), never its sentence: its kind,
the command verb the reply answers, the field, the expected and the actual value (each a value or a
list of allowed values; the texts may be given as anchored regular expressions instead). An entry is
limited to named traces or catalogue IDs, unless it is wording only: then it names wording kinds and
a verb, and matches only a reply that carries the code the trace expects (docs/decisions.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from harness import yamlsource
from harness.corpus.catalogue import catalogue
from harness.judge.records import WORDING_KINDS, Failure, Kind

# A target's known deviations for one trace: the entry that explains a failure, or None if it is one.
Tolerate = Callable[[Failure], "Deviation | None"]


@dataclass(frozen=True)
class Values:
    """What a field may be: one of the listed values, or a whole match of the pattern."""

    allowed: frozenset[str] = frozenset()
    pattern: re.Pattern[str] | None = None

    def admits(self, value: str) -> bool:
        if self.pattern is not None:
            return self.pattern.fullmatch(value) is not None
        return value in self.allowed


@dataclass(frozen=True)
class Deviation:
    entry: str  # "postfix.yaml:12": where it is written, how reports name it
    reason: str
    reference: str
    kinds: frozenset[Kind]
    verbs: frozenset[str] | None = None  # None: any
    fields: frozenset[str] | None = None
    expected: Values | None = None
    actual: Values | None = None
    traces: tuple[str, ...] = ()  # trace ids or prefixes of them
    catalogue: tuple[str, ...] = ()  # catalogue IDs

    @property
    def scoped(self) -> bool:
        return bool(self.traces or self.catalogue)

    def applies_to(self, trace: str, spec: Iterable[str] = ()) -> bool:
        """Whether the entry is limited to nothing, or to this trace (by id or prefix, or by one of its
        catalogue IDs)."""
        if not self.scoped:
            return True
        return any(trace.startswith(t) for t in self.traces) or bool(set(self.catalogue) & set(spec))

    def matches(self, failure: Failure) -> bool:
        """Whether the record's fields are the ones this entry waives (its scope checked apart)."""
        if failure.kind not in self.kinds:
            return False
        if not self.scoped and not failure.same_code:
            return False  # wording only: never under another code than the expected one
        checks = (
            (self.verbs, failure.verb),
            (self.fields, failure.field),
        )
        if any(allowed is not None and value not in allowed for allowed, value in checks):
            return False
        if self.expected is not None and not self.expected.admits(failure.expected):
            return False
        return self.actual is None or self.actual.admits(failure.actual)


def folder() -> Path:
    return Path(str(resources.files("harness.targets").joinpath("deviations")))


def deviations(target: str) -> list[Deviation]:
    """The known deviations of a target (`postfix:EX2` shares postfix's); none if it has no file."""
    source = folder() / f"{target.partition(':')[0]}.yaml"
    return load(source) if source.is_file() else []


@cache
def load(path: Path) -> list[Deviation]:
    """A deviations file, checked: SourceError names the file, line and field of a mistake."""
    document = yamlsource.load(path)
    if document.data is None:
        return []
    yamlsource.validate(document, "deviations.schema.json")
    return [_entry(document, index, item) for index, item in enumerate(document.data)]


def _listed(value: object) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [str(item) for item in items]


def _values(document: yamlsource.Document, index: int, item: Mapping[str, Any], name: str) -> Values | None:
    pattern_key = f"{name}_pattern"
    if name in item and pattern_key in item:
        raise document.error((index, pattern_key), f"give {name} or {pattern_key}, not both")
    if pattern_key in item:
        try:
            return Values(pattern=re.compile(item[pattern_key]))
        except re.error as exc:
            raise document.error((index, pattern_key), f"not a regular expression: {exc}") from None
    if name in item:
        return Values(allowed=frozenset(_listed(item[name])))
    return None


def _entry(document: yamlsource.Document, index: int, item: Mapping[str, Any]) -> Deviation:
    kinds = frozenset(Kind(k) for k in _listed(item["kind"]))
    known = catalogue()
    for number, spec_id in enumerate(item.get("catalogue") or ()):
        if spec_id not in known:
            raise document.error((index, "catalogue", number), f"unknown catalogue ID {spec_id!r}")
    deviation = Deviation(
        entry=f"{document.path.name}:{document.line_of((index,))}",
        reason=str(item["reason"]),
        reference=str(item["reference"]),
        kinds=kinds,
        verbs=frozenset(v.upper() if v.isalpha() and v != "greeting" else v for v in _listed(item["verb"]))
        if "verb" in item
        else None,
        fields=frozenset(_listed(item["field"])) if "field" in item else None,
        expected=_values(document, index, item, "expected"),
        actual=_values(document, index, item, "actual"),
        traces=tuple(item.get("traces") or ()),
        catalogue=tuple(item.get("catalogue") or ()),
    )
    if not deviation.scoped:
        _check_wording(document, index, deviation)
    return deviation


def _check_wording(document: yamlsource.Document, index: int, deviation: Deviation) -> None:
    """An entry for every trace must be wording only, and say which command's reply it words."""
    broad = sorted(str(k) for k in deviation.kinds - WORDING_KINDS)
    if broad:
        raise document.error(
            (index, "kind"),
            f"an entry without traces or catalogue applies to every trace, so it may waive wording only "
            f"({', '.join(sorted(WORDING_KINDS))}), not {', '.join(broad)}: name the traces it is seen in",
        )
    if deviation.verbs is None:
        raise document.error(
            (index,), "an entry without traces or catalogue must name the verb whose reply it words"
        )


def explain(
    failure: Failure, trace: str, spec: Sequence[str], known: Sequence[Deviation]
) -> Deviation | None:
    """The first entry that waives this failure of this trace, if one does."""
    return next((d for d in known if d.applies_to(trace, spec) and d.matches(failure)), None)
