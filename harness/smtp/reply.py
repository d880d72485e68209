"""SMTP replies: reading them off the wire exactly, and matching them against a trace's expectations.

A conformance harness must not paper over a server's mistakes, so the reader is strict about the
reply grammar (RFC 5321 section 4.2) and reports precisely what arrived when something goes wrong:
every exception carries the bytes consumed so far, so a report can show them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

MAX_LINE = 4096
"""Longest reply line we accept, terminator excluded. RFC 5321 allows 512; we are more lenient so that a
long but otherwise sane line is matched rather than rejected, while a runaway server cannot make us
buffer without bound."""

_LINE_RE = re.compile(r"^\d{3}([ -]|$)")
_ENHANCED_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}\b")
_CLASS_RE = re.compile(r"^[1-5]xx$", re.IGNORECASE)


@dataclass(frozen=True)
class Reply:
    """One complete (possibly multi-line) SMTP reply."""

    code: int
    lines: tuple[str, ...]
    """Raw lines without their line terminators, e.g. ``("250-mx.example", "250 SIZE 1000")``."""
    raw: bytes = field(default=b"", compare=False, repr=False)
    """The exact bytes the reply was read from, terminators included (empty when built by hand)."""

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
    """A reply line that does not follow the RFC 5321 reply grammar."""


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


def _strip_terminator(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


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
    received = bytearray()
    line = bytearray()
    lines: list[str] = []
    code: int | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                # Byte at a time so that nothing beyond this reply is consumed (a pipelined next
                # reply must stay in the reader) and so that on timeout we know the partial line.
                # StreamReader.read does not suspend while its buffer has data, so this is cheap.
                byte = await reader.read(1)
                if not byte:
                    what = "in the middle of a reply" if received else "before a reply"
                    raise ConnectionClosed(f"connection closed by the server {what}", bytes(received))
                received += byte
                line += byte
                if byte != b"\n":
                    if len(line) > MAX_LINE + 1:  # one byte of slack for the CR of a CRLF
                        raise MalformedReply(
                            f"reply line longer than {MAX_LINE} bytes: {show_bytes(bytes(line[:80]))}...",
                            bytes(received),
                        )
                    continue
                raw_line = bytes(line)
                line.clear()
                content = _strip_terminator(raw_line)
                if len(content) > MAX_LINE:
                    raise MalformedReply(
                        f"reply line longer than {MAX_LINE} bytes: {show_bytes(content[:80])}...",
                        bytes(received),
                    )
                if on_line is not None:
                    on_line(raw_line)
                text = content.decode("utf-8", errors="backslashreplace")
                if not _LINE_RE.match(text):
                    raise MalformedReply(f"malformed reply line: {quote_bytes(content)}", bytes(received))
                line_code = int(text[:3])
                if code is None:
                    code = line_code
                elif line_code != code:
                    raise MalformedReply(
                        f"reply code changed from {code} to {line_code} within one reply: "
                        f"{quote_bytes(content)}",
                        bytes(received),
                    )
                lines.append(text)
                if text[3:4] != "-":
                    return Reply(code, tuple(lines), bytes(received))
    except TimeoutError:
        raise ReplyTimeout(f"no complete reply within {timeout:g} s", bytes(received)) from None


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

    _KEYS = frozenset({"code", "class", "enhanced", "text", "prefix", "regex", "contains", "lines", "masked"})

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
        return problems

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


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
