"""The message transfer agent (MTA): one queue per connector it transfers over, and what other MTAs of
the organization transfer to it over X.400 connectors.

As the Exchange SDK describes the outbound path to a foreign system: routing assigns the gateway
connector, the store driver hands the message to the MTA (tracking 1029, then MTA event 4, "message
submission"), the MTA queues it for that connector, and transfers it into the gateway's MTS-OUT folder
(MTA event 7), where the gateway collects it. "The MTA keeps delivering to MTS-OUT even if the gateway
service is paused": the transfer does not wait for the gateway.

Each connector's queue is a folder the message rests in, as `<id>.eml` (content) and `<id>.json` (the
envelope). The envelope is written last and moved last, so it marks a complete item: after a crash
between the two renames the envelope still names the queue the item came from, and `recover` finishes
the move. Queue Viewer lists each queue as "X.400: <connector>" (`queue_contract.mta_queue`), and an
administrator can freeze it like any X.400 queue.

Over an X.400 connector between routing groups, the local MTA transfers the message to the remote MTA
(MTA event 7 here, 0 there): the P1 association is modelled as a folder the remote server's MTA reads,
its `MTA/in` under the lab's folder, which every server of a lab reaches at the same path, in one
process or in containers. The remote MTA submits what it takes in to its AQ as the store driver does
(1027, the GW-5 path), and the transport goes on from there. An X.400 connector with address spaces
and no remote MTA of the organization leads to a foreign X.400 system: its folder is `x400/<connector>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reference_mta import crash_points, tracking
from reference_mta.durable import move, write
from reference_mta.mailmsg import MailMsg
from reference_mta.moves import Moves
from reference_mta.queue_contract import DeliveryResult, QueueState, mta_queue

# Told the item's name when the MTA has put it in the outlet's folder.
Arrived = Callable[[str], None]
log = logging.getLogger(__name__)

# Hands a message the MTA took in to AQ; returns once AQ holds it durably.
Submit = Callable[[MailMsg, bytes], Awaitable[None]]
# How often the MTA looks for what other MTAs transferred to it: it waits for an association, as
# Exchange's MTA does, rather than being called (the other MTA may run in another process).
POLL_SECONDS = 0.02
# What a message carries over an X.400 transfer; the rest (routing state, queue ids) is the sender's.
_CARRIED = (
    "ANONYMOUS_ORIGIN",
    "PRIORITY",
    "RFC822_MSG_ID",
    "RFC822_MSG_SUBJECT",
    "MSG_SIZE_HINT",
    "MAX_HOP_COUNT",
    "ORG_INTERNAL",
    "AUTHENTICATED_USER_NAME",
    "SMTP_UTF8",
    "DSN_ENVID_VALUE",
    "DSN_REQUEST",
)


@dataclass(frozen=True)
class Outlet:
    """Where the MTA transfers what one connector's queue holds."""

    folder: Path
    label: str  # the tracking log's queue field for the transfer (event 7)
    arrived: Arrived | None = None


