"""SMTP replies: reading them off the wire exactly, and matching them against a trace's expectations.

A conformance harness must not paper over a server's mistakes, so the reader is strict about the
reply grammar (RFC 5321 section 4.2) and reports precisely what arrived when something goes wrong:
every exception carries the bytes consumed so far, so a report can show them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

MAX_LINE = 4096
"""Longest reply line we accept, terminator excluded. RFC 5321 allows 512; we are more lenient so that a
long but otherwise sane line is matched rather than rejected, while a runaway server cannot make us
buffer without bound."""

_LINE_RE = re.compile(r"^\d{3}([ -]|$)")
_ENHANCED_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}\b")
_CLASS_RE = re.compile(r"^[1-5]xx$", re.IGNORECASE)
# The code and enhanced status code a wording expectation starts with: `250 2.1.0 ...` written as a
# prefix or a masked reply, `^550 5\.7\.1 ...` as a regular expression.
_WRITTEN_CODE = re.compile(r"^(?:\(\?m\))?(?:\\A|\^)?(\d{3})(?:[ -]|\\ |$)")
_WRITTEN_ENHANCED = re.compile(r"^([245])\\?\.(\d{1,3})\\?\.(\d{1,3})(?=[ \\\n]|$)")


@dataclass(frozen=True)
class Reply:
    """One complete (possibly multi-line) SMTP reply."""

    code: int
    lines: tuple[str, ...]
    """Raw lines without their line terminators, e.g. ``("250-mx.example", "250 SIZE 1000")``."""
    raw: bytes = field(default=b"", compare=False, repr=False)
    """The exact bytes the reply was read from, terminators included (empty when built by hand)."""

    @classmethod
    def of(cls, lines: Sequence[str]) -> Reply:
        """A reply from lines recorded or logged earlier, its code read off its last line."""
        return cls(reply_code(lines[-1]), tuple(lines))

    @property
    def first(self) -> str:
        return self.lines[0] if self.lines else ""

    @property
    def text(self) -> str:
        """The lines' texts after the ``NNN-``/``NNN `` prefix, joined with newlines."""
        return "\n".join(line[4:] for line in self.lines)

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 enhanced status code at the start of the first line's text, if any."""
        match = _ENHANCED_RE.match(self.first[4:])
        return match.group(0) if match else None

    @property
    def keywords(self) -> dict[str, frozenset[str]]:
        """The EHLO keywords this reply offers, upper case, each with its parameters (RFC 5321
        4.1.1.1: every line after the first is a keyword and its parameters)."""
        offered: dict[str, frozenset[str]] = {}
        for line in self.lines[1:]:
            words = line[4:].upper().split()
            if words:
                offered[words[0]] = offered.get(words[0], frozenset()) | frozenset(words[1:])
        return offered

    @property
    def raw_text(self) -> str:
        """The raw lines joined with newlines: what ``regex`` and ``contains`` expectations look at."""
        return "\n".join(self.lines)


class ReplyError(Exception):
    """Reading a reply failed; `received` holds every byte consumed while trying."""

    def __init__(self, message: str, received: bytes) -> None:
        super().__init__(message)
        self.received = received


class ReplyTimeout(ReplyError):
    """No complete reply arrived within the timeout."""


class ConnectionClosed(ReplyError):
    """The server closed the connection before or in the middle of a reply."""


class MalformedReply(ReplyError):
    """A reply line that does not follow the RFC 5321 reply grammar; `reason` says how, without quoting
    the line (for a caller that names the line its own way)."""

    def __init__(self, message: str, received: bytes, reason: str = "") -> None:
        super().__init__(message, received)
        self.reason = reason or message


def show_bytes(data: bytes) -> str:
    """Bytes as printable text, with repr-style escapes for everything that is not printable ASCII."""
    out: list[str] = []
    for byte in data:
        if byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        elif byte == 0x0D:
            out.append("\\r")
        elif byte == 0x0A:
            out.append("\\n")
        elif byte == 0x09:
            out.append("\\t")
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def quote_bytes(data: bytes) -> str:
    """`show_bytes` in single quotes, for quoting wire data inside a message."""
    return f"'{show_bytes(data)}'"


