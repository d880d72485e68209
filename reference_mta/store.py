"""Store driver and mailbox stores: local delivery into the mailbox of each recipient.

A mailbox store is a folder per store under the server's `mdbdata`; each mailbox is a Maildir (any mail
tool can read it) named by the user's alias, plus a `deliveries.jsonl` index that keeps the envelope
(sender, recipient, Message-ID) apart from the headers.

Each recipient's delivery is idempotent. As Exchange's store drops a second copy of a message a mailbox
already holds (its duplicate detection works on the Internet Message-ID), a delivery is keyed by the
Message-ID and the recipient (docs/decisions.md). The Maildir file is named by that key, written in
`tmp/` and renamed into `new/`, so doing it again replaces instead of adding; the index gets one line per
key. A repeat of a delivery already indexed is dropped, and noted in `repeats.jsonl`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from reference_mta import crash_points, durable, replies
from reference_mta.mailmsg import RP_DELIVERED, RP_ERROR_CONTEXT_STORE, MailMsg, Recipient
from reference_mta.queue_contract import DeliveryResult
from reference_mta.topology import DuplicateDetection

log = logging.getLogger(__name__)

INDEX = "deliveries.jsonl"
REPEATS = "repeats.jsonl"
MAILDIR_FOLDERS = ("tmp", "new", "cur")


def mailbox_name(address: str) -> str:
    return address.lower()


class MailboxStore:
    def __init__(
        self, root: Path, server: str, duplicate_detection: DuplicateDetection = "message_id"
    ) -> None:
        self.root = root / server / "mdbdata"
        self.root.mkdir(parents=True, exist_ok=True)
        self.duplicate_detection = duplicate_detection
        self._indexes: dict[Path, _IndexKeys] = {}
        self._made: set[Path] = set()  # mailbox folders known to have their Maildir folders

    def path_of(self, store: str, address: str) -> Path:
        return self.root / store / mailbox_name(address)

    def deliver(self, msg: MailMsg, content: bytes, store_names: tuple[str, ...]) -> DeliveryResult:
        """Deliver to each recipient on its own: one that cannot be written now is deferred alone, with
        its error, and the others are delivered."""
        delivered: list[Recipient] = []
        failed: list[Recipient] = []
        deferred: list[Recipient] = []
        errors: list[str] = []
        for recipient in msg.recipients:
            store = _store_of(recipient.home_mdb, store_names)
            if store is None:
                recipient.fail_with(
                    replies.store_not_on_this_server(recipient.address), RP_ERROR_CONTEXT_STORE
                )
                failed.append(recipient)
                continue
            try:
                self._deliver_one(msg, content, store, recipient)
            except OSError as exc:
                log.warning("%s: cannot deliver to %s now: %s", msg.id, recipient.address, exc)
                errors.append(f"{recipient.address}: {exc}")
                deferred.append(recipient)
                continue
            recipient.status = "delivered"
            recipient.flags |= RP_DELIVERED
            delivered.append(recipient)
        return DeliveryResult(
            delivered=delivered, failed=failed, deferred=deferred, error="; ".join(errors), partner="STORE"
        )

    def _deliver_one(self, msg: MailMsg, content: bytes, store: str, recipient: Recipient) -> None:
        folder = self.path_of(store, recipient.address)
        try:
            self._write(msg, content, store, recipient, folder)
        except OSError:
            self._made.discard(folder)  # made again at the next attempt, should it have gone
            raise

    def _write(self, msg: MailMsg, content: bytes, store: str, recipient: Recipient, folder: Path) -> None:
        if folder not in self._made:
            for name in MAILDIR_FOLDERS:
                (folder / name).mkdir(parents=True, exist_ok=True)  # the first deliveries may race here
            self._made.add(folder)
        key = self._key(msg, content, recipient)
        record = {
            "time": time.time(),
            "key": key,
            "sender": msg.sender,
            "recipient": recipient.address,
            "original_recipient": recipient.original,
            "msgid": msg.message_id,
            "store": store,
        }
        index = self._indexes.setdefault(folder, _IndexKeys(folder / INDEX))
        # Written and fsynced before the mailbox's lock is taken: the other deliveries to the mailbox
        # wait only for the rename and the index line.
        staged = _stage(folder, key, content)
        try:
            with _locked(folder):
                if key in index.read():
                    log.info("%s: %s already holds %s; the repeat is dropped", msg.id, recipient.address, key)
                    _append(folder / REPEATS, record | {"envelope": msg.id})
                    return
                os.replace(staged, folder / "new" / key)  # replaces a copy a crash left before its index line
                durable.sync_folder(folder / "new")
                crash_points.reached(crash_points.STORE_FILE_WRITTEN)  # a redo replaces the file
                _append(folder / INDEX, record)
        finally:
            staged.unlink(missing_ok=True)  # a repeat's copy (a delivered one was renamed)

    def _key(self, msg: MailMsg, content: bytes, recipient: Recipient) -> str:
        """The Maildir file name of this delivery: the same for a repeat, unique otherwise."""
        if self.duplicate_detection == "none":
            identity = f"{msg.id}\0{time.time_ns()}"
        else:
            # Every way into the store stamps a Message-ID; a message without one is known by its bytes.
            identity = msg.message_id or hashlib.sha256(content).hexdigest()
        digest = hashlib.sha256(f"{identity}\0{mailbox_name(recipient.address)}".encode()).hexdigest()
        return f"{digest[:40]}.mailflow"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    # flock, not a threading lock: it holds across the store's worker threads and across processes.
    with (folder / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _IndexKeys:
    """The keys a mailbox's index holds, read on from where the last look stopped.

    Read whole at every delivery, the index made each delivery cost as much as the mailbox's history.
    The index only ever grows by appends (`_append`), from this process or another, so under the
    mailbox's lock the lines added since the last look are all that is new; a file that is not the one
    read before, or shorter than what was read, is read again from the start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: set[str] = set()
        self._identity: tuple[int, int] | None = None  # device and inode of the file read
        self._offset = 0  # just past the last whole line read

    def read(self) -> set[str]:
        try:
            file = self.path.open("rb")
        except FileNotFoundError:
            self._keys, self._identity, self._offset = set(), None, 0
            return self._keys
        with file:
            status = os.fstat(file.fileno())
            identity = (status.st_dev, status.st_ino)
            if identity != self._identity or status.st_size < self._offset:
                self._keys, self._identity, self._offset = set(), identity, 0
            file.seek(self._offset)
            added = file.read()
        # The last line may have no newline yet (a crash cut it short): it is read as it is, and again
        # from its start next time, once `_append` has ended it.
        self._offset += added.rfind(b"\n") + 1
        for line in added.splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                # A line cut short by a crash is not a delivery.
                self._keys.add(str(json.loads(line)["key"]))
        return self._keys


