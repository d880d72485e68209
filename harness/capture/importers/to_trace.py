"""Recorded sessions as a trace document (for `harness.corpus.writer.write`): one trace session per recorded
one, from a lab host (`client`) to a lab server (`server`, and the virtual server the recorded one
reached when its address says which), every command a step and every reply an `expect`.

How each kind of exchange becomes steps:
- the greeting, and anything the server said unasked: an `expect`;
- a command: `send`; commands the client pipelined (sent before the previous reply arrived) go out
  together in one `pipeline` step before their replies are read, as they did on the wire;
- DATA answered 354 and the message after it: a `data` step (the message inline, or byte for byte with
  `raw: true` when re-stuffing it would not give the bytes sent) and the reply to its end;
- BDAT: a `bdat` step with the chunk byte for byte;
- AUTH: an `auth` step whose credentials come from the environment when the trace is replayed
  (`harness.capture.recorded.AUTH_FROM_ENVIRONMENT`): they were scrubbed when the session was imported;
- STARTTLS answered 220: a `starttls` step (STARTTLS, the 220, the TLS handshake).
Messages and chunks that are not UTF-8 cannot be inline YAML text: they become files next to the trace
(`files` of the result), which the caller writes with it.

The outcome is what the caller found (`harness.capture.importers.outcome`), or none: a recorded session shows
what was said, not where the message went in the lab.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.capture.importers.replace import Replacement
from harness.capture.recorded import AUTH_FROM_ENVIRONMENT, Exchange, RecordedSession, expectation
from harness.corpus import writer
from harness.corpus.script import AUTH_MECHANISMS, dot_stuff
from harness.corpus.trace import CAPTURED_WORDING, Trace
from harness.lab.config import LabConfig
from harness.smtp import syntax
from harness.smtp.masking import Mask, Normalizer
from harness.smtp.reply import Reply, reply_code

# As `mailflow record`: a captured inbound session shows at least the server's answer to RCPT.
DEFAULT_SPEC = ("IN-3",)
SENDING = ("send", "pipeline", "data", "bdat", "auth", "starttls", "send_raw")


@dataclass
class Converted:
    document: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)  # file name (next to the trace) → bytes

    def write(self, path: Path) -> Trace:
        """The trace at `path` and its message files beside it; if it does not load, nothing it wrote is
        left and the files it would have replaced are put back."""
        path.parent.mkdir(parents=True, exist_ok=True)
        replacement = Replacement()
        try:
            for name, data in self.files.items():
                replacement.place(path.parent / name).write_bytes(data)
            trace = writer.write(self.document, replacement.place(path))
        except BaseException:
            replacement.undo()
            raise
        replacement.done()
        return trace


def reply_expectation(
    lines: Sequence[str], texts: bool, normalizer: Normalizer, greeting: bool = False
) -> int | dict[str, Any]:
    """What the trace expects of one recorded reply: its code, and, when the text was recorded, the
    text masked by the trace's normalizer (harness/capture/recorded.py `expectation`; the replay masks what it
    reads with a normalizer of its own, in the same order)."""
    if not texts:
        return reply_code(lines[-1])
    return expectation(lines, normalizer.reply(lines, greeting))


def codes_expectation(lines: Sequence[str]) -> int | dict[str, Any]:
    """A reply's code and its RFC 3463 enhanced status code, without the text: what any MTA must say
    alike, so that a session captured on one replays against another. An enhanced code X.0.0 ("other or
    undefined status") is left out: it says nothing another server must repeat (Postfix acknowledges a
    message with 2.0.0, Exchange with the more precise 2.6.0)."""
    reply = Reply.of(lines)
    enhanced = reply.enhanced
    if enhanced is None or enhanced.endswith(".0.0"):
        return reply.code
    return {"code": reply.code, "enhanced": enhanced}


def to_trace(
    sessions: Sequence[RecordedSession],
    *,
    trace_id: str,
    title: str,
    source: str,
    lab: str,
    config: LabConfig,
    server: str,
    client: str = "internet",
    virtual_server: str | None = None,
    spec: Sequence[str] = DEFAULT_SPEC,
    file_stem: str = "message",
    masks: Sequence[Mask] = (),
    codes_only: bool = False,
    outcome: dict[str, Any] | None = None,
    outcome_notes: Sequence[str] = (),
    wording: str = CAPTURED_WORDING,
) -> Converted:
    """The trace of `sessions` (in order) against `server` of lab `config` (named `lab` in the trace).

    `virtual_server` names the one every session connects to; without it, a session whose recorded
    server address is one of the server's virtual servers in `config` connects to that one, any other
    to the server's default virtual server. `source` (the imported file) goes in the description.
    `codes_only` expects the reply codes and enhanced status codes alone (`codes_expectation`), the
    behaviour layer; otherwise the texts are expected too, as the words of `wording` (whose words they
    are: a target judges them only when its profile has that name);
    `outcome` is the trace's outcome, if one is known (`harness.capture.importers.outcome`), and
    `outcome_notes` how it was found."""
    converted = Converted({})
    # One for the whole trace, as the replay has: a value recurring across sessions keeps its placeholder.
    normalizer = Normalizer(masks)
    notes: list[str] = []
    trace_sessions = []
    for number, session in enumerate(sessions, 1):
        connect = {"server": server}
        chosen = virtual_server or virtual_server_at(config, server, session)
        if chosen is not None:
            connect["virtual_server"] = chosen
        script = _Script(session, converted, f"{file_stem}-{number}", normalizer, codes_only).build()
        if not script:
            notes.append(f"session {number} ({session.client}): nothing to replay")
            continue
        trace_sessions.append({"client": client, "connect": connect, "script": script})
        prefix = f"session {number} ({session.client} to {session.server}:{session.server_port})"
        notes += [f"{prefix}: {note}" for note in session.notes]
    where = f"Imported from {source}: {len(trace_sessions)} session(s)."
    description = "\n".join([where, *notes, *outcome_notes])
    converted.document = {
        "id": trace_id,
        "title": title,
        "description": description,
        "spec": list(spec),
        "lab": lab,
        **({} if codes_only else {"wording": wording}),
        "sessions": trace_sessions,
    }
    # The schema has no empty outcome: without the key, nothing is checked after the sessions.
    if outcome:
        converted.document["outcome"] = outcome
    if masks:
        converted.document["masks"] = [{"name": m.name, "regex": m.pattern.pattern} for m in masks]
    return converted


def virtual_server_at(config: LabConfig, server: str, session: RecordedSession) -> str | None:
    """The virtual server of `server` at the session's recorded address, if it is not the default one."""
    me = config.organization.server(server)
    for vs in me.virtual_servers:
        if vs.address == session.server and vs is not me.default_virtual_server:
            return vs.name
    return None


