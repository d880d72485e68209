"""`--outcome`: the delivery an imported session shows, as the trace's `outcome`.

A capture shows what the production server accepted: a sender (MAIL answered 2xx), recipients (RCPT
answered 2xx) and the message (250 after the dot, or after BDAT LAST). It does not show where the lab
must put it: the lab's servers, mailboxes and Internet hosts are not the production ones. So each
accepted message goes through the oracle (`harness.generation.oracle`, the documented rules drawn from the lab
file and the directory), which names the mailbox on its home server, the Internet host (a sink, with the
server that hands it over) or the NDR, as `mailflow generate` writes them; `nothing_else_delivered`
closes the list.

When the capture also holds the server's own session to a next hop that took the same message (sender
and a recipient alike, accepted after the dot), the host that answered it says where the message went:
a host of the lab with that name (its greeting's) replaces the oracle's sink for those recipients, so
the trace expects what production did. A next hop the lab does not know is named in the description.

Nothing is added when the capture shows no accepted message, or when the oracle cannot predict one of
them (it says why): a partial list with `nothing_else_delivered` would be wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.capture.importers.to_trace import virtual_server_at
from harness.capture.recorded import RecordedSession
from harness.generation import oracle
from harness.generation.generator import delivered_entries
from harness.lab.config import LabConfig

_MAIL = re.compile(r"MAIL FROM:\s*<([^>]*)>", re.IGNORECASE)
_RCPT = re.compile(r"RCPT TO:\s*<([^>]*)>", re.IGNORECASE)
_RESET = ("RSET", "HELO", "EHLO")


@dataclass(frozen=True)
class Accepted:
    """A message the server took: its envelope as accepted, and the session it came in."""

    sender: str
    recipients: tuple[str, ...]
    authenticated: bool
    session: int  # its session's number (from 1) among the imported ones


@dataclass
class Outcome:
    outcome: dict[str, Any] | None  # None: nothing to add
    notes: list[str] = field(default_factory=list)  # for the user and the trace's description


def accepted(sessions: list[RecordedSession]) -> list[Accepted]:
    """Every message the sessions show accepted, in order."""
    found = []
    for number, session in enumerate(sessions, 1):
        sender: str | None = None
        recipients: list[str] = []
        authenticated = False
        for exchange in session.exchanges:
            code = exchange.reply[-1][:3] if exchange.reply else ""
            ok = code.startswith("2")
            sent = exchange.sent or ""
            verb = sent.split(" ", 1)[0].upper()
            if exchange.auth is not None and code == "235":
                authenticated = True
            elif verb in _RESET:
                sender, recipients = None, []
            elif (mail := _MAIL.match(sent)) is not None:
                sender, recipients = (mail[1] if ok else None), []
            elif (rcpt := _RCPT.match(sent)) is not None and ok and sender is not None:
                recipients.append(rcpt[1])
            elif exchange.message is not None and _ends_message(exchange.sent):
                if ok and sender is not None and recipients:
                    found.append(Accepted(sender, tuple(dict.fromkeys(recipients)), authenticated, number))
                sender, recipients = None, []
    return found


def _ends_message(sent: str | None) -> bool:
    """The exchange that ends a message: the DATA body (no command), or the last BDAT chunk."""
    return sent is None or sent.upper().rstrip().endswith("LAST")


def outcome(
    sessions: list[RecordedSession],
    onward: list[RecordedSession],
    *,
    lab_file: Path,
    config: LabConfig,
    server: str,
    client: str,
    virtual_server: str | None,
) -> Outcome:
    messages = accepted(sessions)
    if not messages:
        return Outcome(None, ["the capture shows no message accepted after DATA: no outcome is added"])
    world = oracle.load(lab_file)
    notes: list[str] = []
    entries: list[dict[str, Any]] = []
    handed_on = accepted(onward)
    for message in messages:
        who = f"session {message.session}: <{message.sender}> to {', '.join(message.recipients)}"
        scenario = oracle.Scenario(
            client=client,
            server=server,
            # The one the trace connects to (`to_trace`): named, or the one at the recorded address.
            virtual_server=virtual_server or virtual_server_at(config, server, sessions[message.session - 1]),
            auth="imported" if message.authenticated else None,
            sender=message.sender,
            recipients=message.recipients,
        )
        try:
            prediction = oracle.predict(world, scenario)
        except oracle.Unpredictable as exc:
            return Outcome(
                None, [f"{who}: the lab's rules do not say where it goes ({exc}): no outcome is added"]
            )
        items = delivered_entries(prediction)
        for hop in handed_on:
            if hop.sender != message.sender or not set(hop.recipients) & set(message.recipients):
                continue
            items = _observed(world, onward[hop.session - 1], hop, items, notes, who)
        entries += items
        notes.append(f"{who}: accepted; expected " + "; ".join(_describe(i) for i in items))
    result: dict[str, Any] = {}
    if entries:
        result["delivered"] = entries
    result["nothing_else_delivered"] = True
    return Outcome(result, notes)


def _observed(
    world: oracle.World,
    session: RecordedSession,
    hop: Accepted,
    items: list[dict[str, Any]],
    notes: list[str],
    who: str,
) -> list[dict[str, Any]]:
    """The oracle's entries, with the sink the capture saw the message handed to in place of the one
    predicted for those recipients, when that host is one of the lab's."""
    name = _host_name(session)
    host = world.sink_for(name) if name else None
    where = f"{name or 'an unnamed host'} ({session.server}:{session.server_port})"
    if host is None:
        notes.append(f"{who}: the capture shows it handed on to {where}, which is no host of the lab")
        return items
    handed = {r.lower() for r in hop.recipients}
    predicted = [i for i in items if "sink" in i and {r.lower() for r in _rcpts(i)} <= handed]
    if predicted and all(i["sink"].lower() == host.name.lower() for i in predicted):
        notes.append(
            f"{who}: the capture shows it handed on to {where}, the lab's {host.name}, as the lab routes it"
        )
        return items
    notes.append(
        f"{who}: the capture shows it handed on to {where}, the lab's {host.name}"
        + (f" (the lab would route it to {', '.join(i['sink'] for i in predicted)})" if predicted else "")
    )
    kept = [i for i in items if i not in predicted]
    rcpt: str | list[str] = list(hop.recipients) if len(hop.recipients) > 1 else hop.recipients[0]
    return [*kept, {"sink": host.name, "sender": hop.sender or "<>", "rcpt": rcpt}]


def _rcpts(item: dict[str, Any]) -> list[str]:
    rcpt = item.get("rcpt", [])
    return [rcpt] if isinstance(rcpt, str) else list(rcpt)


def _host_name(session: RecordedSession) -> str | None:
    """The name the next hop gave itself: the first word of its greeting, or of its EHLO reply."""
    for exchange in session.exchanges[:2]:
        if exchange.reply and exchange.reply[0][:3] in ("220", "250"):
            words = exchange.reply[0][4:].split()
            if words and "." in words[0]:
                return words[0]
    return None


def _describe(item: dict[str, Any]) -> str:
    if "mailbox" in item:
        return f"mailbox {item['mailbox']} on {item['server']}" + (" (an NDR)" if "dsn" in item else "")
    if "sink" in item:
        return f"{item['sink']} receives it for {', '.join(_rcpts(item))}"
    return f"{next(iter(item))} {next(iter(item.values()))}"
