"""Gateway to a foreign mail system (Lotus Notes style), and the MTA hand-off behind it.

Inbound, as the Exchange SDK's "Inbound Message Transfer Process" describes it:
  GW-1  the foreign system drops a memo into the gateway's IN folder (a durable queue);
  GW-2  the gateway translates it to MIME and maps the foreign addresses to Exchange ones through the
        directory (NOTES proxy addresses), then puts it in its MTS-IN folder on the mailbox store;
  GW-3  the store driver moves it to the MTA, which queues it;
  GW-4  the store driver takes it from the MTA queue into the SMTP service's MTS-OUT queue (an X.400
        queue in Queue Viewer);
  GW-5  the store driver gives it to AQ (pre-categorization), and the transport takes it from there.
A recipient with no NOTES proxy in the directory cannot be mapped: the gateway sends a non-delivery
memo back to the foreign sender. Outbound (IN-7c), what the MTA (`mta.py`) put in the gateway's MTS-OUT
folder is translated back into a memo and delivered to the foreign system (gateway event 1003), one memo
in each recipient's mail file, named after the message: delivering the same message again after a
crash replaces a memo, it never adds a second one.

The gateway is a service an administrator can stop: a stopped gateway takes no memos from the foreign
system and delivers none, while the MTA keeps putting what is for it into MTS-OUT; started again, it
delivers what waits there.

The MTA queue and the SMTP service's MTS-OUT queue are real stages: the message rests in each as a
file, Queue Viewer lists both (`queue_contract.X400_QUEUES`), and an administrator can freeze either, so
that the message stays there until the queue is unfrozen. When the server starts, what the folders
hold goes on from where it rests (`NotesGateway.recover`).

The memo format is the foreign system's own, not MIME: `Key: value` header lines (From, SendTo,
CopyTo, Subject, PostedDate), then a line `Body:`, then the text. Each folder holds one file per item,
written durably, so a crash at any step loses nothing.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage, MIMEPart
from email.policy import SMTP
from pathlib import Path
from urllib.parse import quote, unquote

from reference_mta import crash_points, durable, mta, replies, tracking
from reference_mta.directory import Directory, proxy_filter
from reference_mta.mailmsg import MailMsg, Recipient, encapsulate
from reference_mta.moves import Moves
from reference_mta.queue_contract import (
    GATEWAY_FOLDERS,
    X400_MTA,
    X400_MTS_OUT,
    ComponentUnavailable,
    QueueState,
)
from reference_mta.topology import Connector, Organization


class GatewayBusy(ValueError):
    """A temporary refusal: the foreign system should hand the memo over again later."""


class MemoError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass
class Memo:
    sender: str
    send_to: list[str]
    subject: str = ""
    body: str = ""
    copy_to: list[str] = field(default_factory=list)
    posted: str = ""


def parse_memo(data: bytes) -> Memo:
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    fields: dict[str, str] = {}
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if line.strip() == "Body:":
            body = "\n".join(lines[number:])
            break
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise MemoError(number, f"expected 'Field: value' or 'Body:', found {line!r}")
        fields[key.strip().lower()] = value.strip()
    else:
        raise MemoError(len(lines), "no 'Body:' line")
    if not fields.get("from"):
        raise MemoError(1, "the memo has no From")
    names = _names(fields.get("sendto", ""))
    if not names:
        raise MemoError(1, "the memo has no SendTo")
    return Memo(
        fields["from"],
        names,
        fields.get("subject", ""),
        body,
        _names(fields.get("copyto", "")),
        fields.get("posteddate", ""),
    )


def render_memo(memo: Memo) -> bytes:
    lines = [f"From: {memo.sender}", f"SendTo: {', '.join(memo.send_to)}"]
    if memo.copy_to:
        lines.append(f"CopyTo: {', '.join(memo.copy_to)}")
    lines += [
        f"Subject: {memo.subject}",
        f"PostedDate: {memo.posted or email.utils.formatdate()}",
        "Body:",
        memo.body,
    ]
    return "\n".join(lines).encode()


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.replace(";", ",").split(",") if name.strip()]


Submit = Callable[[MailMsg, bytes], Awaitable[None]]


@dataclass(frozen=True)
class _Stage:
    """A folder an inbound message rests in, the event logged when it gets there (none for MTS-IN:
    Exchange logs nothing for the translation) and the queue name Queue Viewer shows for it."""

    folder: Path
    event: int | None
    spec: str
    label: str  # the tracking log's queue field
    queue: str


@dataclass
class _Inbound:
    """A translated message on its way from MTS-IN to AQ: the envelope AQ will get, and its content."""

    item: str
    msg: MailMsg
    content: bytes
    stage: int = 0  # index into NotesGateway.stages of the folder it rests in


class NotesGateway:
    def __init__(
        self,
        organization: Organization,
        server: str,
        connector: Connector,
        root: Path,
        directory: Directory,
        base_dn: str,
        log: tracking.TrackingLog,
        submit: Submit,
        frozen: set[str] | None = None,
    ) -> None:
        self.organization = organization
        self.connector = connector
        self.directory = directory
        self.base_dn = base_dn
        self.tracking = log
        self.submit = submit
        self.address_type = connector.address_spaces[0].type if connector.address_spaces else "NOTES"
        # A foreign sender the directory does not know gets an IMCEA address in this domain.
        self.encapsulation_domain = connector.smtp_domain or organization.primary_domain
        base = root / server / "gateways" / connector.name
        self.in_folder, self.mts_in, self.mts_out = base / "IN", base / "MTS-IN", base / "MTS-OUT"
        self.mta_queue = root / server / "MTA" / "queue"
        self.smtp_mts_out = root / server / "Mailroot" / "vsi 1" / "MTS-OUT"
        self.foreign = root / "foreign" / (connector.foreign_system or connector.name)
        for folder in (self.in_folder, self.mts_in, self.mta_queue, self.smtp_mts_out, self.mts_out):
            folder.mkdir(parents=True, exist_ok=True)
        self.foreign.mkdir(parents=True, exist_ok=True)
        in_folder, mts_in, mts_out = (f"{connector.name} {folder}" for folder in GATEWAY_FOLDERS)
        # GW-2, GW-3 and GW-4: the folders a translated message passes through before AQ takes it.
        self.stages = (
            _Stage(self.mts_in, None, "GW-2", "MTS-IN", mts_in),
            _Stage(self.mta_queue, tracking.MTA_TRANSFER_IN, "GW-3", "MTA", X400_MTA),
            _Stage(self.smtp_mts_out, tracking.MTA_TRANSFER_OUT, "GW-4", "MTS-OUT", X400_MTS_OUT),
        )
        self._queues = {in_folder: self.in_folder, **{s.queue: s.folder for s in self.stages}}
        self._queues[mts_out] = self.mts_out
        # The X.400 queues an administrator froze: the server's, shared by its gateways; the server
        # changes it, and calls `release` on unfreezing one.
        self.frozen = frozen if frozen is not None else set()
        self._inbound: dict[str, _Inbound] = {}  # on its way to AQ, by item name
        self._parked: dict[str, _Inbound] = {}  # resting in a frozen queue
        self.moves = Moves()
        self.running = True  # the gateway service; stopped by an administrator with `stop_service`
        self._delivering: set[str] = set()  # MTS-OUT items on their way to the foreign system

    def outlet(self) -> mta.Outlet:
        """Where the MTA puts what is for this gateway, and how it tells the gateway."""
        return mta.Outlet(self.mts_out, "MTS-OUT", self.collect)

    # --- inbound ---------------------------------------------------------------------------------

    async def receive(self, data: bytes) -> str:
        """GW-1: the foreign system hands over a memo; it is durable in the IN folder on return."""
        memo = parse_memo(data)  # a memo the gateway cannot read is refused at the door
        if not self.running:
            raise GatewayBusy(f"the {self.connector.name} service is stopped")
        try:
            await asyncio.to_thread(self._smtp_of, memo.sender)
        except ComponentUnavailable as exc:
            # Without the directory nothing can be mapped: the foreign system keeps the memo and tries
            # again later, rather than the gateway holding one it cannot move (docs/decisions.md).
            raise GatewayBusy(f"the gateway cannot map addresses now: {exc}") from exc
        item = uuid.uuid4().hex
        await asyncio.to_thread(durable.write, self.in_folder / f"{item}.memo", data)
        self._log(tracking.GATEWAY_TRANSFER_IN, memo.sender, memo.send_to, "GW-1", "IN", item)
        await self._transfer(item, memo)
        return item

    async def _transfer(self, item: str, memo: Memo) -> None:
        sender = self._smtp_of(memo.sender) or encapsulate(
            self.address_type, memo.sender, self.encapsulation_domain
        )
        mapped: list[str] = []
        unmapped: list[str] = []
        for name in memo.send_to + memo.copy_to:
            address = self._smtp_of(name)
            (mapped if address else unmapped).append(address or name)
        if unmapped:
            await self._report(item, memo, unmapped)
        if not mapped:
            await asyncio.to_thread((self.in_folder / f"{item}.memo").unlink)
            return
        message_id = f"{item}@{self.connector.name.replace(' ', '-').lower()}.gateway"
        content = _mime(memo, sender, mapped, message_id)
        inbound = _Inbound(item, self._envelope(sender, mapped, memo, message_id, len(content)), content)
        self._inbound[item] = inbound
        with self.moves.busy():
            # GW-2: translated and mapped, into MTS-IN (new bytes: written before the memo goes).
            await asyncio.to_thread(durable.write, self.mts_in / f"{item}.eml", content)
            await asyncio.to_thread((self.in_folder / f"{item}.memo").unlink)
            self._arrived(inbound)
            await self._advance(inbound)

    def _envelope(self, sender: str, mapped: list[str], memo: Memo, message_id: str, size: int) -> MailMsg:
        return MailMsg.new(
            sender,
            mapped,
            RFC822_MSG_ID=message_id,
            RFC822_MSG_SUBJECT=memo.subject,
            MSG_SIZE_HINT=size,
            ORG_INTERNAL=True,
            HELO_DOMAIN="MTA",
            SOURCE_ADDRESS_TYPE=self.address_type,
            FOREIGN_SENDER=memo.sender,
        )

    def recover(self, handed_over: Callable[[str], bool]) -> None:
        """At start: what a stopped gateway left in its folders goes on from where it rests. A message
        whose Message-ID AQ already holds (`handed_over`) or logged as submitted was handed over just
        before the stop and is only removed, so that no one gets it twice."""
        submitted = {
            str(event["msgid"])
            for event in tracking.read_events(self.tracking.directory.parent, self.tracking.server)
            if event["event-id"] == tracking.SUBMITTED_FROM_STORE
        }
        translated = {path.stem for stage in self.stages for path in stage.folder.glob("*.eml")}
        for index, stage in enumerate(self.stages):
            for path in sorted(stage.folder.glob("*.eml")):
                inbound = self._read_inbound(path, index)
                if inbound.msg.message_id in submitted or handed_over(inbound.msg.message_id):
                    path.unlink()
                    continue
                self._inbound[inbound.item] = inbound
                self.moves.spawn(self._advance(inbound))
        for path in sorted(self.in_folder.glob("*.memo")):
            if path.stem in translated:
                path.unlink()  # translated before the stop: the memo's work is done
            else:
                self.moves.spawn(self._retranslate(path))
        self._recover_outbound()

    def _read_inbound(self, path: Path, stage: int) -> _Inbound:
        """The envelope again, from the translated message: its From, To and Cc are the mapped ones."""
        content = path.read_bytes()
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        sender = email.utils.parseaddr(str(parsed.get("From", "")))[1]
        addresses = email.utils.getaddresses(
            [str(v) for v in parsed.get_all("To", []) + parsed.get_all("Cc", [])]
        )
        mapped = list(dict.fromkeys(address for _, address in addresses if address))
        memo = Memo(str(parsed.get("X-Foreign-Sender", "")), [], str(parsed.get("Subject", "")))
        message_id = str(parsed.get("Message-ID", "")).strip().strip("<>")
        return _Inbound(
            path.stem, self._envelope(sender, mapped, memo, message_id, len(content)), content, stage
        )

    async def _retranslate(self, path: Path) -> None:
        memo = parse_memo(await asyncio.to_thread(path.read_bytes))
        await self._transfer(path.stem, memo)

    def _arrived(self, inbound: _Inbound) -> None:
        stage = self.stages[inbound.stage]
        if stage.event is None:
            return
        recipients = [r.address for r in inbound.msg.recipients]
        self._log(
            stage.event, inbound.msg.sender, recipients, stage.spec, stage.label, inbound.msg.message_id
        )

    async def _advance(self, inbound: _Inbound) -> None:
        """GW-3, GW-4 and GW-5: the store driver moves the message on, one queue at a time, and gives it
        to AQ; it stops in a frozen queue, where it rests until the queue is unfrozen."""
        while True:
            here = self.stages[inbound.stage]
            if here.queue in self.frozen:
                self._parked[inbound.item] = inbound
                return
            path = here.folder / f"{inbound.item}.eml"
            if inbound.stage + 1 == len(self.stages):
                break
            inbound.stage += 1
            # The same bytes move on: a rename, so the message is in exactly one queue at any time.
            await asyncio.to_thread(durable.move, path, self.stages[inbound.stage].folder / path.name)
            self._arrived(inbound)
        await self.submit(inbound.msg, inbound.content)  # GW-5: AQ makes it durable before this returns
        await asyncio.to_thread(path.unlink)
        del self._inbound[inbound.item]

    def release(self, queue: str) -> None:
        """An X.400 queue was unfrozen (taken out of `frozen`): what rests in it moves on at once."""
        for item, inbound in list(self._parked.items()):
            if self.stages[inbound.stage].queue == queue and queue not in self.frozen:
                del self._parked[item]
                self.moves.spawn(self._advance(inbound))

    async def stop(self) -> None:
        """The moves under way end where they are: each message rests in one folder, for `recover`."""
        await self.moves.cancel()

    def idle(self) -> bool:
        """Nothing is on its way: a message in a frozen queue waits for an administrator."""
        return self.moves.idle()

    def _smtp_of(self, foreign: str) -> str | None:
        found = self.directory.search(
            self.base_dn, proxy_filter(self.address_type, foreign), ("mail", "proxyAddresses")
        )
        if len(found) != 1:
            return None
        entry = found[0]
        if entry.first("mail"):
            return entry.first("mail")
        return next((p[5:] for p in entry.all("proxyAddresses") if p.startswith("SMTP:")), None)

    async def _report(self, item: str, memo: Memo, unmapped: list[str]) -> None:
        """A non-delivery memo back to the foreign sender for names the directory does not know."""
        report = Memo(
            sender=f"Mail Router/{self.organization.name}",
            send_to=[memo.sender],
            subject=replies.gateway_failure_subject(memo.subject),
            body=replies.gateway_failure_body(unmapped),
        )
        await asyncio.to_thread(self._deliver_foreign, report, f"{item}-report")
        self._log(tracking.GATEWAY_REPORT, memo.sender, unmapped, "GW-2", "IN", "")

    def folders(self) -> dict[str, list[dict[str, object]]]:
        """The gateway's folders and the X.400 queues behind it, as Queue Viewer lists X.400 queues."""
        return {
            name: [self._row(name, path) for path in sorted(folder.glob("*.*")) if self._listed(folder, path)]
            for name, folder in self._queues.items()
        }

    def _listed(self, folder: Path, path: Path) -> bool:
        if folder == self.mts_out:
            # The MTA moves an item's envelope last (reference_mta/mta.py): until then the item is
            # still in the MTA's queue, and listing its content here would show it in both.
            return path.suffix == ".json"
        return path.suffix in (".memo", ".eml")

    def _row(self, queue: str, path: Path) -> dict[str, object]:
        inbound = self._inbound.get(path.stem)
        msg = inbound.msg if inbound is not None else None
        if path.parent == self.mts_out and (held := mta.read_item(self.mts_out, path.stem)) is not None:
            msg = held[0]
        return {
            "id": path.stem,
            "msgid": msg.message_id if msg else "",
            "sender": msg.sender if msg else "",
            "recipients": [r.address for r in msg.recipients] if msg else [],
            "attempts": 0,
            "state": QueueState.FROZEN if queue in self.frozen else QueueState.READY,
            "next_retry": None,
        }

    # --- outbound --------------------------------------------------------------------------------

    def collect(self, item: str) -> None:
        """The MTA put `item` in MTS-OUT: a running gateway delivers it; a stopped one leaves it there."""
        if self.running and item not in self._delivering:
            self._delivering.add(item)
            self.moves.spawn(self._deliver_out(item))

    def stop_service(self) -> None:
        """The administrator stops the gateway service: what is under way finishes, nothing new starts."""
        self.running = False

    def start_service(self) -> None:
        """Started again: what waits in MTS-OUT is delivered now."""
        self.running = True
        for envelope in sorted(self.mts_out.glob("*.json")):
            self.collect(envelope.stem)

    def _recover_outbound(self) -> None:
        """At start: what MTS-OUT holds is delivered. A content file without its envelope is what a
        delivery cut short left behind (the envelope goes first, `_deliver_out`): the MTA has finished
        its own moves cut short by now (`mta.MessageTransferAgent.recover` runs first). Only here, not
        while the MTA runs, where such a file is half of a move under way."""
        for envelope in sorted(self.mts_out.glob("*.json")):
            self.collect(envelope.stem)
        for content in self.mts_out.glob("*.eml"):
            if not content.with_suffix(".json").exists():
                content.unlink()

    async def _deliver_out(self, item: str) -> None:
        """What the MTA put in MTS-OUT goes to the foreign system as a memo, one in each recipient's
        mail file under the message's name; then it leaves MTS-OUT. A failure part way leaves it in
        MTS-OUT, for the next start: the memos written already are written again, not added to."""
        try:
            held = await asyncio.to_thread(mta.read_item, self.mts_out, item)
            if held is None:
                return  # delivered already
            msg, content = held
            memo = self._memo_of(msg, content)
            try:
                await asyncio.to_thread(self._deliver_foreign, memo, msg.id)
            except OSError:
                return  # the foreign system did not take it: it stays in MTS-OUT
            crash_points.reached(crash_points.GATEWAY_MEMOS_WRITTEN)
            self.tracking.log(
                tracking.GATEWAY_TRANSFER_OUT,
                msg,
                None,
                "IN-7c",
                partner=self.address_type,
                queue=self.connector.name,
            )
            # Collected from MTS-OUT: the foreign system has it now. The envelope goes first, so that
            # the content file left by a crash here is known for a leftover (`_recover_outbound`).
            for suffix in (".json", ".eml"):
                await asyncio.to_thread((self.mts_out / f"{item}{suffix}").unlink, missing_ok=True)
        finally:
            self._delivering.discard(item)

    def _memo_of(self, msg: MailMsg, content: bytes) -> Memo:
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        body = parsed.get_body(preferencelist=("plain",))
        text = _plain_text(body) if body is not None else ""
        # A report (null sender) is from the organization's postmaster, as its From header says.
        sender = (
            msg.sender
            or email.utils.parseaddr(str(parsed.get("From", "")))[1]
            or f"postmaster@{self.organization.primary_domain}"
        )
        return Memo(
            sender=sender,
            send_to=[r.address for r in msg.recipients],
            subject=str(parsed.get("Subject", "")),
            body=str(text),
        )

    def _deliver_foreign(self, memo: Memo, name: str) -> None:
        """One memo in each recipient's mail file, named `name`: written again, it replaces the first."""
        for recipient in memo.send_to:
            folder = self.foreign / _folder_name(recipient)
            folder.mkdir(parents=True, exist_ok=True)
            durable.write(folder / f"{name}.memo", render_memo(memo))

    def _log(self, event: int, sender: str, recipients: list[str], spec: str, queue: str, msgid: str) -> None:
        msg = MailMsg(
            sender=sender,
            recipients=[Recipient(address=r, original=r) for r in recipients],
            properties={"RFC822_MSG_ID": msgid},
        )
        self.tracking.log(event, msg, None, spec, partner=self.address_type, queue=queue)


