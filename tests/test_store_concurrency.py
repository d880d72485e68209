"""The store driver delivers each message to each mailbox exactly once, in a running lab (`mailflow lab
up`, a process of its own) reached over real SMTP sessions.

The contoso directory, copied, gets 100 more mailboxes on EX1 that nothing has delivered to. Several
sessions at once send messages to all of them, so the first deliveries into each mailbox race; every
message must be in every mailbox once, and the lab's output must hold no traceback. The same message
(the same Message-ID) sent again is dropped by the store, as Exchange's duplicate detection does, and a
mailbox that cannot be written is deferred alone while the others of its message are delivered.
"""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest
from labprocess import LabProcess, environment, lab_processes, queues, start

from harness.lab import config as lab_config
from harness.lab import placement
from harness.lab.config import LabConfig
from reference_mta.store import read_deliveries

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STORE = "Mailbox Store (EX1)"
CONFIGURATION = "CN=Servers,CN=First Administrative Group,CN=Administrative Groups,CN=Contoso,CN=Microsoft Exchange,CN=Services,CN=Configuration,DC=contoso,DC=com"  # noqa: E501
FRESH = [f"fresh{number:03}@contoso.com" for number in range(100)]
SPARE = ["spare1@contoso.com", "spare2@contoso.com", "spare3@contoso.com", "spare4@contoso.com"]


def mailbox_entry(address: str) -> str:
    alias = address.split("@")[0]
    return f"""
dn: CN={alias},CN=Users,DC=contoso,DC=com
objectClass: top
objectClass: person
objectClass: organizationalPerson
objectClass: user
cn: {alias}
sAMAccountName: {alias}
mailNickname: {alias}
mail: {address}
proxyAddresses: SMTP:{address}
legacyExchangeDN: /o=Contoso/ou=First Administrative Group/cn=Recipients/cn={alias}
homeMDB: CN={STORE},CN=First Storage Group,CN=InformationStore,CN=EX1,{CONFIGURATION}
msExchHomeServerName: /o=Contoso/ou=First Administrative Group/cn=Configuration/cn=Servers/cn=EX1
"""


@pytest.fixture(scope="module")
def lab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store-lab")
    (root / "labs").mkdir()
    (root / "directory").mkdir()
    shutil.copy(FIXTURES / "labs" / "contoso.yaml", root / "labs" / "contoso.yaml")
    ldif = (FIXTURES / "directory" / "contoso.ldif").read_text(encoding="utf-8").rstrip("\n") + "\n"
    entries = "".join(mailbox_entry(address) for address in FRESH + SPARE)
    (root / "directory" / "contoso.ldif").write_text(ldif + entries, encoding="utf-8")
    return root / "labs" / "contoso.yaml"


@pytest.fixture(scope="module")
def placed(lab_file: Path) -> tuple[str, int]:
    base, offset = placement.relocation()
    config = lab_config.load(lab_file)
    return base or config.base, offset if offset is not None else config.port_offset


@pytest.fixture(scope="module")
def config(lab_file: Path, placed: tuple[str, int]) -> LabConfig:
    return lab_config.load(lab_file, base=placed[0], port_offset=placed[1])


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, lab_file: Path, placed: tuple[str, int]
) -> Iterator[LabProcess]:
    workdir = tmp_path_factory.mktemp("store-workdir")
    args = (str(lab_file), "--base", placed[0], "--port-offset", str(placed[1]))
    with lab_processes() as labs:
        yield start(labs, workdir, environment(), *args)


def message(number: int, message_id: str) -> bytes:
    return (f"Message-ID: <{message_id}>\r\nSubject: message {number}\r\n\r\nMessage {number}.\r\n").encode()


async def session(config: LabConfig, messages: list[tuple[bytes, list[str]]]) -> None:
    vs = config.organization.server("EX1").default_virtual_server
    smtp = aiosmtplib.SMTP(
        hostname=vs.address,
        port=vs.port,
        source_address=(config.host("lan").address, 0),
        local_hostname="client.contoso.com",
        start_tls=False,
        timeout=60,
    )
    await smtp.connect()
    await smtp.ehlo()
    for content, recipients in messages:
        await smtp.sendmail("ann@fabrikam.com", recipients, content)
    await smtp.quit()


def sessions_at_once(config: LabConfig, sessions: list[list[tuple[bytes, list[str]]]]) -> None:
    async def together() -> None:
        await asyncio.gather(*(session(config, messages) for messages in sessions))

    asyncio.run(together())


def queued(workdir: Path) -> int:
    result = queues(workdir)
    assert result.exit_code == 0, result.output
    return sum(int(row["count"]) for row in json.loads(result.output))


