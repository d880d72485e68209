"""One transfer per next hop under load: 50 SMTP sessions at once to EX1 of a real `mailflow lab up`,
each sending messages to Sales, whose members live on three servers (Bob on EX2, Carol on EX3, Dave,
through Sales Managers, on EX4). From EX1 all three go through EX2 (Bob's home server in the same
routing group, and the bridgehead toward Tokyo), EX2 hands Carol and Dave to EX4, and EX4 hands Carol
to London's EX3. Each link carries each message in one transaction: the receiving server logs one
submission (1019) per recipient of a transaction, with the transaction's recipient count."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from email.message import EmailMessage
from fractions import Fraction
from pathlib import Path

import aiosmtplib
import pytest
from labprocess import LabProcess, environment, lab_processes, queues, start

from reference_mta import tracking

WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
# This module's own address block, apart from the other modules' labs (MAILFLOW_LAB_BASE moves it).
_FIRST = int(os.environ.get("MAILFLOW_LAB_BASE", "127.170.0.0").split(".")[1])
BASE = f"127.{(_FIRST + WORKER) % 250}.34.0"
OFFSET = 34200 + 100 * (WORKER % 10)
SESSIONS = 50
MESSAGES_PER_SESSION = 1
# The contoso lab's hosts, by their addr in fixtures/labs/contoso.yaml.
SERVERS = {11: "EX1", 21: "EX2", 31: "EX3", 41: "EX4"}
INTERNET_CLIENT = 200
MEMBERS = ("bob@contoso.com", "carol@contoso.com", "dave@contoso.com")
# Which server hands each message to which, once each.
LINKS = {("EX1", "EX2"), ("EX2", "EX4"), ("EX4", "EX3")}
DRAINED_WITHIN = 240.0  # seconds: a deadline for polling, not a measure


def address(host: int) -> str:
    return BASE.rsplit(".", 1)[0] + f".{host}"


@pytest.fixture
def started() -> Iterator[list[LabProcess]]:
    with lab_processes() as labs:
        yield labs


async def _session(index: int) -> list[str]:
    """One client session that sends its messages to Sales; the Message-IDs it used."""
    smtp = aiosmtplib.SMTP(
        hostname=address(11),
        port=25 + OFFSET,
        source_address=(address(INTERNET_CLIENT), 0),
        local_hostname="mail-out.fabrikam.com",
        start_tls=False,
        timeout=60,
    )
    sent: list[str] = []
    await smtp.connect()
    for number in range(MESSAGES_PER_SESSION):
        message = EmailMessage()
        message["From"] = "ann@fabrikam.com"
        message["To"] = "sales@contoso.com"
        message["Subject"] = f"load {index}.{number}"
        message["Message-ID"] = f"<load-{index}-{number}@fabrikam.com>"
        message.set_content("One transfer per next hop.\n")
        errors, reply = await smtp.send_message(message)
        assert not errors, errors
        assert reply.startswith("2"), reply
        sent.append(str(message["Message-ID"]))
    await smtp.quit()
    return sent


async def _load() -> list[str]:
    sessions = await asyncio.gather(*(_session(index) for index in range(SESSIONS)))
    return [message_id for sent in sessions for message_id in sent]


def transfers(workdir: Path) -> dict[tuple[str, str, str], Fraction]:
    """Transactions per (sending server, receiving server, Message-ID), from the receiving servers'
    tracking logs: each transaction logs 1019 once per recipient, and says how many it had."""
    servers = {address(addr): name for addr, name in SERVERS.items()}
    seen: dict[tuple[str, str, str], Fraction] = {}
    for receiver in SERVERS.values():
        for event in tracking.read_events(workdir / "tracking", receiver):
            sender = servers.get(event["client-ip"])
            if event["event-id"] == tracking.SUBMIT_TO_AQ and sender is not None:
                key = (sender, receiver, event["msgid"].strip("<>"))
                seen[key] = seen.get(key, Fraction(0)) + Fraction(1, event["number-recipients"])
    return seen


def delivered(workdir: Path) -> Counter[str]:
    """Local deliveries per Message-ID, on every server."""
    return Counter(
        event["msgid"].strip("<>")
        for server in SERVERS.values()
        for event in tracking.read_events(workdir / "tracking", server)
        if event["event-id"] == tracking.LOCAL_DELIVERY
    )


def drained(workdir: Path, sent: set[str]) -> bool:
    """Every message is in all three mailboxes, and nothing is left in any queue."""
    counts = delivered(workdir)
    if any(counts[message_id] < len(MEMBERS) for message_id in sent):
        return False
    listed = queues(workdir)
    return listed.exit_code == 0 and sum(row["count"] for row in json.loads(listed.output)) == 0


def test_each_message_crosses_each_link_once_under_fifty_sessions(
    tmp_path: Path, started: list[LabProcess]
) -> None:
    workdir = tmp_path / "lab"
    start(started, workdir, environment(MAILFLOW_LAB_BASE=BASE, MAILFLOW_PORT_OFFSET=str(OFFSET)))
    sent = {message_id.strip("<>") for message_id in asyncio.run(_load())}
    assert len(sent) == SESSIONS * MESSAGES_PER_SESSION
    deadline = time.monotonic() + DRAINED_WITHIN
    while time.monotonic() < deadline and not drained(workdir, sent):
        time.sleep(0.2)
    assert drained(workdir, sent), f"not all delivered: {sum(delivered(workdir).values())} deliveries"
    seen = {key: count for key, count in transfers(workdir).items() if key[2] in sent}
    by_link = Counter((sender, receiver) for sender, receiver, _ in seen)
    per_link = Counter({(sender, receiver): 0 for sender, receiver in LINKS})
    for (sender, receiver, _), count in seen.items():
        per_link[(sender, receiver)] += int(count)
    # Every message over every link in exactly one transaction: no split envelope, none missing.
    wanted = {(sender, receiver, message_id): 1 for sender, receiver in LINKS for message_id in sent}
    assert seen == wanted, f"transactions per link: {dict(per_link)}, messages per link: {dict(by_link)}"
    # One envelope, but each recipient's routing event keeps the reason routing gave it.
    reasons = {
        (event["msgid"].strip("<>"), event["recipient-address"]): (event["spec"], event["detail"])
        for event in tracking.read_events(workdir / "tracking", "EX1")
        if event["event-id"] == tracking.ROUTED_REMOTE
    }
    for message_id in sent:
        bob, carol, dave = (reasons[(message_id, member)] for member in MEMBERS)
        assert bob == ("IN-7a", "same routing group Seattle"), bob
        assert carol[0] == "IN-7a" and carol[1].startswith("home server ex3.contoso.com;"), carol
        assert dave[0] == "IN-7a" and dave[1].startswith("home server ex4.contoso.com;"), dave
