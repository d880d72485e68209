"""SMTP command syntax the harness reads the same way everywhere: a command's verb, where a BDAT chunk's
size is, and which AUTH mechanism a command names. One place, so that a session reads alike whichever
part of the harness recorded, replayed or judged it."""

from __future__ import annotations

import re

# RFC 3030: "BDAT" SP chunk-size [SP "LAST"]; spaces and tabs are taken as a lenient server takes them.
_BDAT = re.compile(r"BDAT[ \t]+(\d{1,18})(?:[ \t]+(LAST))?[ \t]*", re.IGNORECASE)
# RFC 4422 3.1: a mechanism name is 1 to 20 of upper-case letters, digits, hyphen and underscore.
_AUTH = re.compile(r"AUTH[ \t]+([A-Z0-9_-]{1,20})(?:[ \t].*)?", re.IGNORECASE | re.DOTALL)


def verb(command: str) -> str:
    """The verb of a command line, upper-cased: `MAIL FROM:<a@b>` and `mail:` are MAIL."""
    return command.split(" ", 1)[0].split(":", 1)[0].upper()


def bdat(command: str) -> tuple[int, bool] | None:
    """(chunk size, LAST?) of a BDAT command line (without its CRLF), or None if it is not one."""
    match = _BDAT.fullmatch(command)
    return None if match is None else (int(match[1]), match[2] is not None)


def auth_mechanism(command: str) -> str:
    """The mechanism an AUTH command line names, upper-cased; "UNKNOWN" when what stands there is no
    mechanism name (it may be a secret, and is never kept)."""
    match = _AUTH.fullmatch(command)
    return match[1].upper() if match else "UNKNOWN"
