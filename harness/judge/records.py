"""Failure records: every check the harness makes — a reply check of the replay, an outcome check
against the evidence — reports what differed as a `Failure`, a frozen record of facts (which kind of
check, where in the trace, what was expected, what came). Verdicts, known deviations, the matrix,
Allure and the run summary read these facts; the English sentence a person reads is rendered from a
record here and nowhere else (`sentence`, `lines`), so rewording it changes no verdict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from harness.smtp import syntax


class Kind(StrEnum):
    """What was checked. The first group are the replay's checks of one reply (harness/smtp/reply.py's
    expectation fields), then the other ways a step fails, then the outcome checks
    (harness/judge/expectations.py), then the differences of a near delivery."""

    CODE = "code"
    CLASS = "class"
    ENHANCED = "enhanced"
    TEXT = "text"
    PREFIX = "prefix"
    REGEX = "regex"
    CONTAINS = "contains"
    LINES = "lines"
    MASKED = "masked"
    OFFERS = "offers"  # an EHLO keyword the reply should offer and does not
    LACKS = "lacks"  # an EHLO keyword the reply should not offer and does
    TRANSPORT = "transport"  # no reply to check: a timeout, a closed connection, a malformed reply
    STEP = "step"  # a step that checks no reply: a close, a TLS handshake, a refused connection, a submission
    DELIVERY = "delivery"  # an expected delivery is missing
    UNEXPECTED_DELIVERY = "unexpected-delivery"
    DELIVERED_ANYWAY = "delivered-anyway"
    NOTHING_DELIVERED = "nothing-delivered"
    DNS = "dns"
    DNS_ORDER = "dns-order"
    CONNECTION = "connection"
    LDAP = "ldap"
    TRACKING = "tracking"
    EVENT = "event"
    HOPS = "hops"
    QUEUE = "queue"
    QUEUES_EMPTY = "queues-empty"
    SETTLED = "settled"
    # A difference between an expected delivery and one that came near it (`Near`).
    SERVER = "server"
    RECIPIENTS = "recipients"
    SENDER = "sender"
    GREETING = "greeting"  # HELO or EHLO: how the sender greeted a sink
    HEADER = "header"
    BODY = "body"
    DSN = "dsn"


REPLY_KINDS = frozenset(
    {Kind.CODE, Kind.CLASS, Kind.ENHANCED, Kind.TEXT, Kind.PREFIX, Kind.REGEX, Kind.CONTAINS, Kind.LINES,
     Kind.MASKED, Kind.OFFERS, Kind.LACKS}
)  # fmt: skip
# The wording layer: what a reply says to people rather than to the client, which acts on the code, the
# enhanced status code and the keywords offered (RFC 5321 4.2, RFC 3463). Judged only where a target's
# profile is the trace's wording (harness/smtp/reply.py `ReplyMatcher.behaviour`, docs/decisions.md).
WORDING_KINDS = frozenset({Kind.TEXT, Kind.PREFIX, Kind.REGEX, Kind.CONTAINS, Kind.LINES, Kind.MASKED})

# The sentence of an outcome check that fails after a session has failed: the trace stopped there,
# so what its later steps would have caused is missing.
KNOCK_ON = "after the failure above: "


@dataclass(frozen=True)
class Near:
    """A delivery that came nearest to a missing one, and every way it differs from it."""

    delivery: str  # the delivery as `Delivery.describe` shows it
    differences: tuple[Failure, ...]

    def to_json(self) -> dict[str, Any]:
        return {"delivery": self.delivery, "differences": [d.to_json() for d in self.differences]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Near:
        return cls(str(data["delivery"]), tuple(Failure.from_json(d) for d in data["differences"]))


@dataclass(frozen=True)
class Failure:
    """One difference between what a trace expects and what happened."""

    kind: Kind
    expected: str = ""
    actual: str = ""
    field: str = ""
    """What in particular: a header's name, a DNS query, a queue, a server; empty when the kind says it."""
    detail: str = ""
    """The sentence itself, for the kinds whose cause is a transport or lab problem (TRANSPORT, STEP)."""
    session: int | None = None  # from 1, as a reader of the trace counts
    client: str = ""
    step: int | None = None  # from 1
    line: int | None = None  # the step's line in the trace file
    title: str = ""  # the step's title (harness/run/replay.py: step_title)
    command: str = ""  # the command the reply answers: "RCPT TO:<x>", "(greeting)", "(end of data)"
    reply: tuple[str, ...] = ()  # the reply's lines, when one came
    same_code: bool = False
    """A reply check whose reply carries the three-digit code the step expects (so a difference of a
    wording kind is wording only)."""
    near: tuple[Near, ...] = ()  # DELIVERY: the deliveries that came nearest
    knock_on: bool = False  # an outcome check that fails after a failed session

    @property
    def verb(self) -> str:
        """The command's verb, upper case ("RCPT"); "greeting" or "end-of-data" for those replies."""
        if self.command.startswith("("):
            return self.command.strip("()").replace(" ", "-")
        return syntax.verb(self.command)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": str(self.kind)}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "kind" or value == item.default:
                continue
            if item.name == "near":
                value = [n.to_json() for n in value]
            elif item.name == "reply":
                value = list(value)
            data[item.name] = value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Failure:
        values = {key: value for key, value in data.items() if key in _FIELDS}
        values["kind"] = Kind(data["kind"])
        values["reply"] = tuple(data.get("reply") or ())
        values["near"] = tuple(Near.from_json(n) for n in data.get("near") or ())
        return cls(**values)


