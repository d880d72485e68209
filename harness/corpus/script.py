"""Client scripts: turning a trace session's ``script`` list into typed steps, and the byte-level helpers
(escape decoding, dot-stuffing) the replay client needs to put those steps on the wire exactly.

The trace loader has already checked the YAML against the JSON Schema, but this module re-checks
everything it relies on: scripts are also built by hand in tests, and a schema cannot express rules
such as "no CR or LF inside a send line".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from harness.smtp.reply import ReplyMatcher


class ScriptError(ValueError):
    """A bad step; `index` is its position in the script and `key` the step's key when known."""

    def __init__(self, index: int, message: str, key: str | None = None) -> None:
        super().__init__(f"step {index}: {message}")
        self.index = index
        self.message = message
        self.key = key


@dataclass(frozen=True)
class Send:
    """A command line; CRLF is appended on the wire."""

    line: str


@dataclass(frozen=True)
class SendRaw:
    """Bytes sent exactly as given."""

    data: bytes


@dataclass(frozen=True)
class Pipeline:
    """Command lines written together in one write (RFC 2920); replies are read by later expects."""

    lines: tuple[str, ...]


@dataclass(frozen=True)
class Data:
    """``DATA``, a 354 check, then the message from a file (`source`) or from the trace (`inline`)."""

    source: str | None
    inline: str | None
    raw: bool = False


@dataclass(frozen=True)
class Bdat:
    """``BDAT <size> [LAST]`` and the chunk in one write (RFC 3030); replies are read by later expects.

    The chunk is a file (`source`) or text from the trace (`inline`) with CRLF line ends unless `raw`,
    never dot-stuffed. `size` is the size announced instead of the chunk's real one, for traces that
    lie about it.
    """

    source: str | None
    inline: str | None
    raw: bool = False
    last: bool = False
    size: int | None = None


@dataclass(frozen=True)
class Auth:
    """SMTP AUTH (RFC 4954): LOGIN answers the server's 334 challenges, PLAIN sends an initial
    response; the final reply is read by the next expect."""

    mechanism: str
    user: str
    password: str


@dataclass(frozen=True)
class StartTls:
    """STARTTLS (RFC 3207): the server must answer 220, then the session continues encrypted."""


@dataclass(frozen=True)
class TlsHandshake:
    """The client's TLS handshake without sending STARTTLS: the trace has sent STARTTLS itself (with
    whatever it injects after it) and read the 220, so the upgrade happens exactly where it says."""


@dataclass(frozen=True)
class Expect:
    """Read one reply and match it."""

    matcher: ReplyMatcher


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class ExpectClose:
    """The server must close the connection without sending anything more."""


@dataclass(frozen=True)
class Close:
    """The client closes the connection (without QUIT)."""


Step: TypeAlias = (
    Send
    | SendRaw
    | Pipeline
    | Data
    | Bdat
    | Auth
    | StartTls
    | TlsHandshake
    | Expect
    | Wait
    | ExpectClose
    | Close
)

STEP_KEYS = (
    "send",
    "send_raw",
    "pipeline",
    "data",
    "bdat",
    "auth",
    "starttls",
    "tls_handshake",
    "expect",
    "wait",
    "expect_close",
    "close",
)
AUTH_MECHANISMS = ("LOGIN", "PLAIN")


def parse_script(raw: Sequence[Mapping[str, object]]) -> list[Step]:
    """Parse a whole script; nothing may follow a step that ends the connection."""
    steps: list[Step] = []
    for index, item in enumerate(raw):
        if steps and isinstance(steps[-1], ExpectClose | Close):
            raise ScriptError(index, "no step can follow expect_close or close: the connection is gone")
        steps.append(parse_step(item, index=index))
    return steps


def parse_step(raw: Mapping[str, object], *, index: int = 0) -> Step:
    """Parse one step (a mapping with exactly one key); `index` only labels errors."""
    if not isinstance(raw, Mapping):
        raise ScriptError(index, f"a step must be a mapping with one key, not {type(raw).__name__}")
    keys = list(raw)
    if len(keys) != 1:
        found = ", ".join(map(str, keys)) or "none"
        raise ScriptError(index, f"a step must have exactly one of {', '.join(STEP_KEYS)}; found {found}")
    key = keys[0]
    value = raw[key]
    try:
        return _parse_value(key, value)
    except ScriptError:
        raise
    except ValueError as exc:
        raise ScriptError(index, f"{key}: {exc}", key) from None


def _parse_value(key: str, value: object) -> Step:
    if key == "send":
        return Send(_command_line(value))
    if key == "send_raw":
        return _parse_send_raw(value)
    if key == "pipeline":
        return _parse_pipeline(value)
    if key == "data":
        return _parse_data(value)
    if key == "bdat":
        return _parse_bdat(value)
    if key == "expect":
        return Expect(ReplyMatcher.parse(value))
    if key == "auth":
        return _parse_auth(value)
    if key == "wait":
        return _parse_wait(value)
    if key in ("expect_close", "close", "starttls", "tls_handshake"):
        return _parse_flag(key, value)
    raise ValueError(f"unknown step; expected one of {', '.join(STEP_KEYS)}")


