"""The conformance catalogue (harness/corpus/catalogue.yaml): the IDs traces, reports and coverage
speak of, and for each the trace assertions that show it (`shown_by`, read by harness/corpus/claims.py;
its vocabulary is harness/schemas/catalogue.schema.json)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeAlias

from harness import yamlsource

CATALOGUE = Path(__file__).with_name("catalogue.yaml")

Requirement: TypeAlias = Mapping[str, Any]
"""One assertion a trace must make, e.g. `{ldap: query}` or `{event: {id: 1027, first: true}}`."""
Form: TypeAlias = tuple[Requirement, ...]
"""Requirements that must all hold; empty: none declared."""


@dataclass(frozen=True)
class ShownBy:
    white_box: Form
    black_box: Form = ()
    boundary: Form = ()
    """What shows the step does NOT happen (the catalogue's default_boundary unless the ID has its own)."""


@dataclass(frozen=True)
class Entry:
    id: str
    flow: str
    title: str
    evidence: str
    shown_by: ShownBy = ShownBy(())
    seed: bool = True
    """A step the seed documents describe; False: an ID added beyond them (`source: extension`)."""


@cache
def catalogue() -> dict[str, Entry]:
    return load(CATALOGUE)


@cache
def default_boundary() -> Form:
    """What shows a boundary claim for an ID that declares no negative form of its own."""
    return tuple(yamlsource.load(CATALOGUE).data.get("default_boundary") or ())


def load(path: Path) -> dict[str, Entry]:
    """The catalogue in `path`; a malformed one raises SourceError naming its file, line and field."""
    document = yamlsource.load(path)
    yamlsource.validate(document, "catalogue.schema.json")
    raw: dict[str, Any] = document.data
    default = tuple(raw.get("default_boundary") or ())
    entries: dict[str, Entry] = {}
    for key, value in raw["ids"].items():
        shown = value["shown_by"]
        forms = ShownBy(
            tuple(shown["white_box"]),
            tuple(shown.get("black_box") or ()),
            tuple(shown.get("boundary") or default),
        )
        seed = value.get("source", "seed") == "seed"
        entries[key] = Entry(key, value["flow"], value["title"], value["evidence"], forms, seed)
    return entries


def describe(requirement: Requirement) -> str:
    """A requirement in the words of the trace that would meet it."""
    ((kind, value),) = requirement.items()
    if kind == "any_of":
        return "(" + " or ".join(describe(choice) for choice in value) + ")"
    return _WORDS[kind](value)


_DESTINATION_WORDS = {
    "any": "a delivery",
    "mailbox": "a delivery to a mailbox",
    "sink": "a delivery to a sink",
    "gateway": "a delivery to a gateway",
    "foreign": "a delivery into the foreign system",
}


def _describe_delivery(value: Any) -> str:
    options = value if isinstance(value, dict) else {"to": value}
    words = _DESTINATION_WORDS[options["to"]]
    if options.get("server"):
        words += " naming its server (server:, or a sink's peer:)"
    if options.get("dsn"):
        words += " that is a DSN" + ("" if options["dsn"] == "any" else f" (action {options['dsn']})")
    if options.get("content"):
        words += " with its content checked"
    return f"{words} (outcome.delivered)"


def _describe_dns(value: Mapping[str, Any]) -> str:
    what = f"DNS {value['type']} query" if "type" in value else "DNS query"
    if value.get("by") == "sender":
        what += " from a real sending MTA (client: the host of a via: item)"
    if value.get("absent"):
        return f"no {what} (outcome.dns absent)"
    if value.get("failed"):
        return (
            f"a {what} answered with a failure (outcome.dns rcode: NXDOMAIN/SERVFAIL/REFUSED, or answers: 0)"
        )
    return f"a {what} (outcome.dns)"


_LDAP_WORDS = {
    "query": "an LDAP query (outcome.ldap)",
    "recipient": (
        "an LDAP query whose filter names a recipient's address or its mailbox's proxy address (outcome.ldap)"
    ),
    "absent": "an LDAP query that is not made or finds nothing (outcome.ldap absent/results: 0)",
}


def _describe_connection(value: Mapping[str, Any]) -> str:
    who = " from a real sending MTA (client: the host of a via: item)" if value.get("by") == "sender" else ""
    return f"an SMTP session{who} in a virtual server's protocol log (outcome.connections)"


_WORDS: dict[str, Callable[[Any], str]] = {
    "delivered": _describe_delivery,
    "undelivered": lambda _: (
        "a message not delivered (outcome.not_delivered, nothing_delivered, or nothing_else_delivered"
        " with a recipient that no outcome.delivered entry is for)"
    ),
    "ldap": _LDAP_WORDS.__getitem__,
    "dns": _describe_dns,
    "dns_in_order": lambda _: "the DNS queries in the order they are asked (outcome.dns_in_order)",
    "connection": _describe_connection,
    "event": lambda value: _describe_event(value),
    "hops": lambda value: f"a hop chain of at least {value} server{'s' * (value > 1)} (outcome.hops)",
    "routing_groups": lambda value: (
        f"servers in at least {value} routing groups (the server entered, outcome.hops or tracking,"
        " a delivery's server: or peer:)"
    ),
    "queues": lambda value: (
        "a queue state (outcome.queues or queues_empty)"
        if value is True
        else f"a message waiting in {value['queue']} (outcome.queues, or a settle's queues)"
    ),
    "reply": lambda value: _describe_reply(value),
    "sent": lambda value: f"a script that sends {' or '.join(listed(value))}",
    "refused": lambda _: "a session or submission expected to be refused (refused: true)",
    "submitted": lambda _: "a message submitted through a server's store (a submit: session)",
}


def _describe_event(value: Mapping[str, Any]) -> str:
    ids = " or ".join(str(i) for i in listed(value["id"]))
    where = " on the server that stores the mailbox" if value.get("where") else ""
    if value.get("absent"):
        return (
            f"tracking event {ids} asserted absent{where} (outcome.events absent: true, or a tracking list)"
        )
    if value.get("first"):
        return f"tracking event {ids} first in a server's list{where} (outcome.tracking)"
    return f"tracking event {ids}{where} (outcome.tracking or outcome.events)"


def _describe_reply(value: Mapping[str, Any]) -> str:
    if "code" in value:
        what = " or ".join(str(c) for c in listed(value["code"]))
    elif "class" in value:
        what = " or ".join(f"{c}xx" for c in listed(value["class"]))
    else:
        what = "a reply"
    after = ""
    if "after" in value:
        commands = listed(value["after"])
        after = " to the greeting" if commands == ["CONNECT"] else f" to {' or '.join(commands)}"
    return f"{what}{after} (a script expect step)"


def listed(value: Any) -> list[Any]:
    """A vocabulary value that is one item or a list of them, as a list."""
    return list(value) if isinstance(value, list) else [value]


def flow_of(ids: list[str]) -> str:
    """The Allure epic of a trace: the flow of its first non-core ID."""
    entries = catalogue()
    flows = [entries[i].flow for i in ids if i in entries]
    return next((f for f in flows if f != "Core"), flows[0] if flows else "Core")


def markdown() -> str:
    """The catalogue as docs/catalogue.md shows it: one table per flow, in catalogue order."""
    lines = [
        "# Conformance catalogue",
        "",
        "Generated from `harness/corpus/catalogue.yaml` by `mailflow catalogue`; edit the YAML, not this "
        "file.",
        "Traces name these IDs in `spec:` (and `boundary:`), reports group by them, and `mailflow coverage`",
        "counts the traces that show each one.",
        "",
        "`shown by` is what a trace must assert for its claim to be backed (`mailflow check`): every",
        "requirement of the white-box form, or of the black-box form; a `boundary:` claim needs the "
        "negative form,",
        f"by default {_cell(_form_words(default_boundary()))}.",
    ]
    flows: dict[str, list[Entry]] = {}
    for entry in catalogue().values():
        flows.setdefault(entry.flow, []).append(entry)
    for flow, entries in flows.items():
        lines += ["", f"## {flow}", "", "| ID | step | evidence | shown by |", "|---|---|---|---|"]
        lines += [f"| {e.id} | {_cell(e.title)} | {_cell(e.evidence)} | {_shown_by(e)} |" for e in entries]
    return "\n".join(lines) + "\n"


def _form_words(form: Form) -> str:
    return " and ".join(describe(requirement) for requirement in form)


def _shown_by(entry: Entry) -> str:
    shown = entry.shown_by
    parts = [f"white box: {_form_words(shown.white_box)}"]
    if shown.black_box:
        same = shown.black_box == shown.white_box
        parts.append("black box: the same" if same else f"black box: {_form_words(shown.black_box)}")
    if shown.boundary and shown.boundary != default_boundary():
        parts.append(f"boundary: {_form_words(shown.boundary)}")
    return _cell("; ".join(parts))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