_FIELDS = frozenset(item.name for item in dataclasses.fields(Failure))


@dataclass(frozen=True)
class Waived:
    """A failure the target's known deviations explain: the entry (file:line) and its reason."""

    failure: Failure
    reason: str
    entry: str

    def text(self) -> str:
        return f"{sentence(self.failure)} (known deviation: {self.reason})"

    def to_json(self) -> dict[str, Any]:
        return {"failure": self.failure.to_json(), "reason": self.reason, "entry": self.entry}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Waived:
        return cls(Failure.from_json(data["failure"]), str(data["reason"]), str(data["entry"]))


def _plural(count: str, noun: str) -> str:
    return f"{count} {noun}" if count == "1" else f"{count} {noun}s"


def _missing(verb: str) -> Callable[[Failure], str]:
    """The sentence of a presence check: `expected` is "present" or "absent"."""

    def render(f: Failure) -> str:
        return f"{f.field} was {verb}" if f.expected == "absent" else f"{f.field} was not {verb}{f.actual}"

    return render


def _server(f: Failure) -> str:
    return f"{f.field} {f.actual}, expected {f.expected}"


def _recipients(f: Failure) -> str:
    return f"recipients {f.actual}, {'none of' if f.field == 'any' else 'expected'} {f.expected}"


def _body(f: Failure) -> str:
    return (
        f"body does not contain {f.expected!r}" if f.field == "contains" else f"body contains {f.expected!r}"
    )


def _dsn(f: Failure) -> str:
    if f.field == "type":
        return f"not a DSN (Content-Type {f.actual})"
    if f.field == "fields":
        return "DSN has no per-recipient delivery-status fields"
    return f"no DSN recipient block matches {f.expected} (have: {f.actual})"


def _tracking(f: Failure) -> str:
    if f.field.startswith("no log "):
        return f"no tracking log for server {f.field.removeprefix('no log ')!r}"
    return f"tracking on {f.field}: expected {f.expected}, got {f.actual}"


def _queue(f: Failure) -> str:
    if f.expected == "at least one":
        return f"{f.field} holds no message"
    return f"{f.field} holds {f.actual} message(s), expected {f.expected}"


