"""XEXCH50 over real SMTP sessions in a running lab: offered to, and taken from, the organization's own
servers only; the categorizer's state it carries keeps the next server from applying a forwarding again;
a blob that is not categorizer state, or a command that is not XEXCH50's, is refused with a reply that
says so, and the message is then categorized in full.

Judy (home server EX1) forwards to Carol (EX3) and keeps a copy. A client bound to EX3's address stands
for EX3 sending Judy's copy home after its categorizer applied her forwarding.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.judge.evidence import Evidence
from harness.lab import config as lab_config
from harness.lab import placement
from harness.lab.runtime import Lab
from reference_mta import replies
from reference_mta.tracking import read_events

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"
_LAST_LINE = re.compile(rb"^\d{3}(?: [^\r\n]*)?\r\n", re.MULTILINE)
MESSAGE = "From: ann@fabrikam.com\r\nSubject: for Judy\r\nMessage-ID: <judy-1@fabrikam.com>\r\n\r\nHello.\r\n"


@pytest.fixture
def lab() -> Iterator[Lab]:
    base, offset = placement.relocation()
    with Lab(lab_config.load(LAB, base=base, port_offset=offset)) as running:
        yield running


class Session:
    """A raw SMTP client bound to `source`: each reply read up to its last line, with a deadline."""

    def __init__(self, lab: Lab, server: str, source: str) -> None:
        vs = lab.config.organization.server(server).default_virtual_server
        self.sock = socket.create_connection((vs.address, vs.port), timeout=10, source_address=(source, 0))
        self.buffer = b""
        self.greeting = self.reply()

    def reply(self) -> str:
        while (last := _LAST_LINE.search(self.buffer)) is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed after {self.buffer!r}")
            self.buffer += data
        text, self.buffer = self.buffer[: last.end()], self.buffer[last.end() :]
        return text.decode().rstrip("\r\n")

    def send(self, line: str) -> str:
        self.sock.sendall(f"{line}\r\n".encode())
        return self.reply()

    def send_bytes(self, data: bytes) -> str:
        self.sock.sendall(data)
        return self.reply()

    def closed(self) -> bool:
        return self.sock.recv(1) == b""

    def transaction(self, *, blob: bytes | None = None, regardless: bool = False) -> list[str]:
        """EHLO, MAIL, RCPT judy, the blob in XEXCH50 if given (after a 354, or `regardless` of the
        reply), DATA: every reply after EHLO."""
        self.send("EHLO ex3.contoso.com")
        answers = [self.send("MAIL FROM:<ann@fabrikam.com>"), self.send("RCPT TO:<judy@contoso.com>")]
        if blob is not None:
            answers.append(self.send(f"XEXCH50 {len(blob)} 2"))
            if answers[-1].startswith("354 ") or regardless:
                answers.append(self.send_bytes(blob + (b"\r\n" if regardless else b"")))
        answers.append(self.send("DATA"))
        answers.append(self.send_bytes(MESSAGE.encode() + b".\r\n"))
        answers.append(self.send("QUIT"))
        self.sock.close()
        return answers


def judy_done(categorized: bool = True) -> bytes:
    entry = {
        "ADDRESS_SMTP": "judy@contoso.com",
        "DSN_PRE_CAT_ADDRESS": "judy@contoso.com",
        "RECIPIENT_FLAGS": 0,
        "CATEGORIZED": categorized,
    }
    return json.dumps({"VERSION": 2, "RECIPIENTS": [entry], "ANONYMOUS_ORIGIN": False}).encode()


def address(lab: Lab, host: str) -> str:
    servers = {s.name: s.address for s in lab.config.organization.servers}
    return servers.get(host) or lab.config.host(host).address


def deliveries(lab: Lab) -> list[str]:
    assert lab.settle()
    return sorted(d.describe() for d in Evidence.collect(lab).deliveries)


def redirections_on(lab: Lab, server: str) -> int:
    return sum(1 for e in read_events(lab.tracking_dir, server) if e["event-id"] == 1042)


def ehlo_keywords(lab: Lab, source: str) -> list[str]:
    session = Session(lab, "EX1", source)
    reply = session.send("EHLO client.example")
    session.sock.close()
    return [line[4:] for line in reply.splitlines()]


def test_offered_to_a_server_of_the_organization_only(lab: Lab) -> None:
    assert "XEXCH50" in ehlo_keywords(lab, address(lab, "EX3"))
    assert "XEXCH50" not in ehlo_keywords(lab, address(lab, "internet"))
    assert "XEXCH50" not in ehlo_keywords(lab, address(lab, "lan"))


def test_a_recipient_marked_done_is_not_forwarded_again(lab: Lab) -> None:
    answers = Session(lab, "EX1", address(lab, "EX3")).transaction(blob=judy_done())
    assert answers[2:4] == [replies.XEXCH50_SEND_DATA, replies.XEXCH50_OK]
    assert answers[-2].startswith("250 2.6.0 ")
    assert deliveries(lab) == ["mailbox judy@contoso.com on EX1 (from ann@fabrikam.com)"]
    assert redirections_on(lab, "EX1") == 0


def test_without_the_state_the_forwarding_is_applied(lab: Lab) -> None:
    # The boundary: the same server, no XEXCH50 (or a recipient not marked done): EX1 forwards.
    Session(lab, "EX1", address(lab, "EX3")).transaction(blob=judy_done(categorized=False))
    assert deliveries(lab) == [
        "mailbox carol@contoso.com on EX3 (from ann@fabrikam.com)",
        "mailbox judy@contoso.com on EX1 (from ann@fabrikam.com)",
    ]
    assert redirections_on(lab, "EX1") == 1


def test_refused_to_a_client_outside_the_organization(lab: Lab) -> None:
    session = Session(lab, "EX1", address(lab, "internet"))
    answers = session.transaction(blob=judy_done(), regardless=True)
    # 504, and the blob that follows anyway is read as a command line: refused, nothing taken from it.
    assert answers[2:4] == [replies.XEXCH50_NOT_AUTHORIZED, replies.UNRECOGNIZED]
    assert "mailbox carol@contoso.com on EX3 (from ann@fabrikam.com)" in deliveries(lab)


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"\xff\xfenot UTF-8", "not MAILMSG properties (UnicodeDecodeError)"),
        (b"\x00\x01not json", "not MAILMSG properties (JSONDecodeError)"),
        # Hostile shapes the JSON reader refuses with an error of its own, not a parse error.
        (b"[" * 100_000, "not MAILMSG properties (RecursionError)"),
        (b'{"VERSION": ' + b"9" * 5000 + b"}", "not MAILMSG properties (ValueError)"),
        (b'{"VERSION": 1, "RECIPIENTS": []}', "not version 2 MAILMSG properties"),
        (b'{"VERSION": 2}', "no RECIPIENTS list"),
        (b'{"VERSION": 2, "RECIPIENTS": []}', "no ANONYMOUS_ORIGIN flag"),
        (
            b'{"VERSION": 2, "ANONYMOUS_ORIGIN": false,'
            b' "RECIPIENTS": [{"ADDRESS_SMTP": "judy@contoso.com"}]}',
            "recipient 1 lacks",
        ),
    ],
)
def test_an_unreadable_blob_is_refused_and_the_message_categorized_in_full(
    lab: Lab, blob: bytes, reason: str
) -> None:
    answers = Session(lab, "EX1", address(lab, "EX3")).transaction(blob=blob)
    assert answers[2] == replies.XEXCH50_SEND_DATA
    assert answers[3].startswith(f"501 5.5.4 XEXCH50 data unreadable: {reason}")
    assert answers[-2].startswith("250 2.6.0 ")
    assert "mailbox carol@contoso.com on EX3 (from ann@fabrikam.com)" in deliveries(lab)


def test_command_syntax_sequence_and_size(lab: Lab) -> None:
    session = Session(lab, "EX1", address(lab, "EX3"))
    session.send("EHLO ex3.contoso.com")
    assert session.send("XEXCH50 10 2") == replies.NEED_MAIL
    session.send("MAIL FROM:<ann@fabrikam.com>")
    assert session.send("XEXCH50 10 2") == replies.NEED_RCPT
    session.send("RCPT TO:<judy@contoso.com>")
    assert session.send("XEXCH50 ten 2") == replies.XEXCH50_SYNTAX
    assert session.send("XEXCH50 \u00b2 2") == replies.XEXCH50_SYNTAX  # a digit, but not an ASCII one
    assert session.send("XEXCH50") == replies.XEXCH50_SYNTAX
    assert session.send("XEXCH50 99999999 2") == replies.XEXCH50_TOO_BIG
    assert session.closed()


def test_help_does_not_list_it(lab: Lab) -> None:
    session = Session(lab, "EX1", address(lab, "EX3"))
    session.send("EHLO ex3.contoso.com")
    assert "XEXCH50" not in session.send("HELP")
    session.sock.close()
