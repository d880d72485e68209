"""Store driver and mailbox stores: local delivery into the mailbox of each recipient.

A mailbox store is a folder per store under the server's `mdbdata`; each mailbox is a Maildir (the
standard library's, so any mail tool can read it) named by the user's alias, plus a `deliveries.jsonl`
index that keeps the envelope (sender, recipient, Message-ID) apart from the headers.
"""

from __future__ import annotations

import json
import mailbox
import os
import time
from pathlib import Path

from reference_mta import replies
from reference_mta.mailmsg import RP_DELIVERED, RP_ERROR_CONTEXT_STORE, MailMsg, Recipient
from reference_mta.queue_contract import DeliveryResult


def mailbox_name(address: str) -> str:
    return address.lower()


class MailboxStore:
    def __init__(self, root: Path, server: str) -> None:
        self.root = root / server / "mdbdata"
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, store: str, address: str) -> Path:
        return self.root / store / mailbox_name(address)

    def deliver(self, msg: MailMsg, content: bytes, store_names: tuple[str, ...]) -> DeliveryResult:
        delivered: list[Recipient] = []
        failed: list[Recipient] = []
        for recipient in msg.recipients:
            store = _store_of(recipient.home_mdb, store_names)
            if store is None:
                recipient.fail_with(
                    replies.store_not_on_this_server(recipient.address), RP_ERROR_CONTEXT_STORE
                )
                failed.append(recipient)
                continue
            folder = self.path_of(store, recipient.address)
            folder.parent.mkdir(parents=True, exist_ok=True)
            box = mailbox.Maildir(folder, create=True)
            key = box.add(content)
            box.close()
            with (folder / "deliveries.jsonl").open("a", encoding="utf-8") as index:
                index.write(
                    json.dumps(
                        {
                            "time": time.time(),
                            "key": key,
                            "sender": msg.sender,
                            "recipient": recipient.address,
                            "original_recipient": recipient.original,
                            "msgid": msg.message_id,
                            "store": store,
                        }
                    )
                    + "\n"
                )
                index.flush()
                os.fsync(index.fileno())
            recipient.status = "delivered"
            recipient.flags |= RP_DELIVERED
            delivered.append(recipient)
        return DeliveryResult(delivered=delivered, failed=failed, deferred=[], partner="STORE")


def _store_of(home_mdb: str | None, store_names: tuple[str, ...]) -> str | None:
    if not home_mdb:
        return None
    first_rdn = home_mdb.split(",", 1)[0]
    name = first_rdn.split("=", 1)[1] if "=" in first_rdn else first_rdn
    return name if name in store_names else None


def read_deliveries(root: Path) -> list[dict[str, object]]:
    """Every delivery in every mailbox store under a lab's root, oldest first."""
    records: list[dict[str, object]] = []
    for index in root.glob("*/mdbdata/*/*/deliveries.jsonl"):
        server = index.parents[3].name
        for line in index.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
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