class _Script:
    """One recorded session's exchanges as a trace's script steps."""

    def __init__(
        self,
        session: RecordedSession,
        converted: Converted,
        stem: str,
        normalizer: Normalizer,
        codes_only: bool,
    ) -> None:
        self.session = session
        self.converted = converted
        self.stem = stem
        self.normalizer = normalizer
        self.codes_only = codes_only
        self.steps: list[dict[str, Any]] = []
        self.exchanges = session.exchanges
        self.index = 0  # of the next exchange to write
        self.files = 0

    def build(self) -> list[dict[str, Any]]:
        while self.index < len(self.exchanges):
            group = self._group()
            if len(group) > 1:
                self._pipeline(group)
            else:
                self.index += 1
                self._single(group[0])
        return self.steps

    def attach(self, data: bytes) -> str:
        self.files += 1
        name = f"{self.stem}-{self.files}.eml"
        self.converted.files[name] = data
        return name

    def expect(self, exchange: Exchange) -> None:
        if not exchange.reply:
            return
        if self.codes_only:
            self.steps.append({"expect": codes_expectation(exchange.reply)})
            return
        # A reply read before the client has sent anything is the greeting (so the replay sees it).
        greeting = not any(key in step for step in self.steps for key in SENDING)
        expected = reply_expectation(exchange.reply, self.session.reply_texts, self.normalizer, greeting)
        self.steps.append({"expect": expected})

    def _group(self) -> list[Exchange]:
        """The next exchange and the ones pipelined after it, whose sends go before their replies."""
        first = self.exchanges[self.index]
        group = [first]
        while (
            self.index + len(group) < len(self.exchanges)
            and (following := self.exchanges[self.index + len(group)]).pipelined
            and _pipelinable(following)
            and (_pipelinable(first) or first.sent is None)
        ):
            group.append(following)
        return group

    def _pipeline(self, group: list[Exchange]) -> None:
        self.steps += _pause(group[0])
        lines: list[str] = []
        for member in group:
            if member.message is not None and member.sent is not None:
                if lines:
                    self.steps.append(_send(lines))
                    lines = []
                self.steps.append(_bdat(member, self.attach))
            elif member.sent is not None:
                lines.append(member.sent)
        if lines:
            self.steps.append(_send(lines))
        # A group may start with the greeting: a client that talked before it was read.
        for member in group:
            self.expect(member)
        self.index += len(group)

    def _single(self, exchange: Exchange) -> None:
        sent = exchange.sent
        if sent is None:
            self.expect(exchange)
            return
        self.steps += _pause(exchange)
        if exchange.auth is not None:
            self._auth(exchange)
        elif exchange.tls:
            self.steps.append({"starttls": True})
        elif (body := self._message_after(exchange)) is not None:
            assert body.message is not None
            self.index += 1
            self.steps.append({"data": _data(body.message, self.attach)})
            self.expect(body)
        elif exchange.message is not None and syntax.bdat(sent) is not None:
            self.steps.append(_bdat(exchange, self.attach))
            self.expect(exchange)
        else:
            self.steps.append({"send": sent})
            self.expect(exchange)

    def _auth(self, exchange: Exchange) -> None:
        assert exchange.auth is not None
        mechanism = exchange.auth if exchange.auth in AUTH_MECHANISMS else "LOGIN"
        if mechanism != exchange.auth:
            self.session.notes.append(
                f"AUTH {exchange.auth} is replayed as AUTH LOGIN (the only kinds a trace has)"
            )
        # The recorder keeps each challenge as an exchange of its own; the auth step answers them.
        while exchange.code == 334 and self.index < len(self.exchanges):
            if self.exchanges[self.index].auth is None:
                break
            exchange = self.exchanges[self.index]
            self.index += 1
        self.steps.append({"auth": {"mechanism": mechanism, **AUTH_FROM_ENVIRONMENT}})
        self.expect(exchange)

    def _message_after(self, exchange: Exchange) -> Exchange | None:
        """The message a DATA command's 354 let in: the exchange after it, with no command."""
        if (
            (exchange.sent or "").upper() != "DATA"
            or exchange.code != 354
            or self.index >= len(self.exchanges)
        ):
            return None
        body = self.exchanges[self.index]
        return body if body.sent is None and body.message is not None else None