def _stage(folder: Path, key: str, content: bytes) -> Path:
    """Maildir's own protocol: written whole in tmp/, under a name of its own (two deliveries of one
    key may stage at once), to be renamed into new/."""
    staged = folder / "tmp" / f"{key}.{uuid.uuid4().hex}"
    try:
        with staged.open("wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
    except OSError:
        staged.unlink(missing_ok=True)  # a disk that filled up: no partial copy stays behind
        raise
    return staged


def _append(path: Path, record: dict[str, object]) -> None:
    with path.open("a+b") as file:
        # A line a crash cut short stays alone on its line, and the reader skips it.
        size = file.seek(0, os.SEEK_END)
        cut_short = size > 0 and file.seek(size - 1) >= 0 and file.read(1) != b"\n"
        file.write((b"\n" if cut_short else b"") + json.dumps(record).encode() + b"\n")
        file.flush()
        os.fsync(file.fileno())


def _store_of(home_mdb: str | None, store_names: tuple[str, ...]) -> str | None:
    if not home_mdb:
        return None
    first_rdn = home_mdb.split(",", 1)[0]
    name = first_rdn.split("=", 1)[1] if "=" in first_rdn else first_rdn
    return name if name in store_names else None


def read_deliveries(root: Path) -> list[dict[str, object]]:
    """Every delivery in every mailbox store under a lab's root, oldest first."""
    records: list[dict[str, object]] = []
    for index in root.glob(f"*/mdbdata/*/*/{INDEX}"):
        server = index.parents[3].name
        for line in index.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # blank, or cut short by a crash before the delivery was acknowledged
            record["server"] = server
            record["path"] = str(index.parent / "new" / record["key"])
            records.append(record)
    return sorted(records, key=lambda r: float(str(r["time"])))


def read_gateway_transfers(root: Path) -> list[dict[str, object]]:
    """Every message handed to a gateway's MTS-OUT folder under a lab's root."""
    transfers: list[dict[str, object]] = []
    for envelope in sorted(root.glob("*/gateways/*/MTS-OUT/*.json")):
        msg = MailMsg.from_json(envelope.read_text(encoding="utf-8"))
        transfers.append(
            {
                "server": envelope.parents[3].name,
                "connector": envelope.parents[1].name,
                "sender": msg.sender,
                "recipients": [r.address for r in msg.recipients],
                "path": str(envelope.with_suffix(".eml")),
            }
        )
    return transfers
