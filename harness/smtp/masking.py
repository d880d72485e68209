"""Identity-preserving masking of what changes from run to run and from target to target: times,
dates, ports, lab addresses (which move with the lab's base), queue ids and generated message ids.
The same value becomes the same placeholder within one text, so a transcript that names one queue id
twice still says so after masking.

`Masker` masks a transcript for `mailflow diff`; `Normalizer` masks the replies of a recorded trace,
once when it is recorded and again, with a fresh one, each time it is replayed: the Nth distinct value
of a kind is `<kind-N>` both times, so a recorded reply matches another run's or another server's as
long as the same values recur in the same places.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

_ELAPSED = re.compile(r"^\+\d+\.\d{3} ", re.MULTILINE)
_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?\d{1,2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}"
)
_ADDRESS_PORT = re.compile(r"\b(\d{1,3}(?:\.\d{1,3}){3})(?::(\d{1,5}))?\b")
# A real sending MTA's log lines, which are its transcript (harness/lab/sender.py): the syslog time, the
# daemon's pid, the queue id that starts the entry, and how long each stage took.
_LOG_TIME = re.compile(r"\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d{2}:\d{2}:\d{2}\b")
_LOG_PID = re.compile(r"(?<=\s)([a-z]+/[\w-]+)\[\d+\](?=:)")
_LOG_QUEUE_ID = re.compile(r"(?<=\]: )[0-9A-F]{6,}(?=: )")
_LOG_DELAYS = re.compile(r"\b(delays?)=[\d./]+")
# Ids a message picks up on its way, quoted in a failed header check: the queue id in a Received header
# ("with ESMTP id CB87A24D609", Exim's "id 1tXyZa-000123-AB") and a Message-ID the server generated.
_RECEIVED_ID = re.compile(r"(?<=\bid )(?=[0-9A-Za-z-]*\d)[0-9A-Za-z]{6,}(?:-[0-9A-Za-z]+)*\b")
_MESSAGE_ID = re.compile(r"(?i)(?<=message-id: ')<[^<>\s]+>")


class Masker:
    """Masks one text's volatile values; `names` maps lab addresses to host names."""

    def __init__(self, names: Mapping[str, str]) -> None:
        self.names = names
        self._seen: dict[tuple[str, str], str] = {}

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        if key not in self._seen:
            count = sum(1 for seen_kind, _ in self._seen if seen_kind == kind) + 1
            self._seen[key] = f"<{kind}-{count}>"
        return self._seen[key]

    def text(self, text: str) -> str:
        text = _ELAPSED.sub("", text)
        text = _DATE.sub("<date>", text)
        text = _LOG_TIME.sub("<time>", text)
        text = _LOG_PID.sub(r"\1[<pid>]", text)
        text = _LOG_DELAYS.sub(r"\1=<time>", text)
        for pattern in (*_QUEUE_IDS, _LOG_QUEUE_ID, _RECEIVED_ID):
            text = pattern.sub(lambda m: self.placeholder("queue-id", m[0]), text)
        text = _MESSAGE_ID.sub(lambda m: self.placeholder("message-id", m[0]), text)
        return _ADDRESS_PORT.sub(self._address, text)

    def _address(self, match: re.Match[str]) -> str:
        address, port = match[1], match[2]
        name = self.names.get(address)
        if name is None:
            return match[0]
        return f"<{name}>" + (":<port>" if port else "")


def mask(text: str, names: Mapping[str, str]) -> str:
    return Masker(names).text(text)


# What a server names itself by, in its greeting and EHLO reply: a dotted name right after the code.
_OWN_NAME = re.compile(r"^(?:220|250)[ -]([A-Za-z0-9-]*[A-Za-z][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)+)\b")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
# The port after an address ("[192.0.2.1]:41234", "192.0.2.1:41234"): a client's changes every time.
_IPV4_PORT = re.compile(r"(\b\d{1,3}(?:\.\d{1,3}){3}\]?:)(\d{1,5})\b")
# Queue ids in the reply to DATA, as Exchange, Postfix, Exim and OpenSMTPD write them.
_QUEUE_IDS = (
    re.compile(r"(?<=<)[^<>@\s]+(?=@[^<>\s]+> Queued mail for delivery)"),
    re.compile(r"(?<=queued as )[0-9A-Za-z]{6,}\b"),
    re.compile(r"(?<=\bid=)[0-9A-Za-z-]{6,}\b"),
    re.compile(r"(?<=^250 2\.0\.0 )[0-9a-f]{8}(?= Message accepted for delivery)", re.MULTILINE),
)


@dataclass(frozen=True)
class Mask:
    """A trace's own volatile value (`masks:`): what `pattern` matches becomes `<name-N>`."""

    name: str
    pattern: re.Pattern[str]


class Normalizer:
    """Masks the replies of one trace, in the order they come, with numbered placeholders: the trace's
    own masks, dates, queue ids, the server's own names, IPv4 addresses, and a greeting's free text."""

    def __init__(self, masks: Sequence[Mask] = ()) -> None:
        self.masks = tuple(masks)
        self._seen: dict[tuple[str, str], str] = {}
        self._names: list[str] = []

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        if key not in self._seen:
            count = sum(1 for seen_kind, _ in self._seen if seen_kind == kind) + 1
            self._seen[key] = f"<{kind}-{count}>"
        return self._seen[key]

    def _replacer(self, kind: str) -> Callable[[re.Match[str]], str]:
        return lambda match: self.placeholder(kind, match[0])

    def reply(self, lines: Sequence[str], greeting: bool = False) -> str:
        """One reply's lines, masked and joined with newlines. The greeting's text after the server's
        name is the product's banner, which differs from one server to the next: it is masked whole."""
        text = "\n".join(lines)
        for mask in self.masks:
            text = mask.pattern.sub(self._replacer(mask.name), text)
        text = _DATE.sub(lambda m: self.placeholder("date", m[0]), text)
        for pattern in _QUEUE_IDS:
            text = pattern.sub(lambda m: self.placeholder("queue-id", m[0]), text)
        if (own := _OWN_NAME.match(text)) and own[1].lower() not in self._names:
            self._names.append(own[1].lower())
        for name in self._names:
            text = re.sub(
                rf"(?:(?<=^\d{{3}}-)|(?<![\w.-])){re.escape(name)}(?![\w-])",
                lambda m: self.placeholder("host", m[0].lower()),
                text,
                flags=re.IGNORECASE | re.MULTILINE,
            )
        text = _IPV4_PORT.sub(lambda m: m[1] + self.placeholder("port", m[2]), text)
        text = _IPV4.sub(lambda m: self.placeholder("address", m[0]), text)
        if greeting:
            first, newline, rest = text.partition("\n")
            parts = re.match(r"^(\d{3}[ -])(<host-\d+>)? ?(.*)$", first)
            if parts and parts[3]:
                first = parts[1] + (f"{parts[2]} " if parts[2] else "") + "<banner>"
            text = first + newline + rest
        return text