def settled(lab: LabProcess, expected: int, timeout: float = 120.0) -> list[dict[str, object]]:
    """The lab's deliveries, once at least `expected` are made and no queue holds anything."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = read_deliveries(lab.workdir)
        if len(found) >= expected and queued(lab.workdir) == 0:
            return read_deliveries(lab.workdir)
        time.sleep(0.1)
    pytest.fail(f"{len(read_deliveries(lab.workdir))} deliveries of {expected} within {timeout} s")


def mailbox(lab: LabProcess, address: str) -> Path:
    return lab.workdir / "EX1" / "mdbdata" / STORE / address


def test_concurrent_first_deliveries_are_made_once_each(lab: LabProcess, config: LabConfig) -> None:
    ids = [f"concurrent-{number}@fabrikam.com" for number in range(4)]
    # Four messages to the same 100 new mailboxes, two sessions at once, two messages each.
    sessions_at_once(
        config,
        [
            [(message(number, ids[number]), FRESH) for number in (0, 1)],
            [(message(number, ids[number]), FRESH) for number in (2, 3)],
        ],
    )
    found = [d for d in settled(lab, 400) if d["msgid"] in ids]
    made = collections.Counter((str(d["msgid"]), str(d["recipient"])) for d in found)
    repeated = {key: count for key, count in made.items() if count > 1}
    print(f"{len(found)} deliveries for 400 expected, {len(repeated)} made more than once")
    assert not repeated, f"{len(found)} deliveries for 400 expected; repeated: {sorted(repeated)[:5]}"
    assert set(made) == {(i, r) for i in ids for r in FRESH}
    # Each mailbox holds each message once, as a mail client reads it.
    for address in FRESH:
        assert len(list((mailbox(lab, address) / "new").iterdir())) == 4, address
    assert "Traceback" not in lab.output, lab.output[-3000:]


def test_the_same_message_again_is_kept_once(lab: LabProcess, config: LabConfig) -> None:
    content = message(5, "again@fabrikam.com")
    recipients = ["spare1@contoso.com", "spare2@contoso.com"]
    sessions_at_once(config, [[(content, recipients)]])
    settled(lab, 0)
    # Sent again, as a client that lost the reply to its DATA would; and once more to one more mailbox.
    sessions_at_once(config, [[(content, recipients)], [(content, [*recipients, "spare3@contoso.com"])]])
    deadline = time.monotonic() + 60
    repeats = mailbox(lab, "spare1@contoso.com") / "repeats.jsonl"
    while not (repeats.exists() and len(repeats.read_text().splitlines()) == 2):
        assert time.monotonic() < deadline, "the repeats were not noted"
        time.sleep(0.1)
    found = [d for d in settled(lab, 0) if d["msgid"] == "again@fabrikam.com"]
    assert sorted(str(d["recipient"]) for d in found) == [*recipients, "spare3@contoso.com"]
    for address in [*recipients, "spare3@contoso.com"]:
        assert len(list((mailbox(lab, address) / "new").iterdir())) == 1, address


def test_a_mailbox_that_cannot_be_written_waits_alone(lab: LabProcess, config: LabConfig) -> None:
    # A file where spare4's mailbox folder belongs: its delivery fails until the file is gone.
    blocked = mailbox(lab, "spare4@contoso.com")
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("not a mailbox", encoding="utf-8")
    content = message(6, "blocked@fabrikam.com")
    sessions_at_once(config, [[(content, ["alice@contoso.com", "spare4@contoso.com"])]])
    deadline = time.monotonic() + 60
    while not [d for d in read_deliveries(lab.workdir) if d["msgid"] == "blocked@fabrikam.com"]:
        assert time.monotonic() < deadline, "alice's copy was held back with spare4's"
        time.sleep(0.1)
    assert queued(lab.workdir) == 1  # spare4's part, waiting for a retry
    blocked.unlink()
    found = [d for d in settled(lab, 0) if d["msgid"] == "blocked@fabrikam.com"]
    deadline = time.monotonic() + 60
    while len(found) < 2:
        assert time.monotonic() < deadline, "spare4's copy was not delivered on retry"
        time.sleep(0.1)
        found = [d for d in settled(lab, 0) if d["msgid"] == "blocked@fabrikam.com"]
    assert sorted(str(d["recipient"]) for d in found) == ["alice@contoso.com", "spare4@contoso.com"]
    assert "Traceback" not in lab.output, lab.output[-3000:]


def test_a_server_without_duplicate_detection_keeps_every_copy(
    tmp_path: Path, lab_file: Path, placed: tuple[str, int]
) -> None:
    # The same lab beside the first, ports moved on, with EX1's duplicate detection off.
    text = lab_file.read_text(encoding="utf-8")
    marker = "    - name: EX1\n"
    assert marker in text
    off = tmp_path / "labs" / "contoso.yaml"
    off.parent.mkdir()
    off.write_text(text.replace(marker, f"{marker}      duplicate_detection: none\n", 1), encoding="utf-8")
    shutil.copytree(lab_file.parent.parent / "directory", tmp_path / "directory")
    offset = placed[1] + 1000
    config = lab_config.load(off, base=placed[0], port_offset=offset)
    args = (str(off), "--base", placed[0], "--port-offset", str(offset))
    with lab_processes() as labs:
        lab = start(labs, tmp_path / "workdir", environment(), *args)
        content = message(7, "every-copy@fabrikam.com")
        sessions_at_once(config, [[(content, ["alice@contoso.com"])], [(content, ["alice@contoso.com"])]])
        found = [d for d in settled(lab, 2) if d["msgid"] == "every-copy@fabrikam.com"]
        assert [d["recipient"] for d in found] == ["alice@contoso.com"] * 2
        assert len(list((mailbox(lab, "alice@contoso.com") / "new").iterdir())) == 2