# A client that paused this long before a command is replayed with the pause (idle time-outs and slow
# clients are what such traces are about); shorter gaps are the network's, not the client's.
SLOW_CLIENT = 1.0
MAX_WAIT = 120.0  # the longest `wait` a trace may hold


def _pause(exchange: Exchange) -> list[dict[str, Any]]:
    if exchange.pause < SLOW_CLIENT:
        return []
    return [{"wait": round(min(exchange.pause, MAX_WAIT), 1)}]


def _pipelinable(exchange: Exchange) -> bool:
    """Commands that may go out in one write: not the ones that wait for a reply in the middle."""
    if exchange.sent is None or exchange.auth is not None or exchange.tls:
        return False
    return exchange.sent.upper() != "DATA" and (
        exchange.message is None or syntax.bdat(exchange.sent) is not None
    )


def _send(lines: list[str]) -> dict[str, Any]:
    return {"send": lines[0]} if len(lines) == 1 else {"pipeline": list(lines)}


def _bdat(exchange: Exchange, attach: Any) -> dict[str, Any]:
    assert exchange.sent is not None and exchange.message is not None
    command = syntax.bdat(exchange.sent)
    last = command is not None and command[1]
    chunk = exchange.message
    text = _text(chunk)
    payload: dict[str, Any] = {"inline": text} if text is not None else {"file": attach(chunk)}
    return {"bdat": {**payload, "raw": True, "last": last}}


def _data(message: bytes, attach: Any) -> dict[str, Any]:
    """A DATA message as sent (dot-stuffed, without the dot line): inline and readable when the data
    step's own stuffing gives the same bytes back, else byte for byte."""
    unstuffed = b"".join(
        line[1:] if line.startswith(b".") else line for line in message.splitlines(keepends=True)
    )
    text = _text(unstuffed)
    if text is not None and dot_stuff(unstuffed) == message + b".\r\n":
        return {"inline": text.replace("\r\n", "\n")}
    wire = message + b".\r\n"
    raw = _text(wire)
    return {"inline": raw, "raw": True} if raw is not None else {"file": attach(wire), "raw": True}


def _text(data: bytes) -> str | None:
    """`data` as YAML-safe text, or None (not UTF-8, or holding what YAML cannot carry)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # YAML escapes most control characters in quoted scalars, but not every one round-trips.
    if any(ord(c) < 0x20 and c not in "\r\n\t" for c in text) or "\x7f" in text or "\ufeff" in text:
        return None
    return text