def read_foreign_deliveries(root: Path) -> list[dict[str, object]]:
    """Every memo a foreign system of the lab received: system, mailbox name, memo fields."""
    found: list[dict[str, object]] = []
    for path in sorted((root / "foreign").glob("*/*/*.memo"), key=lambda p: p.stat().st_mtime):
        memo = parse_memo(path.read_bytes())
        found.append(
            {
                "system": path.parents[1].name,
                "mailbox": unquote(path.parent.name),
                "sender": memo.sender,
                "recipients": memo.send_to,
                "path": str(path),
            }
        )
    return found


def _folder_name(name: str) -> str:
    return quote(name, safe=" ")


def _mime(memo: Memo, sender: str, recipients: list[str], message_id: str) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = f"{memo.sender} <{sender}>"
    message["To"] = ", ".join(recipients[: len(memo.send_to)]) or ", ".join(recipients)
    if recipients[len(memo.send_to) :]:
        message["Cc"] = ", ".join(recipients[len(memo.send_to) :])
    message["Subject"] = memo.subject
    message["Date"] = email.utils.formatdate()
    message["Message-ID"] = f"<{message_id}>"
    message["X-Foreign-Sender"] = memo.sender
    message.set_content(memo.body)
    return message.as_bytes()


def _plain_text(body: MIMEPart) -> str:
    """The text a memo carries. A charset Python does not know (or a body that does not decode) must not
    keep the message in MTS-OUT for ever: its bytes are then read as UTF-8, unknown ones replaced."""
    try:
        return str(body.get_content())
    except (LookupError, ValueError):
        payload = body.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)