def _parse_send_raw(value: object) -> SendRaw:
    # !!binary in YAML yields bytes; those are already exact.
    if isinstance(value, bytes):
        return SendRaw(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, not {value!r}")
    return SendRaw(unescape(value))


def _parse_pipeline(value: object) -> Pipeline:
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of command lines, not {value!r}")
    return Pipeline(tuple(_command_line(item) for item in value))


def _parse_wait(value: object) -> Wait:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"must be a number of seconds >= 0, not {value!r}")
    return Wait(float(value))


def _parse_flag(key: str, value: object) -> Step:
    """A step that takes no argument: its value is `true`."""
    if value is not True:
        raise ValueError(f"must be true, not {value!r}")
    if key == "starttls":
        return StartTls()
    if key == "tls_handshake":
        return TlsHandshake()
    return ExpectClose() if key == "expect_close" else Close()


def _parse_auth(value: object) -> Auth:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping with mechanism, user and password, not {value!r}")
    unknown = sorted(str(key) for key in value if key not in ("mechanism", "user", "password"))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; allowed: mechanism, user, password")
    mechanism = str(value.get("mechanism", "LOGIN")).upper()
    if mechanism not in AUTH_MECHANISMS:
        raise ValueError(f"mechanism must be one of {', '.join(AUTH_MECHANISMS)}, not {mechanism!r}")
    user, password = value.get("user"), value.get("password")
    if not isinstance(user, str) or not isinstance(password, str):
        raise ValueError("user and password must be strings")
    return Auth(mechanism, user, password)


def _command_line(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"command line must be a string, not {value!r}")
    # A CR or LF here would silently split one command into two; send_raw exists for that.
    if "\r" in value or "\n" in value:
        raise ValueError(f"command line {value!r} contains CR or LF; use send_raw for exact bytes")
    return value


def _parse_data(value: object) -> Data:
    if isinstance(value, str):
        if not value:
            raise ValueError("message path must not be empty")
        return Data(source=value, inline=None, raw=False)
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a message path or a mapping with file or inline, not {value!r}")
    source, inline, raw = _message_fields(value, ("file", "inline", "raw"))
    return Data(source=source, inline=inline, raw=raw)


def _parse_bdat(value: object) -> Bdat:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping with file or inline (and last, size, raw), not {value!r}")
    source, inline, raw = _message_fields(value, ("file", "inline", "raw", "last", "size"))
    last = value.get("last", False)
    if not isinstance(last, bool):
        raise ValueError(f"last must be true or false, not {last!r}")
    size = value.get("size")
    if "size" in value and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValueError(f"size must be an integer >= 0, not {size!r}")
    return Bdat(source=source, inline=inline, raw=raw, last=last, size=size)


def _message_fields(
    value: Mapping[str, object], allowed: Sequence[str]
) -> tuple[str | None, str | None, bool]:
    """`file` or `inline`, and `raw`, of a step that sends a message (data) or part of one (bdat)."""
    unknown = sorted(str(key) for key in value if key not in allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    if ("file" in value) == ("inline" in value):
        raise ValueError("needs exactly one of file or inline")
    raw = value.get("raw", False)
    if not isinstance(raw, bool):
        raise ValueError(f"raw must be true or false, not {raw!r}")
    if "file" in value:
        source = value["file"]
        if not isinstance(source, str) or not source:
            raise ValueError(f"file must be a non-empty path, not {source!r}")
        return source, None, raw
    inline = value["inline"]
    if not isinstance(inline, str):
        raise ValueError(f"inline must be a string, not {inline!r}")
    return None, inline, raw


_SIMPLE_ESCAPES = {"r": b"\r", "n": b"\n", "t": b"\t", "\\": b"\\", "0": b"\0"}
_HEX = frozenset("0123456789abcdefABCDEF")


def unescape(text: str) -> bytes:
    r"""Decode send_raw's escapes (``\r \n \t \\ \0 \xHH``); other characters become their UTF-8 bytes.

    Unknown escapes are errors rather than passed through, so a typo cannot silently change the bytes.
    """
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out += char.encode("utf-8")
            i += 1
            continue
        if i + 1 >= len(text):
            raise ValueError(f"lone backslash at the end of {text!r}")
        esc = text[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[esc]
            i += 2
        elif esc == "x":
            digits = text[i + 2 : i + 4]
            if len(digits) != 2 or not set(digits) <= _HEX:
                raise ValueError(f"\\x must be followed by two hex digits at position {i} of {text!r}")
            out.append(int(digits, 16))
            i += 4
        else:
            raise ValueError(
                f"unknown escape \\{esc} at position {i} of {text!r} (known: \\r \\n \\t \\\\ \\0 \\xHH)"
            )
    return bytes(out)


_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def crlf_line_ends(message: bytes) -> bytes:
    """Every line end (CRLF, bare LF or bare CR) as CRLF: how a message that is not `raw` goes on the wire."""
    return _LINE_END.sub(b"\r\n", message)


def dot_stuff(message: bytes) -> bytes:
    """Message bytes as the DATA payload: CRLF line endings, leading dots doubled, ``.`` terminator.

    An empty message becomes just the terminator rather than an empty line plus terminator.
    """
    stuffed = _LEADING_DOT.sub(b"..", crlf_line_ends(message))
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"