def strip_terminator(line: bytes) -> bytes:
    """A line without its CRLF, or its bare LF (which the transcript shows, and is taken as one)."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


def reply_line(line: str) -> tuple[int, bool] | None:
    """The reply code of one reply line (terminator stripped) and whether it is the reply's last line,
    by RFC 5321's reply grammar; None when the line is no reply line. The one place a code is read off a
    line: a bare ``NNN`` is a last line, as the grammar allows."""
    if not _LINE_RE.match(line):
        return None
    return int(line[:3]), line[3:4] != "-"


def reply_code(line: str) -> int:
    """The code of a reply line; ValueError when it is none (a recorded reply is always one)."""
    parsed = reply_line(line)
    if parsed is None:
        raise ValueError(f"no SMTP reply line: {line[:80]!r}")
    return parsed[0]


class ReplyLines:
    """Reply lines in, complete replies out: the reply grammar with no I/O, for `read_reply` and for
    `harness.smtp.dialogue`, which reads replies off bytes that have already arrived."""

    def __init__(self) -> None:
        self.received = bytearray()
        """Every byte added since the last complete reply."""
        self._lines: list[str] = []
        self._code: int | None = None

    @property
    def partial(self) -> bool:
        """Whether lines of a reply not yet complete have been added."""
        return bool(self._lines)

    def add(self, raw_line: bytes) -> Reply | None:
        """Add one line (terminator included); the reply when this line completes one."""
        self.received += raw_line
        content = strip_terminator(raw_line)
        if len(content) > MAX_LINE:
            self._malformed(
                f"reply line longer than {MAX_LINE} bytes: {show_bytes(content[:80])}...",
                f"a reply line longer than {MAX_LINE} bytes",
            )
        text = content.decode("utf-8", errors="backslashreplace")
        parsed = reply_line(text)
        if parsed is None:
            self._malformed(f"malformed reply line: {quote_bytes(content)}", "which is no SMTP reply line")
        code, last = parsed
        if self._code is not None and code != self._code:
            self._malformed(
                f"reply code changed from {self._code} to {code} within one reply: {quote_bytes(content)}",
                f"where the reply code changes from {self._code} within one reply",
            )
        self._code = code
        self._lines.append(text)
        if not last:
            return None
        reply = Reply(code, tuple(self._lines), bytes(self.received))
        self.received.clear()
        self._lines.clear()
        self._code = None
        return reply

    def _malformed(self, message: str, reason: str) -> NoReturn:
        raise MalformedReply(message, bytes(self.received), reason)


class _ByteLines:
    """Lines off a stream a byte at a time, so that nothing beyond one reply is consumed (a pipelined
    next reply must stay in the reader) and so that on a timeout the partial line is known.
    StreamReader.read does not suspend while its buffer has data, so this is cheap."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.received = bytearray()

    async def line(self) -> bytes:
        line = bytearray()
        while True:
            byte = await self.reader.read(1)
            if not byte:
                what = "in the middle of a reply" if self.received else "before a reply"
                raise ConnectionClosed(f"connection closed by the server {what}", bytes(self.received))
            self.received += byte
            line += byte
            if byte == b"\n":
                return bytes(line)
            if len(line) > MAX_LINE + 1:  # one byte of slack for the CR of a CRLF
                raise MalformedReply(
                    f"reply line longer than {MAX_LINE} bytes: {show_bytes(bytes(line[:80]))}...",
                    bytes(self.received),
                )


async def read_reply(
    reader: asyncio.StreamReader,
    timeout: float,
    *,
    on_line: Callable[[bytes], None] | None = None,
) -> Reply:
    """Read one complete reply: continuation lines (``NNN-``) up to and including the final ``NNN `` line.

    `timeout` bounds the whole reply, not each line. `on_line` is called with each complete raw line
    (terminator included) as soon as it has been read, so a caller can timestamp lines individually.
    A bare LF is accepted as a line terminator (the transcript shows it); a bare ``NNN`` final line
    without text is accepted because RFC 5321's grammar allows it.
    """
    lines = _ByteLines(reader)
    replies = ReplyLines()
    try:
        async with asyncio.timeout(timeout):
            while True:
                raw_line = await lines.line()
                if on_line is not None:
                    on_line(raw_line)
                try:
                    reply = replies.add(raw_line)
                except MalformedReply as exc:
                    raise MalformedReply(str(exc), bytes(lines.received), exc.reason) from None
                if reply is not None:
                    return reply
    except TimeoutError:
        raise ReplyTimeout(f"no complete reply within {timeout:g} s", bytes(lines.received)) from None


