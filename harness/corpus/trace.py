"""Traces: one YAML file each, validated against `harness/schemas/trace.schema.json`.

Beyond the schema a trace must name catalogue IDs that exist, scripts that parse, message files that
are there, a lab that exists and loads, and only hosts, servers, sinks and connectors of that lab; each
problem is reported with the file, the line and the field, so a broken trace is fixed from the error
message alone — not from a KeyError once the lab is running, nor from an `absent: true` check that
passes because it names a host that does not exist.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import dns.rdatatype
import yaml

from harness import yamlsource
from harness.corpus.catalogue import catalogue
from harness.corpus.messages import MESSAGE_DIRS, resolve_message_path
from harness.corpus.script import Bdat, Data, ScriptError, Step, parse_script, parse_step
from harness.lab import config as lab_config
from harness.lab.config import LabConfig, lab_path, missing_lab
from harness.lab.gc import AUTH_CLIENT
from harness.smtp.masking import Mask
from harness.yamlsource import SourceError

# libyaml's parser where it is installed: looking at the top-level keys of a file should cost little.
_FastLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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
    step_lines: tuple[int, ...] = ()
    """Line in the trace file of each step; for a refused session, of its `refused:` (its only step)."""


@dataclass(frozen=True)
class Submission:
    """A MAPI/OWA client's message, submitted through the store of the sender's home server (OUT-2a)."""

    server: str
    mailbox: str
    to: tuple[str, ...]
    data: Data
    line: int
    refused: bool = False
    defer: float = 0.0  # seconds of deferred delivery (PR_DEFERRED_DELIVERY_TIME); 0: none


class LabVerb(StrEnum):
    """The one vocabulary of a trace's `lab:` items (the trace schema's `lab_action` lists the same
    names, which tests/test_lab_actions.py holds it to)."""

    CONNECTOR_DOWN = "connector_down"
    CONNECTOR_UP = "connector_up"
    SERVER_DOWN = "server_down"
    SERVER_UP = "server_up"
    GLOBAL_CATALOG_DOWN = "global_catalog_down"
    GLOBAL_CATALOG_UP = "global_catalog_up"
    FREEZE = "freeze"
    UNFREEZE = "unfreeze"
    GATEWAY_STOPPED = "gateway_stopped"
    GATEWAY_STARTED = "gateway_started"
    FORCE_CONNECTION = "force_connection"
    SINK_RULE = "sink_rule"
    SETTLE = "settle"

    @property
    def subject(self) -> str:
        """What it acts on: connector, server, global catalog, queue, gateway, sink, or the lab (settle)."""
        return _SUBJECTS[self]

    @property
    def up(self) -> bool:
        """It brings its subject up (a connector, a server, the global catalog)."""
        return self in (
            LabVerb.CONNECTOR_UP,
            LabVerb.SERVER_UP,
            LabVerb.GLOBAL_CATALOG_UP,
            LabVerb.GATEWAY_STARTED,
        )

    @property
    def takes_rule(self) -> bool:
        """Its value is a mapping (a sink's reply rule, a queue), not a name."""
        return self in (LabVerb.SINK_RULE, LabVerb.FREEZE, LabVerb.UNFREEZE)

    @property
    def takes_name(self) -> bool:
        """Its value names what it acts on (a connector, a server, a gateway connector's service)."""
        return self.subject in ("connector", "server", "gateway")


_SUBJECTS = {
    LabVerb.CONNECTOR_DOWN: "connector",
    LabVerb.CONNECTOR_UP: "connector",
    LabVerb.SERVER_DOWN: "server",
    LabVerb.SERVER_UP: "server",
    LabVerb.GLOBAL_CATALOG_DOWN: "global catalog",
    LabVerb.GLOBAL_CATALOG_UP: "global catalog",
    LabVerb.FREEZE: "queue",
    LabVerb.UNFREEZE: "queue",
    LabVerb.GATEWAY_STOPPED: "gateway",
    LabVerb.GATEWAY_STARTED: "gateway",
    LabVerb.FORCE_CONNECTION: "connector",
    LabVerb.SINK_RULE: "sink",
    LabVerb.SETTLE: "lab",
}


@dataclass(frozen=True)
class LabAction:
    """What an administrator does to the running organization between sessions, or `settle`: wait
    until the lab has nothing left to do before going on."""

    action: LabVerb
    target: str | None
    line: int
    rule: dict[str, Any] | None = None


@dataclass(frozen=True)
class ForeignMemo:
    """The foreign system hands a memo to a gateway connector's IN folder (GW-1)."""

    gateway: str
    data: Data
    line: int
    refused: bool = False


@dataclass(frozen=True)
class ViaMta:
    """A real MTA running as one of the lab's outside hosts is handed a message (as `sendmail` hands it)
    and sends it as any MTA does: MX, then A, through the lab's DNS, then port 25 of the exchanger
    (IN-1, IN-2). The item passes once the MTA has handed the message over to the next hop."""

    host: str
    mta: str
    sender: str
    to: tuple[str, ...]
    data: Data
    line: int


Item = Session | Submission | LabAction | ForeignMemo | ViaMta

EXCHANGE_WORDING = "exchange"
"""Whose words a trace's reply texts are, unless it says: Exchange 2003's. A target judges a trace's
wording only when its profile is that name (harness/targets: `Target.judges_wording`)."""
CAPTURED_WORDING = "captured"
"""The words of a trace recorded or imported from an MTA the harness does not know: judged on a target
whose profile says it answers in them, and on no other."""
WORDING_HELP = (
    "whose words the replies' texts are (lower-case letters, digits, '-'): the trace's wording is judged "
    "only on a target whose profile has this name (exchange for the reference MTA)"
)
_WORDING_NAME = re.compile(r"[a-z][a-z0-9-]*")


def wording_name(text: str) -> str:
    """A wording name as a user gave it; ValueError, saying the form, when it is none."""
    if not _WORDING_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is no wording name: lower-case letters, digits and '-', like exchange")
    return text


@dataclass(frozen=True)
class Trace:
    id: str
    title: str
    path: Path
    spec: tuple[str, ...]
    lab: Path
    requires: frozenset[str]
    sessions: tuple[Item, ...]
    outcome: dict[str, Any]
    boundary: frozenset[str] = frozenset()
    description: str = ""
    timeout: float = 30.0
    wait_for_retries: bool = True
    masks: tuple[Mask, ...] = ()
    wording: str = EXCHANGE_WORDING

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def senders(self) -> tuple[str, ...]:
        """The outside hosts that send through a real MTA in this trace (its `via:` items), once each."""
        return tuple(dict.fromkeys(item.host for item in self.sessions if isinstance(item, ViaMta)))


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


YAML_SUFFIXES = (".yaml", ".yml")
CORPUS_FOLDER = "traces"
# What a YAML file holds is told by its content, wherever it lies (harness/schemas): a trace has
# `sessions` and one more of its own keys (other YAML has `spec:` too, every Kubernetes manifest for one,
# so no single key but `sessions`, which every trace needs, will do); a lab file has a lab's keys.
_TRACE_KEYS = frozenset({"id", "title", "spec", "outcome", "requires", "boundary", "masks", "lab"})
_LAB_KEYS = frozenset({"organization", "network", "dns", "global_catalog", "internet", "clients", "timers"})
# pytest's default `norecursedirs` (and its virtualenv check below): `mailflow run DIR` lists the files
# that `pytest DIR` collects, no more.
_SKIPPED_FOLDERS = ("*.egg", ".*", "_darcs", "build", "CVS", "dist", "node_modules", "venv", "{arch}")

Kind = Literal["trace", "lab", "other", "unreadable"]


def is_trace_file(path: Path, *, named: bool = False, root: Path | None = None) -> bool:
    """The one rule for which YAML files are traces, for `mailflow` and pytest alike:

    - a YAML file named on the command line is a trace, so one that is not valid is reported as an
      invalid trace (file, line, field) rather than skipped;
    - a YAML file found in a folder named on the command line is a trace if a folder on its path (below
      `root`, the current directory, when it lies there) is called `traces`, the corpus, where a broken
      trace must be reported too; or else if it looks like a trace: a mapping with `sessions` and
      another of a trace's own keys (`id`, `spec`, `outcome`, ...). Lab files, deviation lists, the
      catalogue and other YAML files are not collected, nor are hidden files (a trace writer's drafts).
    """
    if path.suffix not in YAML_SUFFIXES:
        return False
    if named:
        return True
    if path.name.startswith("."):
        return False
    return in_corpus(path, root) or sniff(path) == "trace"


def in_corpus(path: Path, root: Path | None = None) -> bool:
    """Whether a folder called `traces` holds the file, counting only the folders below `root` (the
    current directory) when the file lies there: a checkout that itself sits in some `traces` folder
    does not make its lab files traces."""
    absolute = path.resolve()
    base = (root or Path.cwd()).resolve()
    folders = absolute.relative_to(base).parts[:-1] if absolute.is_relative_to(base) else absolute.parts[:-1]
    return CORPUS_FOLDER in folders


def sniff(path: Path) -> Kind:
    """What a YAML file holds, by its top-level keys; `unreadable` when it is no YAML that parses (only
    loading it as a trace or a lab says where it breaks)."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_FastLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "unreadable"
    if not isinstance(data, dict):
        return "other"
    keys = {key for key in data if isinstance(key, str)}
    if "sessions" in keys and keys & _TRACE_KEYS:
        return "trace"
    return "lab" if keys & _LAB_KEYS else "other"


def yaml_files(folder: Path) -> list[Path]:
    """The YAML files under a folder, in order, skipping hidden files and the folders pytest skips."""
    found: list[Path] = []
    for current, folders, names in os.walk(folder):
        folders[:] = sorted(
            name
            for name in folders
            if not any(fnmatch.fnmatch(name, pattern) for pattern in _SKIPPED_FOLDERS)
            and not (Path(current) / name / "pyvenv.cfg").exists()
        )
        found += [
            Path(current) / name
            for name in sorted(names)
            if Path(name).suffix in YAML_SUFFIXES and not name.startswith(".")
        ]
    return sorted(found)


def load(path: Path) -> Trace:
    document = yamlsource.load(path)
    if not isinstance(document.data, dict):
        raise SourceError(path, 1, "", "a trace is a YAML mapping (id, title, spec, sessions, outcome)")
    _refuse_labels(document)
    try:
        yamlsource.validate(document, "trace.schema.json")
    except SourceError as exc:
        raise _clearer(document, exc) from None
    data: dict[str, Any] = document.data
    _check_spec_ids(document, data)
    lab = lab_path(data.get("lab", "contoso"), path.parent)
    if not lab.is_file():
        raise document.error(("lab",), missing_lab(data.get("lab", "contoso"), lab))
    # A broken lab file raises its own SourceError (its file, its line): that is what needs fixing.
    _check_lab_names(document, data, _load_lab(lab))
    _check_regexes(document, data.get("outcome") or {})
    sessions: list[Item] = []
    for number, raw in enumerate(data["sessions"]):
        if "submit" in raw or "lab" in raw or "foreign" in raw or "via" in raw:
            sessions.append(_other_item(document, number, raw, path))
        else:
            sessions.append(_session(document, number, raw, path))
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
        wait_for_retries=data.get("wait_for_retries", True),
        masks=_masks(document, data.get("masks") or []),
        wording=data.get("wording", EXCHANGE_WORDING),
    )


def _refuse_labels(document: yamlsource.Document) -> None:
    """A tracking event's `spec` field is the catalogue ID the reference MTA writes about itself: a
    trace that asserts it shows only that the MTA says so, not that the step happened. The schema
    leaves the field out; this says why, before the schema's "additional property" does."""
    outcome = document.data.get("outcome")
    events = outcome.get("events") if isinstance(outcome, dict) else None
    for index, event in enumerate(events if isinstance(events, list) else []):
        if isinstance(event, dict) and "spec" in event:
            raise document.error(
                ("outcome", "events", index, "spec"),
                "an event's spec field is a label the MTA writes about itself, not evidence: assert what "
                "shows the step instead (the event ID, its recipient or queue, a queue a frozen message "
                "waits in), and name the catalogue ID in the trace's spec: list",
            )


def _check_spec_ids(document: yamlsource.Document, data: dict[str, Any]) -> None:
    """The spec IDs are the catalogue's; the boundary IDs are among them."""
    known = catalogue()
    for index, spec_id in enumerate(data["spec"]):
        if spec_id not in known:
            raise document.error(
                ("spec", index), f"unknown catalogue ID {spec_id!r} (see harness/corpus/catalogue.yaml)"
            )
    for index, spec_id in enumerate(data.get("boundary") or []):
        if spec_id not in data["spec"]:
            raise document.error(("boundary", index), f"{spec_id!r} is not one of this trace's spec IDs")


def _session(document: yamlsource.Document, number: int, raw: dict[str, Any], path: Path) -> Session:
    """An SMTP session: a client's connection and its script (or its refusal)."""
    try:
        steps = parse_script(raw["script"]) if "script" in raw else []
    except ScriptError as exc:
        location: tuple[str | int, ...] = ("sessions", number, "script", exc.index)
        raise document.error((*location, exc.key) if exc.key else location, exc.message) from exc
    _check_message_files(document, number, steps, path)
    connect = raw["connect"]
    refused = raw.get("refused", False)
    lines = (
        (_line(document, ("sessions", number, "refused")),)
        if refused
        else tuple(_line(document, ("sessions", number, "script", i)) for i in range(len(steps)))
    )
    return Session(raw["client"], Connect(**connect), tuple(steps), refused, lines)


def _check_message_files(
    document: yamlsource.Document, number: int, steps: Sequence[Step], path: Path
) -> None:
    """Every message file a session's script sends is there."""
    for index, step in enumerate(steps):
        if (
            isinstance(step, Data | Bdat)
            and step.source is not None
            and (resolve_message_path(step.source, path.parent, MESSAGE_DIRS) is None)
        ):
            raise document.error(
                ("sessions", number, "script", index, "data" if isinstance(step, Data) else "bdat"),
                f"message file {step.source!r} not found next to the trace or in fixtures/messages",
            )


def _masks(document: yamlsource.Document, raw: list[dict[str, str]]) -> tuple[Mask, ...]:
    masks = []
    for number, item in enumerate(raw):
        try:
            masks.append(Mask(item["name"], re.compile(item["regex"], re.MULTILINE)))
        except re.error as exc:
            raise SourceError(
                document.path,
                _line(document, ("masks", number, "regex")),
                f"masks[{number}].regex",
                f"does not compile: {exc}",
            ) from None
    return tuple(masks)


def _other_item(document: yamlsource.Document, number: int, raw: dict[str, Any], path: Path) -> Item:
    if "lab" in raw:
        ((name, value),) = raw["lab"].items()
        line = _line(document, ("sessions", number))
        try:
            action = LabVerb(name)
        except ValueError:  # the schema lists the same names; this is its second line of defence
            raise SourceError(
                path,
                line,
                f"sessions[{number}].lab",
                f"no lab action {name!r} (expected one of: {', '.join(LabVerb)})",
            ) from None
        if action.takes_rule:
            return LabAction(action, value.get("host") or value.get("server"), line, dict(value))
        if action is LabVerb.SETTLE and isinstance(value, dict):
            return LabAction(action, None, line, dict(value))  # then what the queues must hold
        return LabAction(action, str(value) if action.takes_name else None, line)
    if "via" in raw:
        via = raw["via"]
        message = _data_item(document, ("sessions", number, "via", "data"), via["data"], path)
        to = via["to"]
        return ViaMta(
            via["host"],
            via.get("mta", "postfix"),
            via["from"],
            tuple([to] if isinstance(to, str) else to),
            message,
            _line(document, ("sessions", number)),
        )
    if "foreign" in raw:
        foreign = raw["foreign"]
        memo = _data_item(document, ("sessions", number, "foreign", "data"), foreign["data"], path)
        return ForeignMemo(
            foreign["gateway"], memo, _line(document, ("sessions", number)), foreign.get("refused", False)
        )
    submit = raw["submit"]
    data = _data_item(document, ("sessions", number, "submit", "data"), submit["data"], path)
    to = submit["to"]
    return Submission(
        submit["server"],
        submit["mailbox"],
        tuple([to] if isinstance(to, str) else to),
        data,
        _line(document, ("sessions", number)),
        submit.get("refused", False),
        float(submit.get("defer", 0.0)),
    )


def _data_item(
    document: yamlsource.Document, location: tuple[str | int, ...], raw: object, path: Path
) -> Data:
    """A message named by a submission or a foreign memo: a file next to the trace, or inline."""
    try:
        data = parse_step({"data": raw})
    except ScriptError as exc:
        raise document.error(location, exc.message) from None
    assert isinstance(data, Data)
    if data.source is not None and resolve_message_path(data.source, path.parent, MESSAGE_DIRS) is None:
        raise document.error(
            location, f"message file {data.source!r} not found next to the trace or in fixtures/messages"
        )
    return data


def _line(document: yamlsource.Document, location: Sequence[str | int]) -> int:
    return document.line_of(location) or 0


@functools.lru_cache(maxsize=16)
def _cached_lab(path: Path, version: tuple[int, int]) -> LabConfig:
    return lab_config.load(path)


def _load_lab(path: Path) -> LabConfig:
    """The lab a trace names, loaded once per version of its file: nearly every trace of the corpus
    names contoso, and one load is enough for all of them until the file changes."""
    stat = path.stat()
    return _cached_lab(path, (stat.st_mtime_ns, stat.st_size))


class _LabNames:
    """Checks that the names a trace uses exist in its lab, ignoring case as the lab and the checks do."""

    def __init__(self, document: yamlsource.Document, config: LabConfig) -> None:
        self.document = document
        self.config = config
        self.hosts = [h.name for h in config.hosts.values()]
        self.servers = [s.name for s in config.organization.servers]
        self.sinks = [h.name for h in config.internet_hosts]
        self.gateways = [c.name for c in config.organization.connectors if c.kind == "gateway"]
        # The hosts outside the organization that can run a real sending MTA.
        self.senders = [h.name for h in config.hosts.values() if h.kind in ("internet", "client")]
        # The categorizer of each server asks under the server's name; SMTP AUTH look-ups under this one.
        self.directory_clients = [*self.servers, AUTH_CLIENT]

    def require(
        self, location: Sequence[str | int], name: str, kind: str, known: Sequence[str], *, key: bool = False
    ) -> None:
        if name.lower() in {k.lower() for k in known}:
            return
        message = f"no {kind} named {name!r} (lab {self.config.name} has: {', '.join(known) or 'none'})"
        if key:  # a mapping key names it: point at the key, not at the value below it
            raise SourceError(
                self.document.path,
                self.document.key_line(location),
                yamlsource.field_name(location),
                message,
            )
        raise self.document.error(location, message)


def _check_regexes(document: yamlsource.Document, outcome: dict[str, Any]) -> None:
    """Outcome regexes compile now, not after the lab has run."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    for index, spec in enumerate(outcome.get("ldap") or []):
        if "filter_regex" in spec:
            found.append((("ldap", index, "filter_regex"), spec["filter_regex"]))
    for section in ("delivered", "not_delivered"):
        for index, spec in enumerate(outcome.get(section) or []):
            for key in ("headers", "wording_headers"):
                for name, pattern in (spec.get(key) or {}).items():
                    found.append(((section, index, key, name), pattern))
    for index, spec in enumerate(outcome.get("events") or []):
        for key in ("msgid", "subject"):
            if key in spec:
                found.append((("events", index, key), spec[key]))
    for location, pattern in found:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise document.error(
                ("outcome", *location), f"regex {pattern!r} does not compile: {exc}"
            ) from None


def _check_lab_names(document: yamlsource.Document, data: dict[str, Any], config: LabConfig) -> None:
    """Every host, server, sink and connector a trace names must be in its lab."""
    names = _LabNames(document, config)
    for number, session in enumerate(data["sessions"]):
        _check_session_names(names, ("sessions", number), session)
    outcome: dict[str, Any] = data.get("outcome") or {}
    _check_dns_names(names, outcome)
    _check_connection_names(names, outcome)
    _check_senders_receive_nothing(names, data)
    for index, spec in enumerate(outcome.get("ldap") or []):
        if "client" in spec:
            at = ("outcome", "ldap", index, "client")
            names.require(at, spec["client"], "directory client", names.directory_clients)
    for section in ("delivered", "not_delivered"):
        for index, spec in enumerate(outcome.get(section) or []):
            _check_delivery_names(names, ("outcome", section, index), spec)
    _check_server_names(names, outcome)


def _check_session_names(names: _LabNames, at: tuple[str | int, ...], session: dict[str, Any]) -> None:
    if "foreign" in session:
        names.require(
            (*at, "foreign", "gateway"), session["foreign"]["gateway"], "gateway connector", names.gateways
        )
    elif "submit" in session:
        names.require((*at, "submit", "server"), session["submit"]["server"], "server", names.servers)
    elif "lab" in session:
        _check_lab_action_names(names, at, session["lab"])
    elif "via" in session:
        names.require((*at, "via", "host"), session["via"]["host"], "Internet host or client", names.senders)
    else:
        names.require((*at, "client"), session["client"], "lab host", names.hosts)
        _check_connect_names(names, (*at, "connect"), session["connect"])


def _check_lab_action_names(names: _LabNames, at: tuple[str | int, ...], lab: dict[str, Any]) -> None:
    # The schema has checked the verb already: this checks the names its value gives.
    ((action, value),) = lab.items()
    subject = LabVerb(action).subject
    if subject == "connector":
        connectors = [
            c.name for c in names.config.organization.connectors if not c.name.endswith(" (reciprocal)")
        ]
        names.require((*at, "lab", action), value, "connector", connectors)
    elif subject == "server":
        names.require((*at, "lab", action), value, "server", names.servers)
    elif subject == "gateway":
        names.require((*at, "lab", action), value, "gateway connector", names.gateways)
    elif subject == "sink":
        names.require((*at, "lab", action, "host"), value["host"], "Internet host", names.sinks)
    elif subject == "queue":
        names.require((*at, "lab", action, "server"), value["server"], "server", names.servers)
    elif action == LabVerb.SETTLE and isinstance(value, dict):
        for index, spec in enumerate(value.get("queues") or []):
            names.require(
                (*at, "lab", action, "queues", index, "server"), spec["server"], "server", names.servers
            )


def _check_connect_names(names: _LabNames, at: tuple[str | int, ...], connect: dict[str, Any]) -> None:
    if "host" in connect:
        names.require((*at, "host"), connect["host"], "lab host", names.hosts)
    if "server" in connect:
        names.require((*at, "server"), connect["server"], "server", names.servers)
    if "virtual_server" in connect:
        if "server" not in connect:
            raise names.document.error(
                (*at, "virtual_server"),
                "virtual_server names one of a server's virtual servers: give server too",
            )
        server = names.config.organization.server(connect["server"])
        virtual = [vs.name for vs in server.virtual_servers]
        names.require(
            (*at, "virtual_server"),
            connect["virtual_server"],
            f"virtual server on {server.name}",
            virtual,
        )


def _check_dns_names(names: _LabNames, outcome: dict[str, Any]) -> None:
    """The DNS queries expected: their clients are lab hosts, their types DNS record types."""
    for index, spec in enumerate(outcome.get("dns") or []):
        at = ("outcome", "dns", index)
        if "client" in spec:
            names.require((*at, "client"), spec["client"], "lab host", names.hosts)
        if "type" in spec:
            try:
                dns.rdatatype.from_text(spec["type"])
            except dns.rdatatype.UnknownRdatatype:
                raise names.document.error(
                    (*at, "type"), f"unknown DNS record type {spec['type']!r}"
                ) from None


def _check_connection_names(names: _LabNames, outcome: dict[str, Any]) -> None:
    """The sessions expected in the protocol logs: a lab host's, to a virtual server that keeps one."""
    for index, spec in enumerate(outcome.get("connections") or []):
        at = ("outcome", "connections", index)
        names.require((*at, "client"), spec["client"], "lab host", names.hosts)
        names.require((*at, "server"), spec["server"], "server", names.servers)
        server = names.config.organization.server(spec["server"])
        vs = server.default_virtual_server
        if "virtual_server" in spec:
            virtual = [v.name for v in server.virtual_servers]
            names.require(
                (*at, "virtual_server"), spec["virtual_server"], f"virtual server on {server.name}", virtual
            )
            vs = next(v for v in server.virtual_servers if v.name.lower() == spec["virtual_server"].lower())
        if vs.logging != "w3c":
            raise names.document.error(
                (*at, "virtual_server" if "virtual_server" in spec else "server"),
                f"{server.name}'s {vs.name} keeps no protocol log, so no session to it can be seen: "
                f"set logging: w3c on it in lab {names.config.name}",
            )


def _check_senders_receive_nothing(names: _LabNames, data: dict[str, Any]) -> None:
    """A host that sends through a real MTA is that MTA for the whole trace, in a namespace of its own:
    no sink of the harness answers for it and no session of the harness binds its address, so nothing
    can be delivered to it, a reply rule set on it, or a session sent from or to it."""
    senders = {
        item["via"]["host"].lower(): number
        for number, item in enumerate(data["sessions"])
        if isinstance(item, dict) and "via" in item
    }
    if not senders:
        return
    named: list[tuple[tuple[str | int, ...], str]] = []
    for number, item in enumerate(data["sessions"]):
        rule = (item.get("lab") or {}).get("sink_rule") if isinstance(item, dict) else None
        if isinstance(rule, dict) and "host" in rule:
            named.append((("sessions", number, "lab", "sink_rule", "host"), rule["host"]))
        # The harness cannot speak from, nor connect to, an address that lives in the MTA's namespace.
        if isinstance(item, dict) and "client" in item:
            named.append((("sessions", number, "client"), item["client"]))
            if "host" in (item.get("connect") or {}):
                named.append((("sessions", number, "connect", "host"), item["connect"]["host"]))
    for section in ("delivered", "not_delivered"):
        for index, spec in enumerate((data.get("outcome") or {}).get(section) or []):
            if "sink" in spec:
                named.append((("outcome", section, index, "sink"), spec["sink"]))
    for location, host in named:
        if host.lower() in senders:
            raise names.document.error(
                location,
                f"{host} is a real sending MTA in this trace (sessions[{senders[host.lower()]}].via): "
                "nothing else can send from it or reach it; name another lab host",
            )


def _check_server_names(names: _LabNames, outcome: dict[str, Any]) -> None:
    """The servers named by the tracking logs, events, hops and queues expected."""
    for server in outcome.get("tracking") or {}:
        names.require(("outcome", "tracking", server), server, "server", names.servers, key=True)
    for index, spec in enumerate(outcome.get("events") or []):
        at = ("outcome", "events", index)
        names.require((*at, "server"), spec["server"], "server", names.servers)
        if "client" in spec:
            names.require((*at, "client"), spec["client"], "lab host", names.hosts)
    for index, server in enumerate(outcome.get("hops") or []):
        names.require(("outcome", "hops", index), server, "server", names.servers)
    for index, spec in enumerate(outcome.get("queues") or []):
        names.require(("outcome", "queues", index, "server"), spec["server"], "server", names.servers)


def _check_delivery_names(names: _LabNames, at: tuple[str | int, ...], spec: dict[str, Any]) -> None:
    # A field the check ignores for this kind of delivery would make it pass whatever it says.
    if "sink" in spec:
        names.require((*at, "sink"), spec["sink"], "Internet host", names.sinks)
        if "server" in spec:
            raise names.document.error(
                (*at, "server"), "server is for mailbox and gateway deliveries; a sink's sender is its peer"
            )
    elif "peer" in spec:
        raise names.document.error(
            (*at, "peer"), "peer is for sink deliveries: the lab host that handed the message over"
        )
    if "mailbox" in spec and "server" in spec:
        names.require((*at, "server"), spec["server"], "server", names.servers)
    if "gateway" in spec:
        names.require((*at, "gateway"), spec["gateway"], "gateway connector", names.gateways)
        if "server" in spec:
            names.require((*at, "server"), spec["server"], "server", names.servers)
    if "peer" in spec:
        names.require((*at, "peer"), spec["peer"], "lab host", names.hosts)
