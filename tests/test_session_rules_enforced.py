"""The virtual server enforces its session rules from the table, over real SMTP sessions.

Each rule of the table gets, for the test, a reply of its own that no code path holds; a session that
breaks the rule must then get that reply on the wire. A rule decided anywhere but in the table would
still answer with its old text and fail here. Every guard of the table is exercised: a guard added
without a session here fails the coverage check.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.lab import config as lab_config
from harness.lab.runtime import Lab
from reference_mta import session_rules
from reference_mta.session_rules import Guard, State, Verdict

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
BASE = f"127.{100 + WORKER % 10}.48.0"
_LAST_LINE = re.compile(rb"^\d{3}(?: [^\r\n]*)?\r\n", re.MULTILINE)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(lab_config.load(LAB, base=BASE, port_offset=29000)) as running:
        yield running


class Session:
    """A raw SMTP client: each reply is read up to its last line, with a deadline, never a pause."""

    def __init__(self, lab: Lab, virtual_server: str, client: str) -> None:
        organization = lab.config.organization
        (vs,) = (v for v in organization.server("EX1").virtual_servers if v.name == virtual_server)
        self.sock: socket.socket = socket.create_connection(
            (vs.address, vs.port), timeout=5, source_address=(lab.config.host(client).address, 0)
        )
        self.buffer = b""
        self.greeting = self.reply()

    def reply(self) -> str:
        """One reply, up to its last line (a code and a space); what follows stays for the next."""
        while (last := _LAST_LINE.search(self.buffer)) is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed after {self.buffer!r}")
            self.buffer += data
        text, self.buffer = self.buffer[: last.end()], self.buffer[last.end() :]
        return text.decode().rstrip("\r\n")

    def send(self, *lines: str) -> str:
        """The lines in one write; the reply to the first."""
        self.sock.sendall("".join(f"{line}\r\n" for line in lines).encode())
        return self.reply()

    def closed(self) -> bool:
        return self.sock.recv(1) == b""

    def start_tls(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock)

    def close(self) -> None:
        self.sock.close()


def _marker(reply: str | Callable[[session_rules.Facts], str], name: str) -> str:
    code = reply[:3] if isinstance(reply, str) else "221"
    return f"{code} 9.9.9 from the table: {name}"


def mark_guard(monkeypatch: pytest.MonkeyPatch, name: str) -> str:
    """The guard called `name`, wherever the table holds it, answers with a marker reply."""
    found: list[Guard] = []

    def marked(guards: tuple[Guard, ...]) -> tuple[Guard, ...]:
        result = []
        for guard in guards:
            if guard.name == name:
                found.append(guard)
                guard = dataclasses.replace(guard, reply=_marker(guard.reply, name))
            result.append(guard)
        return tuple(result)

    monkeypatch.setattr(session_rules, "SESSION_GUARDS", marked(session_rules.SESSION_GUARDS))
    for command, rule in list(session_rules.RULES.items()):
        monkeypatch.setitem(
            session_rules.RULES, command, dataclasses.replace(rule, guards=marked(rule.guards))
        )
    assert found, f"no guard called {name!r}"
    return _marker(found[0].reply, name)


def guard_names() -> set[str]:
    names = {guard.name for guard in session_rules.SESSION_GUARDS}
    return names | {guard.name for rule in session_rules.RULES.values() for guard in rule.guards}


MESSAGE = ("MAIL FROM:<ann@fabrikam.com>", "RCPT TO:<alice@contoso.com>")


def _refused_session(session: Session) -> tuple[str, bool]:
    return session.send("EHLO client.example"), False


def _refused_quit(session: Session) -> tuple[str, bool]:
    return session.send("QUIT"), True


def _sync_error(session: Session) -> tuple[str, bool]:
    session.send("EHLO client.example")
    return session.send("NOOP", "NOOP"), True


def _binarymime_with_data(session: Session) -> tuple[str, bool]:
    session.send("EHLO client.example")
    session.send(f"{MESSAGE[0]} BODY=BINARYMIME")
    session.send(MESSAGE[1])
    return session.send("DATA"), False


def _tls_inside_tls(session: Session) -> tuple[str, bool]:
    session.send("EHLO client.example")
    assert session.send("STARTTLS").startswith("220 ")
    session.start_tls()
    session.send("EHLO client.example")
    return session.send("STARTTLS"), False


def _messages_per_connection(session: Session) -> tuple[str, bool]:
    session.send("EHLO client.example")
    for _ in range(2):  # the Strict virtual server takes two messages per connection
        session.send(MESSAGE[0])
        session.send(MESSAGE[1])
        assert session.send("DATA").startswith("354 ")
        assert session.send("Subject: one of two", "", "text", ".").startswith("250 ")
    return session.send(MESSAGE[0]), True


def _xexch50_from_outside(session: Session) -> tuple[str, bool]:
    session.send("EHLO client.example")
    session.send(MESSAGE[0])
    session.send(MESSAGE[1])
    return session.send("XEXCH50 10 2"), False


# guard name: (virtual server, client host, the session that breaks the rule)
GUARD_SESSIONS: dict[str, tuple[str, str, Callable[[Session], tuple[str, bool]]]] = {
    "refused session": ("Restricted SMTP Virtual Server", "attacker", _refused_session),
    "refused session: QUIT": ("Restricted SMTP Virtual Server", "attacker", _refused_quit),
    "synchronization error": ("Default SMTP Virtual Server", "internet", _sync_error),
    "BODY=BINARYMIME needs BDAT": ("Default SMTP Virtual Server", "internet", _binarymime_with_data),
    "no TLS inside TLS": ("Default SMTP Virtual Server", "internet", _tls_inside_tls),
    "messages per connection": ("Strict SMTP Virtual Server", "internet", _messages_per_connection),
    "XEXCH50 from a server of the organization only": (
        "Default SMTP Virtual Server",
        "internet",
        _xexch50_from_outside,
    ),
}


def test_every_guard_of_the_table_is_exercised_here() -> None:
    assert set(GUARD_SESSIONS) == guard_names()


@pytest.mark.parametrize("name", sorted(GUARD_SESSIONS))
def test_the_virtual_server_answers_a_guard_with_the_tables_reply(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    marker = mark_guard(monkeypatch, name)
    virtual_server, client, breaks_the_rule = GUARD_SESSIONS[name]
    session = Session(lab, virtual_server, client)
    try:
        reply, closes = breaks_the_rule(session)
        assert reply == marker
        if closes:
            assert session.closed()
        else:
            session.send("NOOP")  # the session goes on: the server still answers
    finally:
        session.close()


def test_a_state_refusal_comes_from_the_table(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    # DATA before any recipient: the table's refusal, not a check of the DATA handler's own.
    marker = "503 9.9.9 from the table: DATA needs a recipient"
    rule = session_rules.RULES["DATA"]
    refusals = {**rule.refusals, State.MAIL: marker}
    monkeypatch.setitem(session_rules.RULES, "DATA", dataclasses.replace(rule, refusals=refusals))
    session = Session(lab, "Default SMTP Virtual Server", "internet")
    try:
        session.send("EHLO client.example")
        session.send(MESSAGE[0])
        assert session.send("DATA") == marker
    finally:
        session.close()


def test_the_error_budget_comes_from_the_table(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = "421 9.9.9 from the table: error budget"
    monkeypatch.setattr(session_rules, "ERROR_BUDGET_SPENT", Verdict(marker, closes=True))
    session = Session(lab, "Strict SMTP Virtual Server", "internet")
    try:
        session.send("EHLO client.example")
        # A recipient before the sender is the client's mistake (503). The Strict virtual server allows
        # five; the fifth reply is followed by the end of the session.
        for _ in range(5):
            assert session.send(MESSAGE[1]).startswith("503 ")
        assert session.reply() == marker
        assert session.closed()
    finally:
        session.close()