@dataclass(frozen=True)
class ReplyMatcher:
    """What an ``expect`` step requires of a reply; every field that is set must hold."""

    code: int | None = None
    reply_class: int | None = None
    """First digit of the code, from ``"2xx"``."""
    enhanced: str | None = None
    text: str | None = None
    prefix: str | None = None
    regex: re.Pattern[str] | None = None
    contains: str | None = None
    lines: int | None = None
    masked: str | None = None
    """The whole reply (lines joined with newlines) with its volatile values as placeholders
    (harness/smtp/masking.py): what a recorded trace expects."""
    offers: tuple[str, ...] = ()
    """EHLO keywords the reply must offer, in any order: `AUTH LOGIN PLAIN` needs AUTH with at least
    those parameters."""
    lacks: tuple[str, ...] = ()
    """EHLO keywords the reply must not offer."""

    _KEYS = frozenset(
        {
            "code",
            "class",
            "enhanced",
            "text",
            "prefix",
            "regex",
            "contains",
            "lines",
            "masked",
            "offers",
            "lacks",
        }
    )

    def behaviour(self) -> ReplyMatcher:
        """The behaviour layer of this expectation: the reply class, the code, the enhanced status code
        and the EHLO keywords offered or not, including the code and enhanced code that its wording
        starts with (`text: "2.1.5 bob@contoso.com"` expects 2.1.5). What a server says to people, its
        texts, line layout and keyword order, is the wording layer: left out."""
        code = self.code
        enhanced = self.enhanced
        for written in (self.prefix, self.masked, self.regex.pattern if self.regex is not None else None):
            found = _WRITTEN_CODE.match(written or "")
            if found is None or written is None:
                continue
            code = code if code is not None else int(found[1])
            if enhanced is None:
                enhanced = _written_enhanced(written[found.end() :])
        if enhanced is None and self.text is not None:
            enhanced = _written_enhanced(self.text)
        return ReplyMatcher(
            code=code,
            reply_class=self.reply_class,
            enhanced=enhanced,
            offers=self.offers,
            lacks=self.lacks,
        )

    @classmethod
    def parse(cls, spec: object) -> ReplyMatcher:
        """Build a matcher from a trace's ``expect`` value; ValueError says what is wrong with it."""
        # bool is an int subclass; `expect: true` is a mistake, not code 1.
        if isinstance(spec, bool):
            raise ValueError(f"expectation must be a reply code, a string or a mapping, not {spec!r}")
        if isinstance(spec, int):
            return cls(code=_parse_code(spec))
        if isinstance(spec, str):
            if _CLASS_RE.match(spec):
                return cls(reply_class=int(spec[0]))
            if not spec:
                raise ValueError("expectation must not be an empty string")
            return cls(prefix=spec)
        if isinstance(spec, Mapping):
            return cls._parse_mapping(spec)
        raise ValueError(
            f"expectation must be a reply code, a string or a mapping, not {type(spec).__name__}"
        )

    @classmethod
    def _parse_mapping(cls, spec: Mapping[object, object]) -> ReplyMatcher:
        unknown = sorted(str(key) for key in spec if key not in cls._KEYS)
        if unknown:
            raise ValueError(
                f"unknown expectation key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(cls._KEYS))}"
            )
        if not spec:
            raise ValueError("expectation mapping must have at least one key")
        code = _parse_code(spec["code"]) if "code" in spec else None
        reply_class = None
        if "class" in spec:
            value = spec["class"]
            if not isinstance(value, str) or not _CLASS_RE.match(value):
                raise ValueError(f"class must be one of 2xx, 3xx, 4xx, 5xx, not {value!r}")
            reply_class = int(value[0])
            if code is not None and code // 100 != reply_class:
                raise ValueError(f"code {code} can never be in class {value}")
        enhanced = None
        if "enhanced" in spec:
            value = spec["enhanced"]
            if not isinstance(value, str) or not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", value):
                raise ValueError(f"enhanced must be a status code like 2.1.0, not {value!r}")
            enhanced = value
        regex = None
        if "regex" in spec:
            pattern = _string(spec, "regex")
            try:
                regex = re.compile(pattern, re.MULTILINE)
            except re.error as exc:
                raise ValueError(f"regex {pattern!r} does not compile: {exc}") from None
        offers, lacks = _offers_and_lacks(spec)
        lines = None
        if "lines" in spec:
            value = spec["lines"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"lines must be a positive integer, not {value!r}")
            lines = value
        return cls(
            code=code,
            reply_class=reply_class,
            enhanced=enhanced,
            text=_string(spec, "text", allow_empty=True) if "text" in spec else None,
            prefix=_string(spec, "prefix") if "prefix" in spec else None,
            regex=regex,
            contains=_string(spec, "contains") if "contains" in spec else None,
            lines=lines,
            masked=_string(spec, "masked") if "masked" in spec else None,
            offers=offers,
            lacks=lacks,
        )

    def check(self, reply: Reply, masked: str | None = None) -> list[str]:
        """Human-readable mismatches between this expectation and `reply`; empty when it matches.
        `masked` is the reply as the trace's normalizer masks it (for a `masked` expectation)."""
        problems: list[str] = []
        if self.masked is not None:
            actual = masked if masked is not None else reply.raw_text
            if actual != self.masked:
                problems.append(f"expected (masked) {self.masked!r}, got {actual!r}")
        if self.code is not None and reply.code != self.code:
            problems.append(f"expected code {self.code}, got {reply.code}")
        if self.reply_class is not None and reply.code // 100 != self.reply_class:
            problems.append(f"expected class {self.reply_class}xx, got {reply.code}")
        if self.enhanced is not None and reply.enhanced != self.enhanced:
            problems.append(f"expected enhanced code {self.enhanced}, got {reply.enhanced or 'none'}")
        if self.text is not None and reply.text != self.text:
            problems.append(f"expected text {self.text!r}, got {reply.text!r}")
        if self.prefix is not None and not reply.first.startswith(self.prefix):
            problems.append(f"expected first line to start with {self.prefix!r}, got {reply.first!r}")
        if self.regex is not None and not self.regex.search(reply.raw_text):
            problems.append(f"expected reply to match /{self.regex.pattern}/, got {reply.raw_text!r}")
        if self.contains is not None and self.contains not in reply.raw_text:
            problems.append(f"expected reply to contain {self.contains!r}, got {reply.raw_text!r}")
        if self.lines is not None and len(reply.lines) != self.lines:
            problems.append(f"expected {_plural(self.lines, 'line')}, got {len(reply.lines)}")
        problems += [f"expected EHLO to offer {k}" for k in self.missing_keywords(reply)]
        problems += [f"expected EHLO not to offer {k}" for k in self.unwanted_keywords(reply)]
        return problems

    def missing_keywords(self, reply: Reply) -> list[str]:
        """The `offers` keywords (with their parameters) the reply does not offer."""
        offered = reply.keywords
        missing: list[str] = []
        for wanted in self.offers:
            keyword, *params = wanted.upper().split()
            if keyword not in offered or not set(params) <= offered[keyword]:
                missing.append(wanted)
        return missing

    def unwanted_keywords(self, reply: Reply) -> list[str]:
        """The `lacks` keywords the reply offers all the same."""
        offered = reply.keywords
        return [k for k in self.lacks if k.split()[0].upper() in offered]

    def describe(self) -> str:
        """Short summary for step titles, e.g. ``250 enhanced 2.1.0``."""
        parts: list[str] = []
        if self.code is not None:
            parts.append(str(self.code))
        if self.reply_class is not None:
            parts.append(f"{self.reply_class}xx")
        if self.enhanced is not None:
            parts.append(f"enhanced {self.enhanced}")
        if self.prefix is not None:
            parts.append(f"prefix {self.prefix!r}")
        if self.text is not None:
            parts.append(f"text {self.text!r}")
        if self.regex is not None:
            parts.append(f"regex /{self.regex.pattern}/")
        if self.contains is not None:
            parts.append(f"contains {self.contains!r}")
        if self.lines is not None:
            parts.append(_plural(self.lines, "line"))
        if self.masked is not None:
            parts.append(f"masked {self.masked!r}")
        if self.offers:
            parts.append(f"offers {', '.join(self.offers)}")
        if self.lacks:
            parts.append(f"lacks {', '.join(self.lacks)}")
        return " ".join(parts)


