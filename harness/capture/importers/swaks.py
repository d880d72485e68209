"""SMTP sessions from a swaks transcript: what swaks prints while it talks to a server.

swaks marks each line: ` -> ` what the client sent, `<-  ` a reply line, `<** ` a reply line it takes
for an error, ` ~> `, `<~  ` and `<~* ` the same inside TLS (swaks shows them decrypted, so a session
goes on after STARTTLS), `=== ` and `*** ` its own remarks. `=== Trying HOST:PORT...` begins a session.

The lines of each side are joined with CRLF into the byte streams `dialogue.pair` splits, each line
remembered by its line number (for errors) and its position (so a command printed before the reply to
the one before it was pipelined, as swaks prints them).
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.capture.importers import BadInput
from harness.capture.importers.dialogue import Stream, pair
from harness.capture.recorded import RecordedSession

_CLIENT = (" -> ", " ~> ")
_SERVER = ("<-  ", "<** ", "<~  ", "<~* ")
_REMARK = ("=== ", "*** ")
_TRYING = re.compile(r"=== Trying (.+):(\d+)\.\.\.$")


def read(path: Path) -> list[RecordedSession]:
    """Every session in the transcript at `path`, in order."""
    text = path.read_bytes().decode("utf-8", "replace")
    sessions: list[tuple[RecordedSession, Stream, Stream]] = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"line {number}"
        if (trying := _TRYING.match(line)) is not None:
            session = RecordedSession(client="", server=trying[1].strip("[]"), server_port=int(trying[2]))
            sessions.append((session, Stream(), Stream()))
            continue
        if not line.strip() or line.startswith(_REMARK):
            continue
        # An editor may have dropped the trailing space of an empty line (" ->" for " -> ").
        prefix, content = line[:4] if len(line) >= 4 else line + " ", line[4:]
        if not sessions:
            raise BadInput(path, where, f"{line[:60]!r} before swaks's '=== Trying host:port...' line")
        _, client, server = sessions[-1]
        if prefix in _CLIENT:
            client.add(content.encode("utf-8") + b"\r\n", number, where)
        elif prefix in _SERVER:
            server.add(content.encode("utf-8") + b"\r\n", number, where)
        else:
            raise BadInput(
                path, where, f"{line[:60]!r} is not a line swaks prints (' -> ', '<-  ', '=== ' ...)"
            )
    for session, client, server in sessions:
        pair(session, client, server, path, tls_visible=True)
    return [session for session, _, _ in sessions]