_SENTENCES: dict[Kind, Callable[[Failure], str]] = {
    Kind.CODE: lambda f: f"expected code {f.expected}, got {f.actual}",
    Kind.CLASS: lambda f: f"expected class {f.expected}, got {f.actual}",
    Kind.ENHANCED: lambda f: f"expected enhanced code {f.expected}, got {f.actual or 'none'}",
    Kind.TEXT: lambda f: f"expected text {f.expected!r}, got {f.actual!r}",
    Kind.PREFIX: lambda f: f"expected first line to start with {f.expected!r}, got {f.actual!r}",
    Kind.REGEX: lambda f: f"expected reply to match /{f.expected}/, got {f.actual!r}",
    Kind.CONTAINS: lambda f: f"expected reply to contain {f.expected!r}, got {f.actual!r}",
    Kind.LINES: lambda f: f"expected {_plural(f.expected, 'line')}, got {f.actual}",
    Kind.MASKED: lambda f: f"expected (masked) {f.expected!r}, got {f.actual!r}",
    Kind.OFFERS: lambda f: f"expected EHLO to offer {f.expected}",
    Kind.LACKS: lambda f: f"expected EHLO not to offer {f.expected}",
    Kind.TRANSPORT: lambda f: f.detail,
    Kind.STEP: lambda f: f.detail,
    Kind.DELIVERY: lambda f: f"no delivery matches {f.expected}",
    Kind.UNEXPECTED_DELIVERY: lambda f: f"unexpected delivery: {f.actual}",
    Kind.NOTHING_DELIVERED: lambda f: f"unexpected delivery: {f.actual}",
    Kind.DELIVERED_ANYWAY: lambda f: f"delivered anyway: {f.actual}",
    Kind.DNS: _missing("made"),
    Kind.DNS_ORDER: lambda f: f"{f.actual} was asked before {f.expected}, which the trace lists first",
    Kind.CONNECTION: _missing("logged"),
    Kind.LDAP: _missing("sent"),
    Kind.EVENT: _missing("logged"),
    Kind.TRACKING: _tracking,
    Kind.HOPS: lambda f: f"hops: expected {f.expected}, got {f.actual}",
    Kind.QUEUE: _queue,
    Kind.QUEUES_EMPTY: lambda f: f"{f.field} holds {f.actual}",
    Kind.SETTLED: lambda f: f"the lab was still working after {f.expected} s",
    Kind.SERVER: _server,
    Kind.RECIPIENTS: _recipients,
    Kind.SENDER: lambda f: f"sender <{f.actual}>, expected <{f.expected}>",
    Kind.GREETING: lambda f: f"greeted with {f.actual or 'nothing recorded'}, expected {f.expected}",
    Kind.HEADER: lambda f: f"header {f.field}: {f.actual!r} does not match /{f.expected}/",
    Kind.BODY: _body,
    Kind.DSN: _dsn,
}


def sentence(failure: Failure) -> str:
    """What differed, in one sentence (without where in the trace)."""
    return _SENTENCES[failure.kind](failure)


def near_line(near: Near) -> str:
    return f"{near.delivery}: {'; '.join(sentence(d) for d in near.differences)}"


def sentences(failure: Failure) -> list[str]:
    """The sentence, then for a missing delivery one line for each delivery that came near it."""
    return [sentence(failure), *(near_line(n) for n in failure.near)]


def step_name(failure: Failure) -> str:
    """Which step failed, as a reader of the trace counts: "session 1 (internet), step 7"."""
    return f"session {failure.session} ({failure.client}), step {failure.step}"


def lines(failures: Iterable[Failure]) -> list[str]:
    """One line per failure, as `mailflow run` prints them. A step's failure names the step and its line
    in the trace file; the first failure of a step says what the server replied, unless a failure of
    that step quotes it already. An outcome check that fails after a failed session says so."""
    listed = list(failures)
    result: list[str] = []
    quoted: set[tuple[int | None, int | None]] = set()
    for failure in listed:
        if failure.session is None:
            result += [f"{KNOCK_ON}{text}" if failure.knock_on else text for text in sentences(failure)]
            continue
        text = sentence(failure)
        key = (failure.session, failure.step)
        if failure.reply and key not in quoted:
            quoted.add(key)
            first = failure.reply[0]
            same_step = [f for f in listed if (f.session, f.step) == key]
            if not any(repr(first) in sentence(f) for f in same_step):
                more = f" (+{len(failure.reply) - 1} lines)" if len(failure.reply) > 1 else ""
                text += f"; the server replied {first!r}{more}"
        where = f" (line {failure.line})" if failure.line is not None else ""
        result.append(f"{step_name(failure)}{where}: {failure.title}: {text}")
    return result


def located(failures: Sequence[Failure], **where: Any) -> list[Failure]:
    """The failures with where they happened filled in (session, client, line, knock_on)."""
    return [dataclasses.replace(f, **where) for f in failures]