def _parse_code(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise ValueError(f"reply code must be an integer from 100 to 599, not {value!r}")
    return value


def _string(spec: Mapping[object, object], key: str, *, allow_empty: bool = False) -> str:
    value = spec[key]
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ValueError(f"{key} must be a non-empty string, not {value!r}")
    return value


def _written_enhanced(text: str) -> str | None:
    """The enhanced status code a text (or a pattern, its dots escaped) starts with, if any."""
    found = _WRITTEN_ENHANCED.match(text)
    return ".".join(found.groups()) if found else None


def _offers_and_lacks(spec: Mapping[object, object]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    offers = _keywords(spec, "offers")
    lacks = _keywords(spec, "lacks")
    both = {o.split()[0].upper() for o in offers} & {k.split()[0].upper() for k in lacks}
    if both:
        raise ValueError(f"{', '.join(sorted(both))} cannot be both offered and lacking")
    return offers, lacks


def _keywords(spec: Mapping[object, object], key: str) -> tuple[str, ...]:
    if key not in spec:
        return ()
    value = spec[key]
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9][-A-Za-z0-9=]*( \S+)*", v) for v in value)
    ):
        raise ValueError(
            f"{key} must be an EHLO keyword or a list of them (like PIPELINING or AUTH PLAIN), not {value!r}"
        )
    return tuple(value)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
