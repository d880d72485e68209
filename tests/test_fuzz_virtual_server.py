"""Fuzzing the SMTP virtual server over a real socket: random command sequences, random bytes and random
line endings. Invariants: every reply is well formed, the server never hangs past the time-out nor
dies, every message accepted (a 250 2.6.0 after its data) reaches each recipient accepted in its
transaction exactly once, and nothing else is delivered.

The example count is small so CI stays fast; for a longer run:
    MAILFLOW_FUZZ_EXAMPLES=2000 .venv/bin/pytest tests/test_fuzz_virtual_server.py
"""

from __future__ import annotations

import collections
import email
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harness.judge.evidence import Delivery, Evidence
from harness.lab import config as lab_config
from harness.lab import placement
from harness.lab.runtime import Lab
from reference_mta import tracking

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
# Its own block, unless the environment places this process's labs (placement moves it per worker).
BASE = placement.relocation()[0] or f"127.{200 + WORKER % 40}.0.0"
EXAMPLES = int(os.environ.get("MAILFLOW_FUZZ_EXAMPLES", "25"))
FUZZED = ("Default SMTP Virtual Server", "Directory SMTP Virtual Server")
REPLY = re.compile(rb"^[2-5][0-9][0-9]([ -][^\r\n]*)?$")
QUEUED = re.compile(rb"^250 2\.6\.0 <([^>]*)>")
# A recipient's path ends in one of these: its mailbox, the MTA, the next hop, an NDR, or BadMail.
ENDS = {
    tracking.SD_LOCAL_DELIVERY,
    tracking.SD_GATEWAY_DELIVERY,
    tracking.END_OUTBOUND,
    tracking.NDR_ALL,
    tracking.BAD_MAIL,
}

ADDRESSES = st.sampled_from(
    [
        "<alice@contoso.com>",
        "<nobody@contoso.com>",
        "<x@northwind.example>",
        "<>",
        "<@a,@b:c@d>",
        "<a@b@c>",
        '<"quoted@x"@contoso.com>',
        "<st*r@contoso.com>",
        "<a%b@contoso.com>",
        "<a!b@contoso.com>",
        "alice@contoso.com",
    ]
)
COMMANDS = st.one_of(
    st.sampled_from(
        [
            "EHLO fuzz.example",
            "HELO fuzz.example",
            "RSET",
            "NOOP",
            "QUIT",
            "DATA",
            "VRFY alice",
            "EXPN sales",
            "STARTTLS",
            "AUTH LOGIN",
            "AUTH PLAIN AGFsaWNlAHg=",
            "HELP",
            "BDAT 5 LAST",
            "TURN",
            ".",
            "",
        ]
    ),
    ADDRESSES.map(lambda a: f"MAIL FROM:{a}"),
    ADDRESSES.map(lambda a: f"RCPT TO:{a}"),
    st.text(alphabet=st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=40),
)
ENDINGS = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n\r\n"])
LINE = st.one_of(
    st.tuples(COMMANDS, ENDINGS).map(lambda t: t[0].encode() + t[1]),
    st.binary(max_size=64),
    st.just(b"DATA\r\nSubject: x\r\n\r\nbody\n.\nMAIL FROM:<x@evil.example>\r\n.\r\n"),
    st.just(b"x" * 600 + b"\r\n"),
    st.just(b"BDAT 3\r\nabc"),
    st.just(b"BDAT 12 LAST\r\n\r\n.\r\nRSET\r\n\r\n"),
)

