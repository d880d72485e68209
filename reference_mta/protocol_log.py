"""The SMTP protocol log of a virtual server in W3C extended log file format, as IIS 6 writes it for
Exchange 2003 when the virtual server's General tab says "Enable logging" with "W3C Extended Log File
Format" and every extended property is ticked.

One line per command, written when the command's final reply is sent (334 and 354 are not final):
- cs-method is the verb, cs-uri-query its arguments with every space written as `+` (so the space after
  the verb makes the leading `+`: `MAIL FROM:<a@b>` is `MAIL` and `+FROM:<a@b>`), `-` when empty;
- cs-username is the HELO/EHLO name the client gave (`-` before it);
- sc-status is the reply code, except QUIT's, which IIS writes as 240, with the session's length in
  milliseconds in sc-win32-status;
- DATA's query is the message's Message-ID, not the message; AUTH's is the mechanism alone (the
  client's SASL answers are never logged);
- a line aiosmtpd answers itself (an unknown verb, a line too long) is logged as the verb `xxxx`, as IIS
  does for commands it does not know; its text is not available to the hook.
- s-port is 0, as IIS writes it for SMTP.

The file is `<server folder>/LogFiles/SMTPSVC<instance>/exYYMMDD.log` (UTC date, a new file and header
each day), as `%SystemRoot%\\System32\\LogFiles\\SMTPSVC1\\ex061009.log` is for the first virtual server.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from pathlib import Path

from reference_mta.appending import AppendFile

FIELDS = (
    "date time c-ip cs-username s-sitename s-computername s-ip s-port cs-method cs-uri-stem cs-uri-query "
    "sc-status sc-win32-status sc-bytes cs-bytes time-taken cs-version cs-host cs(User-Agent) cs(Cookie) "
    "cs(Referer)"
)
SOFTWARE = "Microsoft Internet Information Services 6.0"
QUIT_STATUS = 240  # what IIS logs for QUIT, whatever it answered


@dataclass
class Command:
    """A command waiting for its final reply."""

    verb: str
    argument: str
    started: float
    size: int


class ProtocolLog:
    def __init__(self, folder: Path, instance: int, computer: str, server_ip: str) -> None:
        self.folder = folder / "LogFiles" / f"SMTPSVC{instance}"
        self.site = f"SMTPSVC{instance}"
        self.computer = computer.upper()
        self.server_ip = server_ip
        self._file = AppendFile()

    def path(self, when: datetime.datetime) -> Path:
        return self.folder / f"ex{when:%y%m%d}.log"

    def write(
        self,
        *,
        client_ip: str,
        helo: str | None,
        verb: str,
        query: str,
        status: int,
        win32_status: int,
        sent_bytes: int,
        received_bytes: int,
        taken_ms: int,
    ) -> None:
        now = datetime.datetime.now(datetime.UTC)
        path = self.path(now)
        stamp = f"{now:%Y-%m-%d %H:%M:%S}"
        fields = (
            *stamp.split(" "),
            client_ip,
            _field(helo or ""),
            self.site,
            self.computer,
            self.server_ip,
            "0",
            _field(verb),
            "-",
            _field(query),
            str(status),
            str(win32_status),
            str(sent_bytes),
            str(received_bytes),
            str(taken_ms),
            "SMTP",
            "-",
            "-",
            "-",
            "-",
        )
        header = f"#Software: {SOFTWARE}\n#Version: 1.0\n#Date: {stamp}\n#Fields: {FIELDS}\n"
        # IIS writes CRLF line ends; one append per line keeps the file whole if the lab stops. A client's
        # bytes that are not UTF-8 (kept as surrogates when the line was decoded) go out as they came.
        line = (" ".join(fields) + "\n").replace("\n", "\r\n").encode("utf-8", "surrogateescape")
        self._file.append(path, line, header=header.replace("\n", "\r\n").encode("utf-8"))

    def close(self) -> None:
        self._file.close()


class SessionLog:
    """One session's side of the log: what the protocol engine tells it, turned into lines."""

    def __init__(self, log: ProtocolLog, client_ip: str) -> None:
        self.log = log
        self.client_ip = client_ip
        self.began = time.monotonic()
        self.pending: Command | None = None
        self.query: str | None = None  # DATA's Message-ID, set by the virtual server's policy
        self.greeted = False
        self.sent_bytes = 0  # reply bytes since the last line was written

    def command(self, verb: str, argument: str | None, size: int) -> None:
        if verb == "AUTH":
            argument = (argument or "").split(" ")[0]  # the mechanism; never the initial response
        self.pending = Command(verb, argument or "", time.monotonic(), size)
        self.query = None

    def reply(self, text: str, helo: str | None) -> None:
        """A reply line on its way to the client: a final one ends the pending command's line."""
        code, final = text[:3], text[3:4] != "-"
        self.sent_bytes += len(text) + 2
        if not self.greeted:
            self.greeted, self.sent_bytes = True, 0  # the greeting answers the connection, not a command
            return
        if not final or not code.isdigit() or code[0] == "3":
            return
        sent_bytes, self.sent_bytes = self.sent_bytes, 0
        pending, self.pending = self.pending, None
        if pending is None:
            # A line aiosmtpd answered without a command method (unknown verb, bad syntax).
            pending = Command("xxxx", "", time.monotonic(), 0)
        now = time.monotonic()
        quit_ = pending.verb == "QUIT"
        if quit_:
            query = helo or ""
        elif pending.verb == "DATA" and self.query is not None:
            query = self.query
        else:
            query = f" {pending.argument}" if pending.argument else ""
        self.log.write(
            client_ip=self.client_ip,
            helo=helo,
            verb=pending.verb,
            query=query,
            status=QUIT_STATUS if quit_ else int(code),
            win32_status=int((now - self.began) * 1000) if quit_ else 0,
            sent_bytes=sent_bytes,
            received_bytes=pending.size,
            taken_ms=int((now - pending.started) * 1000),
        )


def _field(value: str) -> str:
    """A W3C field: spaces become `+` (the format separates fields with spaces), empty is `-`."""
    return value.replace(" ", "+") if value else "-"