class MessageTransferAgent:
    def __init__(self, server: str, root: Path, log: tracking.TrackingLog, frozen: set[str]) -> None:
        self.root = root
        self.server = server
        self.base = root / server / "MTA" / "connectors"
        self.tracking = log
        # The server's frozen X.400 queues, shared with its gateways; `release` is called on unfreezing.
        self.frozen = frozen
        self._outlets: dict[str, tuple[str, Outlet]] = {}  # by connector name in lower case
        self._parked: dict[str, str] = {}  # item → connector, resting in a frozen queue
        self.moves = Moves()
        self.inbox = root / server / "MTA" / "in"
        self.badmail = root / server / "MTA" / "BadMail"
        self._receiver: asyncio.Task[None] | None = None

    def connect(self, connector: str, outlet: Outlet) -> None:
        """Open the MTA's queue toward `connector` (at start, for each connector this server serves)."""
        self._outlets[connector.lower()] = (connector, outlet)
        self.queue_folder(connector).mkdir(parents=True, exist_ok=True)
        outlet.folder.mkdir(parents=True, exist_ok=True)

    def queue_folder(self, connector: str) -> Path:
        return self.base / connector

    def queue_names(self) -> list[str]:
        return [mta_queue(name) for name, _ in self._outlets.values()]

    def _outlet(self, connector: str) -> tuple[str, Outlet]:
        if connector.lower() not in self._outlets:
            # A gateway connector whose gateway does not run on this server: its MTS-OUT folder is
            # still where the MTA puts what is for it (the foreign system collects it from there).
            self.connect(connector, gateway_outlet(self.root, self.server, connector))
        return self._outlets[connector.lower()]

    async def accept(self, connector: str, msg: MailMsg, content: bytes) -> DeliveryResult:
        """The store driver hands a message to the MTA: it is durable in the connector's queue on return.
        The same envelope handed over again (AQ retrying after a crash) replaces the first copy."""
        name, _ = self._outlet(connector)
        folder = self.queue_folder(name)
        # The connector and the sending server travel with the envelope: the remote MTA logs them.
        carried = MailMsg(
            msg.sender,
            msg.recipients,
            {**msg.properties, "MTA_CONNECTOR": name, "MTA_FROM": self.server},
            msg.id,
        )
        await asyncio.to_thread(write, folder / f"{msg.id}.eml", content)
        await asyncio.to_thread(write, folder / f"{msg.id}.json", carried.to_json().encode())
        self.tracking.log(tracking.MTA_SUBMISSION, msg, None, "IN-7c", partner="STORE", queue=mta_queue(name))
        self.moves.spawn(self._advance(name, msg.id))
        for recipient in msg.recipients:
            recipient.status = "relayed"
        return DeliveryResult(delivered=list(msg.recipients), failed=[], deferred=[], partner="X400")

    async def _advance(self, connector: str, item: str) -> None:
        """The MTA transfers the item into the outlet's folder, unless its queue is frozen."""
        if mta_queue(connector) in self.frozen:
            self._parked[item] = connector
            return
        _, outlet = self._outlet(connector)
        source = self.queue_folder(connector)
        envelope = source / f"{item}.json"
        if not envelope.exists():
            return  # moved already (a release and a recovery both asked)
        msg = MailMsg.from_json(await asyncio.to_thread(envelope.read_text, encoding="utf-8"))
        await asyncio.to_thread(move, source / f"{item}.eml", outlet.folder / f"{item}.eml")
        crash_points.reached(crash_points.MTA_CONTENT_MOVED)
        await asyncio.to_thread(move, envelope, outlet.folder / f"{item}.json")
        self.tracking.log(
            tracking.MTA_TRANSFER_OUT, msg, None, "IN-7c", partner=connector, queue=outlet.label
        )
        if outlet.arrived is not None:
            outlet.arrived(item)

    def recover(self) -> None:
        """At start: a move cut short is finished, and what rests in each queue goes on (a frozen queue
        keeps it). A content file without its envelope was never handed over: AQ still holds the
        message and hands it over again."""
        for name, outlet in list(self._outlets.values()):
            folder = self.queue_folder(name)
            for envelope in sorted(folder.glob("*.json")):
                content = folder / f"{envelope.stem}.eml"
                if not content.exists() and (outlet.folder / content.name).exists():
                    move(envelope, outlet.folder / envelope.name)
                    if outlet.arrived is not None:
                        outlet.arrived(envelope.stem)
                    continue
                self.moves.spawn(self._advance(name, envelope.stem))
            for content in folder.glob("*.eml"):
                if not content.with_suffix(".json").exists():
                    content.unlink()

    def release(self, queue: str) -> None:
        """An X.400 queue was unfrozen: what rests in it moves on at once."""
        for item, connector in list(self._parked.items()):
            if mta_queue(connector).lower() == queue.lower() and queue not in self.frozen:
                del self._parked[item]
                self.moves.spawn(self._advance(connector, item))

    def folders(self) -> dict[str, list[dict[str, Any]]]:
        """Each connector's queue as Queue Viewer lists X.400 queues: one row per message."""
        return {
            mta_queue(name): [
                _row(path, mta_queue(name) in self.frozen)
                for path in sorted(self.queue_folder(name).glob("*.json"))
            ]
            for name, _ in self._outlets.values()
        }

    # --- what other MTAs transfer to this one ------------------------------------------------------

    def receive(self, submit: Submit, handed_over: Callable[[str], bool]) -> None:
        """Start taking in what other MTAs put in this MTA's folder. An item AQ already holds
        (`handed_over`, by the item's name) was submitted just before a stop: it is only removed."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        self._receiver = asyncio.get_running_loop().create_task(self._receive(submit, handed_over))

    async def _receive(self, submit: Submit, handed_over: Callable[[str], bool]) -> None:
        while True:
            for envelope in sorted(await asyncio.to_thread(lambda: list(self.inbox.glob("*.json")))):
                try:
                    await self._take_in(envelope.stem, submit, handed_over)
                except Exception:
                    # One item the MTA cannot take in must not stop the others: it is set aside whole,
                    # as AQ sets aside what it cannot handle, for an administrator to look at.
                    log.exception("MTA on %s cannot take in %s: moved to %s", self.server, envelope.stem,
                                  self.badmail)  # fmt: skip
                    await asyncio.to_thread(self._set_aside, envelope.stem)
            await asyncio.sleep(POLL_SECONDS)

    def _set_aside(self, item: str) -> None:
        self.badmail.mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".eml"):
            source = self.inbox / f"{item}{suffix}"
            if source.exists():
                move(source, self.badmail / source.name)

    async def _take_in(self, item: str, submit: Submit, handed_over: Callable[[str], bool]) -> None:
        held = await asyncio.to_thread(read_item, self.inbox, item)
        if held is None:
            return  # the content is on its way still, or the item was taken in already
        sent, content = held
        if not handed_over(item):
            # A new envelope, as the store driver makes one: the sender's routing state stays behind.
            msg = MailMsg.new(
                sent.sender,
                [r.address for r in sent.recipients],
                **{key: sent.properties[key] for key in _CARRIED if key in sent.properties},
                HELO_DOMAIN="MTA",
                # The transfer is a hop, as each Received: header is over SMTP: a loop through X.400
                # connectors still ends at the hop limit (X.400 counts its own trace entries).
                HOP_COUNT=int(sent.properties.get("HOP_COUNT", 0)) + 1,
            )
            msg.id = item  # the transfer's name: AQ keeps it, so a repeat after a crash is known
            done = {r.address.lower(): r for r in sent.recipients}
            for recipient in msg.recipients:
                # What the sending categorizer did travels, as in XEXCH50: no forwarding twice.
                carried = done[recipient.address.lower()]
                recipient.original = carried.original
                recipient.categorized = carried.categorized
            partner = str(sent.properties.get("MTA_FROM", "-"))
            connector = str(sent.properties.get("MTA_CONNECTOR", ""))
            self.tracking.log(tracking.MTA_TRANSFER_IN, msg, None, "C-RE", partner=partner, queue=connector)
            await submit(msg, content)
        # Taken in: the envelope goes first, so that a leftover content file is never a complete item.
        for suffix in (".json", ".eml"):
            await asyncio.to_thread((self.inbox / f"{item}{suffix}").unlink, missing_ok=True)

    def receiving(self) -> bool:
        """Something other MTAs transferred waits to be taken in."""
        return self._receiver is not None and any(self.inbox.glob("*.json"))

    async def stop(self) -> None:
        """The transfers under way end where they are: `recover` takes them up at the next start."""
        if self._receiver is not None:
            self._receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._receiver
            self._receiver = None
        await self.moves.cancel()

    def idle(self) -> bool:
        """Nothing is on its way: a message in a frozen queue waits for an administrator."""
        return self.moves.idle() and not self.receiving()


def x400_outlet(root: Path, connector: str, remote_server: str | None) -> Outlet:
    """An X.400 connector's far end: the remote MTA's folder, or a foreign X.400 system's."""
    if remote_server is None:
        return Outlet(root / "x400" / connector, connector)
    return Outlet(root / remote_server / "MTA" / "in", connector)


def gateway_outlet(root: Path, server: str, connector: str, arrived: Arrived | None = None) -> Outlet:
    """A gateway connector's MTS-OUT folder, where the MTA puts what the gateway is to deliver."""
    return Outlet(root / server / "gateways" / connector / "MTS-OUT", "MTS-OUT", arrived)


def read_item(folder: Path, item: str) -> tuple[MailMsg, bytes] | None:
    """A complete item of a queue or an MTS-OUT folder: its envelope and content, or None."""
    envelope, content = folder / f"{item}.json", folder / f"{item}.eml"
    if not (envelope.exists() and content.exists()):
        return None
    return MailMsg.from_json(envelope.read_text(encoding="utf-8")), content.read_bytes()


def _row(envelope: Path, frozen: bool) -> dict[str, Any]:
    msg = MailMsg.from_json(envelope.read_text(encoding="utf-8"))
    return {
        "id": envelope.stem,
        "msgid": msg.message_id,
        "sender": msg.sender,
        "recipients": [r.address for r in msg.recipients],
        "attempts": 0,
        "state": QueueState.FROZEN if frozen else QueueState.READY,
        "next_retry": None,
    }