# A whole transaction, a line at a time, among the random ones: without it random lines seldom complete
# one, and the delivery invariants would go untested.
TRANSACTION = st.tuples(ADDRESSES, st.sampled_from(["<alice@contoso.com>", "<x@northwind.example>"])).map(
    lambda pair: [
        b"EHLO fuzz.example\r\n",
        f"MAIL FROM:{pair[0]}\r\n".encode(),
        f"RCPT TO:{pair[1]}\r\n".encode(),
        b"RCPT TO:<alice@contoso.com>\r\n",
        b"DATA\r\n",
        b"Subject: whole\r\n\r\nbody\r\n.\r\n",
    ]
)
WHOLE = [
    b"EHLO fuzz.example\r\n",
    b"MAIL FROM:<ann@fabrikam.com>\r\n",
    b"RCPT TO:<alice@contoso.com>\r\n",
    b"DATA\r\n",
    b"Subject: whole\r\n\r\nbody\r\n.\r\n",
]
CHUNKS = st.lists(st.one_of(LINE.map(lambda line: [line]), TRANSACTION), min_size=1, max_size=12).map(
    lambda groups: [chunk for group in groups for chunk in group]
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    # A one-second idle time-out on the fuzzed virtual servers: random input can legitimately leave the
    # server waiting (a BDAT chunk that swallowed the final QUIT), and "no hang past the time-out" is
    # then checkable within the test's own wait.
    text = LAB.read_text(encoding="utf-8").replace("../directory/", f"{LAB.parent.parent}/directory/")
    for name in FUZZED:
        marker = f"        - name: {name}\n"
        assert marker in text, name
        text = text.replace(marker, f"{marker}          connection_timeout: 1\n", 1)
    lab_file = tmp_path_factory.mktemp("fuzz-lab") / "contoso.yaml"
    lab_file.write_text(text, encoding="utf-8")
    config = lab_config.load(lab_file, base=BASE, port_offset=28000)
    with Lab(config) as running:
        yield running


def message_id(delivery: Delivery) -> str:
    headers = email.message_from_bytes(delivery.data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
    return str(headers.get("Message-ID") or "").strip().strip("<>")


def session(address: str, port: int, source: str, chunks: list[bytes]) -> tuple[list[bytes], bool, bytes]:
    """Send the chunks then QUIT, collecting every line the server sends; returns the lines, whether the
    server closed the connection, and any unterminated bytes it left."""
    lines: list[bytes] = []
    with socket.create_connection((address, port), timeout=3, source_address=(source, 0)) as connection:
        buffer = b""
        final = len(chunks) + 1
        # The end closes any DATA the random input left open, then quits.
        for number, chunk in enumerate([b"", *chunks, b"\r\n.\r\nQUIT\r\n"]):
            # Loopback replies come in milliseconds; only the end waits for the server to close.
            connection.settimeout(3.0 if number == final else 0.02)
            if chunk:
                try:
                    connection.sendall(chunk)
                except OSError:
                    break  # the server closed: allowed, as long as it keeps serving others
            try:
                while True:
                    data = connection.recv(65536)
                    if not data:
                        return lines, True, buffer
                    buffer += data
                    *complete, buffer = buffer.split(b"\r\n")
                    lines.extend(complete)
            except TimeoutError:
                continue
            except OSError:
                return lines, True, buffer  # reset by the server: it closed
    return lines, False, buffer


# The default virtual server cuts a session off at the first pipelining sync error; the lenient one lets
# random input reach deeper states (BDAT, DATA, VRFY/EXPN against the directory).
@pytest.mark.parametrize("virtual_server", FUZZED)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=CHUNKS)
# Every run has accepted messages: one beside a refused recipient, and two in one session.
@example(chunks=[*WHOLE[:3], b"RCPT TO:<nobody@contoso.com>\r\n", *WHOLE[3:]])
@example(chunks=[*WHOLE, *WHOLE[1:]])
def test_random_sessions_keep_every_invariant(lab: Lab, virtual_server: str, chunks: list[bytes]) -> None:
    (vs,) = (v for v in lab.config.organization.server("EX1").virtual_servers if v.name == virtual_server)
    client = lab.config.host("attacker").address
    before = collections.Counter(Evidence.collect(lab).deliveries)
    lines, closed, left = session(vs.address, vs.port, client, chunks)
    assert closed, "the server neither answered QUIT by closing nor closed within the time-out"
    assert left == b"", f"unterminated reply bytes {left!r}"
    assert lines and lines[0].startswith(b"220 ex1.contoso.com"), lines[:1]
    for line in lines:
        assert REPLY.match(line), f"malformed reply line {line!r}"
    accepted = {match[1].decode() for line in lines if (match := QUEUED.match(line))}
    assert lab.settle(timeout=10)
    evidence = Evidence.collect(lab)
    # The evidence lists mailboxes before sinks: what is new is found by content, not by position.
    after = list((collections.Counter(evidence.deliveries) - before).elements())
    # Nothing arrives that is not an accepted message or an NDR of one.
    for delivery in after:
        assert message_id(delivery) in accepted or (
            delivery.sender == "" and any(m.encode() in delivery.data for m in accepted)
        ), delivery.describe()
    events = [e for server in evidence.tracking.values() for e in server]
    for accepted_id in accepted:
        mine = [e for e in events if e["msgid"].strip("<>") == accepted_id]
        submitted = collections.Counter(
            e["recipient-address"] for e in mine if e["event-id"] == tracking.SUBMIT_TO_AQ
        )
        # Submitted (a recipient given twice is in the envelope twice, until the categorizer drops the
        # repeat), stored once in each mailbox, and each recipient's path ended once.
        assert submitted, accepted_id
        stored = collections.Counter(d.where for d in evidence.deliveries if message_id(d) == accepted_id)
        assert set(stored.values()) <= {1}, stored
        ended = collections.Counter(e["recipient-address"] for e in mine if e["event-id"] in ENDS)
        assert set(ended) == set(submitted) and set(ended.values()) == {1}, (submitted, ended)
    # The server is still there for the next client.
    with socket.create_connection((vs.address, vs.port), timeout=3, source_address=(client, 0)) as probe:
        probe.settimeout(3)
        assert probe.recv(100).startswith(b"220 ")
