"""Advanced queuing engine (AQ): the queues every message passes through, and the only way components
hand work to each other.

Theory of operation. SMTP and the store driver `submit()` a MAILMSG; AQ makes it durable (content and
envelope fsync'd, then the directory entry fsync'd) before submit returns, so the 250 reply is never
given for a message that a crash could lose. From then on the envelope lives in exactly one named
queue at a time, and each move rewrites its envelope file atomically:

    Messages pending submission → Messages awaiting directory lookup (categorizer)
        → Local delivery (store driver)                              → delivered
        → Messages waiting to be routed (routing engine) → <next hop> link queue (SMTP / gateway)
        → Final destination currently unreachable
    failed recipients → DSN messages pending submission → a new NDR message is submitted

When the categorizer splits recipients between destinations, AQ bifurcates the envelope: each part is a
new envelope over the same content file. The components themselves are plain callables given to AQ by
the server that wires them (`queue_contract.Components`); none of them calls another, and none imports
this module. The queue folder on disk is `queue_store`'s.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from typing import Any

from reference_mta import crash_points, replies, tracking
from reference_mta.mailmsg import MailMsg, Recipient
from reference_mta.queue_contract import (
    BADMAIL,
    DEFERRED_DELIVERY,
    DEFERRED_DELIVERY_TIME,
    DIRECTORY_LOOKUP,
    DSN_PENDING,
    LOCAL_DELIVERY,
    PENDING_SUBMISSION,
    RETRY,
    SYSTEM_QUEUES,
    TO_BE_ROUTED,
    UNREACHABLE,
    WAITS_FOR_AN_EVENT,
    Components,
    ComponentUnavailable,
    Hop,
    HopKind,
    QueueState,
    RetryPolicy,
    SubmissionSource,
)
from reference_mta.queue_store import Entry, QueueDirectory

log = logging.getLogger(__name__)

_CLOCK_SLACK = 0.05  # seconds
# Marks an administrator's or a remote host's release leaves on a message: Force Connection sends it
# although its connector's schedule is closed, ETRN opens the session its remote-triggered queue holds
# back. Each is used once, by the attempt it released.
_FORCED = "FORCE_CONNECTION"
_TRIGGERED = "REMOTE_TRIGGERED"
# Each recipient's catalogue ID from its last routing decision, by address: the recipients of one link
# queue's envelope may have been routed there for different reasons, and tracking shows each its own.
_ROUTE_SPECS = "ROUTE_SPECS"


def _by_reason(recipients: list[Recipient], hops: list[Hop]) -> dict[tuple[str, str], list[Recipient]]:
    """The recipients of one envelope by the reason (catalogue ID, sentence) routing gave each."""
    reasons: dict[tuple[str, str], list[Recipient]] = defaultdict(list)
    for recipient, hop in zip(recipients, hops, strict=True):
        reasons[(hop.spec, hop.detail)].append(recipient)
    return reasons


def _by_spec(msg: MailMsg, recipients: list[Recipient], hop: Hop) -> dict[str, list[Recipient]]:
    """The recipients by the catalogue ID their routing decision logged (the hop's, for an envelope
    written before these were kept)."""
    specs: dict[str, str] = msg.properties.get(_ROUTE_SPECS) or {}
    found: dict[str, list[Recipient]] = defaultdict(list)
    for recipient in recipients:
        found[specs.get(recipient.address.lower(), hop.spec)].append(recipient)
    return found


# The sender was told of a delay (one notice per message): kept in the envelope, so a restart keeps it.
_DELAY_NOTIFIED = "DELAY_NOTIFIED"


class AdvancedQueuingEngine:
    def __init__(
        self,
        server: str,
        directory: QueueDirectory,
        log_: tracking.TrackingLog,
        retry: RetryPolicy | None = None,
        remote_links: frozenset[str] = frozenset(),
    ) -> None:
        self.server = server
        self.directory = directory
        self.tracking = log_
        self.retry = retry or RetryPolicy()
        self.components: Components | None = None
        self.entries: dict[str, Entry] = {}
        self._content_refs: dict[str, int] = defaultdict(int)
        self._work: asyncio.Queue[str] = asyncio.Queue()
        self._links: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy = 0
        self._runner: asyncio.Task[None] | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.frozen: set[str] = set()  # link queues an administrator froze (lower-case names)
        # Link queues (lower case) of connectors set to "Queue mail for remote triggered delivery", and
        # the envelopes an ETRN has released from them (each goes once; a retry waits for the next ETRN).
        self.remote_links = remote_links
        self._link_changes = 0
        self._nudges: dict[str, int] = {}  # retry_now calls per queue, to catch one during a park
        self._delay_notified: set[str] = set()  # content ids: one delay notice per message, not per part

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, components: Components, *, process: bool = True) -> None:
        """Load the queue folder; with `process`, begin working on it at once (else at `begin`)."""
        self.components = components
        for entry in self.directory.load():
            # Recovery: whatever was on disk when the service stopped resumes from its queue.
            self.entries[entry.msg.id] = entry
            self._content_refs[self._content_id(entry.msg)] += 1
            if entry.msg.properties.get(_DELAY_NOTIFIED):
                self._delay_notified.add(self._content_id(entry.msg))
            self._schedule(entry)
        if process:
            self.begin()

    def begin(self) -> None:
        """Start dispatching what waits. Apart from `start` so that a lab starting several servers lets
        none work on its backlog (and defer it to a peer not yet listening) before all of them listen."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        tasks = [t for t in (self._runner, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def idle(self, horizon: float | None = None) -> bool:
        """No envelope is being worked on or waiting for work. A parked envelope (retry, unreachable)
        waits for time; with a `horizon` (a time.time() value) one in the retry queue whose next attempt
        falls before it still counts as work to come."""
        if self._busy or not self._work.empty():
            return False
        for entry in self.entries.values():
            if entry.state in (QueueState.FROZEN, QueueState.REMOTE, QueueState.SCHEDULED):
                continue  # waits for an administrator, the remote host or the connector's schedule
            if entry.state != QueueState.RETRY:
                return False
            # Unreachable destinations wait for link state and directory look-ups for the directory, not
            # for a retry worth waiting for.
            if horizon is not None and entry.queue not in WAITS_FOR_AN_EVENT and entry.next_retry <= horizon:
                return False
        return True

    def retry_now(self, queue: str) -> None:
        """What waits in `queue` (e.g. for the directory to come back) is tried again at once."""
        self._nudges[queue] = self._nudges.get(queue, 0) + 1
        for entry in self.entries.values():
            if entry.queue == queue and entry.state == QueueState.RETRY:
                entry.queue, entry.state = entry.resume, QueueState.READY
                self._work.put_nowait(entry.msg.id)

    def freeze(self, queue: str) -> None:
        """Queue Viewer's Freeze: the link queue keeps its messages and takes new ones, sends none."""
        self.frozen.add(queue.lower())

    def unfreeze(self, queue: str) -> None:
        self.frozen.discard(queue.lower())
        for entry in self.entries.values():
            if entry.state == QueueState.FROZEN and entry.queue.lower() == queue.lower():
                entry.state = QueueState.READY  # and routed again first if link state changed meanwhile
                self._work.put_nowait(entry.msg.id)

    def trigger(self, queue: str) -> int:
        """The remote host asked for its mail (ETRN): what waits in state Remote in the link queue
        `queue` goes now. The number of messages released."""
        waiting = [
            entry
            for entry in self.entries.values()
            if entry.state == QueueState.REMOTE and entry.queue.lower() == queue.lower()
        ]
        for entry in waiting:
            # A mark on the message, not on this envelope: routed again (link state changed), its parts
            # keep it.
            entry.msg.properties[_TRIGGERED] = True
            entry.state = QueueState.READY
            self._work.put_nowait(entry.msg.id)
        return len(waiting)

    def force_connection(self, queue: str) -> int:
        """Queue Viewer's Force Connection: what waits in link queue `queue` for its schedule or its next
        retry is sent now (Scheduled or Retry → Active); later messages wait for the schedule again.
        Returns how many messages it released."""
        released = 0
        for entry in self.entries.values():
            if entry.queue.lower() == queue.lower() and entry.state in (
                QueueState.SCHEDULED,
                QueueState.RETRY,
            ):
                entry.msg.properties[_FORCED] = True  # kept by the parts if it is routed again
                timer = self._timers.pop(entry.msg.id, None)
                if timer is not None:
                    timer.cancel()
                if entry.state == QueueState.RETRY:
                    entry.queue = entry.resume
                entry.state = QueueState.READY
                self._work.put_nowait(entry.msg.id)
                released += 1
        return released

    def _schedule_opens(self, queue: str) -> None:
        for entry in self.entries.values():
            if entry.queue.lower() == queue.lower() and entry.state == QueueState.SCHEDULED:
                entry.state = QueueState.READY
                self._work.put_nowait(entry.msg.id)

    def link_state_changed(self) -> None:
        """Link state changed: what waits for an unreachable destination is routed again now, and what
        waits in a link queue (or a frozen one) is routed again before it is sent."""
        self._link_changes += 1
        for entry in self.entries.values():
            if entry.queue == UNREACHABLE and entry.state == QueueState.RETRY:
                entry.queue, entry.state = entry.resume, QueueState.READY
                self._work.put_nowait(entry.msg.id)
            elif entry.hop is not None and entry.state in (
                QueueState.READY,
                QueueState.FROZEN,
                QueueState.SCHEDULED,
                QueueState.REMOTE,
            ):
                entry.reroute = True

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        queues: dict[str, list[dict[str, Any]]] = {name: [] for name in SYSTEM_QUEUES}
        for entry in self.entries.values():
            queues.setdefault(entry.queue, []).append(
                {
                    "id": entry.msg.id,
                    "msgid": entry.msg.message_id,
                    "sender": entry.msg.sender,
                    "recipients": [r.address for r in entry.msg.recipients],
                    "attempts": entry.attempts,
                    "state": entry.state,
                    "next_retry": entry.next_retry if entry.state == QueueState.RETRY else None,
                }
            )
        return queues

    # --- submission ------------------------------------------------------------------------------

    async def submit(self, msg: MailMsg, content: bytes, *, source: SubmissionSource = "smtp") -> None:
        """Make the message durable and queue it. Returns only once it is safe to acknowledge."""
        entry = self._entry_of(msg, content)
        await asyncio.to_thread(self.directory.submit, entry, content)
        self._register(entry)
        self._submitted(entry, source)

    def _entry_of(self, msg: MailMsg, content: bytes) -> Entry:
        msg.properties["CONTENT_ID"] = uuid.uuid4().hex
        msg.properties.setdefault("MSG_SIZE_HINT", len(content))
        return Entry(msg, PENDING_SUBMISSION)

    async def _new_message(self, msg: MailMsg, content: bytes) -> Entry:
        """A new message's content on disk; its envelope is written by the step that submits it (until
        then the content is no envelope's, and a restart removes it)."""
        entry = self._entry_of(msg, content)
        await asyncio.to_thread(self.directory.write_content, self._content_id(msg), content)
        return entry

    def _submitted(self, entry: Entry, source: SubmissionSource) -> None:
        msg = entry.msg
        through_store = source in ("store", "gateway")  # the store driver submits both
        first = tracking.SUBMITTED_FROM_STORE if through_store else tracking.SUBMIT_TO_AQ
        spec = {"store": "OUT-2a", "gateway": "GW-5", "dsn": "C-AQ"}.get(source, "IN-4")
        self.tracking.log(first, msg, None, spec, queue=PENDING_SUBMISSION)
        if through_store:
            self.tracking.log(tracking.SUBMIT_TO_AQ, msg, None, "C-AQ", queue=PENDING_SUBMISSION)
        self.tracking.log(tracking.BEGIN_SUBMIT, msg, None, "C-AQ", queue=PENDING_SUBMISSION)
        self._work.put_nowait(msg.id)

    # --- the pipeline ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            envelope_id = await self._work.get()
            entry = self.entries.get(envelope_id)
            if entry is not None:
                self._spawn(entry)

    def _spawn(self, entry: Entry) -> None:
        async def tracked() -> None:
            self._busy += 1
            try:
                await self._process(entry)
            except Exception as exc:
                # A component failed unexpectedly: the message is parked in the failed message retry
                # queue, never dropped, and the failure is in the event log and the tracking detail.
                log.exception("%s: AQ failure processing %s in %s", self.server, entry.msg.id, entry.queue)
                self.tracking.log(
                    tracking.AQ_FAILURE,
                    entry.msg,
                    None,
                    "C-AQ",
                    queue=RETRY,
                    detail=f"{exc.__class__.__name__}: {exc}",
                )
                if self.entries.get(entry.msg.id) is entry:  # not if it was finished before the failure
                    resume = TO_BE_ROUTED if entry.hop is not None else entry.queue
                    await self._park(entry, entry.msg.recipients, RETRY, resume=resume, error=str(exc))
            finally:
                self._busy -= 1

        task = asyncio.get_running_loop().create_task(tracked())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, entry: Entry) -> None:
        assert self.components is not None
        if entry.queue == PENDING_SUBMISSION:
            if await self._deferred(entry):
                return
            # In memory only: the categorization's own commit replaces this envelope (or parks it in
            # this queue), and one cut short by a crash starts again from the submission queue, the same
            # way. Written, it was a file and two fsyncs more per message for nothing a restart needs.
            entry.queue = DIRECTORY_LOOKUP
            self.tracking.log(tracking.SUBMIT_TO_CAT, entry.msg, None, "C-CAT", queue=DIRECTORY_LOOKUP)
            await self._categorize(entry)
        elif entry.queue == DIRECTORY_LOOKUP:
            await self._categorize(entry)
        elif entry.queue == LOCAL_DELIVERY:
            await self._deliver_local(entry)
        elif entry.queue == TO_BE_ROUTED:
            await self._route(entry)
        elif entry.queue == DSN_PENDING:
            await self._submit_dsn(entry)
        elif entry.hop is not None:
            await self._deliver_remote(entry)

    async def _deferred(self, entry: Entry) -> bool:
        """A message whose client set a deferred delivery time waits in "Messages queued for deferred
        delivery" until then, before the categorizer sees it (its recipients are resolved as they are at
        the time it goes, not when it was written). Whether it waited."""
        due = entry.msg.properties.get(DEFERRED_DELIVERY_TIME)
        # The timer that wakes it fires at the due time on the loop's clock; a few milliseconds of
        # difference from the wall clock must not park it again.
        if due is None or float(due) - time.time() <= _CLOCK_SLACK:
            return False
        entry.queue, entry.resume, entry.next_retry = DEFERRED_DELIVERY, PENDING_SUBMISSION, float(due)
        # Saved as Retry first, as _park does: a wake-up cannot overtake the write.
        await asyncio.to_thread(self.directory.save, replace(entry, state=QueueState.RETRY))
        entry.state = QueueState.RETRY
        self._wake_later(entry)
        return True

    async def _categorize(self, entry: Entry) -> None:
        assert self.components is not None
        msg = entry.msg
        before = copy.deepcopy(msg.recipients), dict(msg.properties)
        # Counted before the look-ups, which run in a worker thread: a "directory is back" that comes
        # while they fail, before the park, must still wake this message.
        nudges = self._nudges.get(DIRECTORY_LOOKUP, 0)
        try:
            await self.components.categorize(msg)
        except ComponentUnavailable as exc:
            # The global catalog did not answer: the message waits in "Messages awaiting directory
            # lookup" as it was, and is never returned for that reason.
            msg.recipients, msg.properties = before[0], before[1]
            self.tracking.log(tracking.CAT_RETRY, msg, None, "C-CAT", queue=DIRECTORY_LOOKUP, detail=str(exc))
            await self._park(
                entry,
                msg.recipients,
                DIRECTORY_LOOKUP,
                resume=DIRECTORY_LOOKUP,
                error=str(exc),
                expires=False,
                nudged=nudges,
            )
            return
        for original, alternate in msg.properties.pop("REDIRECTIONS", []):
            self.tracking.log(
                tracking.REDIRECTED,
                msg,
                [r for r in msg.recipients if r.address == original],
                "C-CAT",
                detail=f"forwarded to {alternate}",
            )
        failed = msg.pending("failed")
        local = msg.pending("local")
        onward = msg.pending("remote") + msg.pending("gateway")
        resolved = local + onward
        if resolved:
            self.tracking.log(tracking.CATEGORIZED, msg, resolved, "C-CAT", queue=TO_BE_ROUTED)
        dsns = self._ndr_request(entry, failed) if failed else []
        parts = [
            Entry(msg.copy_for(recipients), queue)
            for recipients, queue in ((local, LOCAL_DELIVERY), (onward, TO_BE_ROUTED))
            if recipients
        ]
        await self._commit([*dsns, *parts], entry, crash_points.CATEGORIZED)
        for part in parts:
            if part.queue == LOCAL_DELIVERY:
                self.tracking.log(tracking.QUEUED_LOCAL, part.msg, None, "IN-6a", queue=LOCAL_DELIVERY)
        self._start_each([*dsns, *parts])

    def _by_hop(self, msg: MailMsg) -> list[list[tuple[Recipient, Hop]]]:
        """Each recipient's routing decision, grouped by the hop's key, not by why each was routed
        there: one session carries all of a message's recipients for a link. Each recipient's
        catalogue ID is kept on the message for the tracking events of its transfer."""
        assert self.components is not None
        by_hop: dict[tuple[object, ...], list[tuple[Recipient, Hop]]] = defaultdict(list)
        for recipient in msg.recipients:
            hop = self.components.route(msg, recipient)
            by_hop[hop.key].append((recipient, hop))
        msg.properties[_ROUTE_SPECS] = {
            recipient.address.lower(): hop.spec for routed in by_hop.values() for recipient, hop in routed
        }
        return list(by_hop.values())

    async def _route(self, entry: Entry) -> None:
        assert self.components is not None
        changes = self._link_changes
        # Every decision first, then one commit of every part in place of the original.
        dsns: list[Entry] = []
        parts: list[tuple[list[Hop], Entry]] = []
        for routed in self._by_hop(entry.msg):
            hop = routed[0][1]
            hops = [own for _, own in routed]
            recipients = [recipient for recipient, _ in routed]
            for recipient in recipients:
                recipient.next_hop = hop.queue
            part = Entry(entry.msg.copy_for(recipients), hop.queue, hop)
            if hop.kind == HopKind.NO_ROUTE:
                for recipient, own in zip(part.msg.recipients, hops, strict=True):
                    recipient.fail_with(replies.no_route(own.detail), 0)
                dsns += self._ndr_request(part, part.msg.recipients)
                continue
            if hop.kind == HopKind.UNREACHABLE:
                # On disk as due for routing again at once, should a restart come before it is parked.
                part = Entry(part.msg, UNREACHABLE, None, state=QueueState.RETRY, resume=TO_BE_ROUTED)
            parts.append((hops, part))
        waiting = [part for hops, part in parts if hops[0].kind == HopKind.UNREACHABLE]
        # An unreachable part is Retry on disk (a restart routes it again) but held Active in memory
        # until `_park` has written it: a link state change meanwhile must not route it while it parks.
        await self._commit([*dsns, *(part for _, part in parts)], entry, crash_points.ROUTED, held=waiting)
        self._start_each(dsns)
        for hops, part in parts:
            if hops[0].kind == HopKind.UNREACHABLE:
                continue
            hop = hops[0]
            event = tracking.ROUTED_GATEWAY if hop.kind == HopKind.GATEWAY else tracking.ROUTED_REMOTE
            for (spec, detail), recipients in _by_reason(part.msg.recipients, hops).items():
                self.tracking.log(event, part.msg, recipients, spec, queue=hop.queue, detail=detail)
            self._work.put_nowait(part.msg.id)
        for hops, part in parts:
            if hops[0].kind == HopKind.UNREACHABLE:
                await self._wait_for_link_state(part, hops)
        if self._link_changes != changes:
            self.link_state_changed()  # it changed while we were deciding: decide again

    async def _wait_for_link_state(self, part: Entry, hops: list[Hop]) -> None:
        """A connector or path that is down: the part waits for link state to change, as Exchange does."""
        for recipient in part.msg.recipients:
            # Its latest attempt reached no next hop: an expiry NDR quotes none (dsn.py).
            recipient.remote_reply = recipient.remote_mta = None
        reasons = _by_reason(part.msg.recipients, hops)
        for (_, detail), recipients in reasons.items():
            self.tracking.log(
                tracking.ROUTING_RETRY, part.msg, recipients, "C-RE", queue=UNREACHABLE, detail=detail
            )
        try:
            await self._park(
                part,
                part.msg.recipients,
                UNREACHABLE,
                resume=TO_BE_ROUTED,
                error="; ".join(dict.fromkeys(detail for _, detail in reasons)),
                code=replies.ROUTING_FAILURE,
            )
        except Exception:
            # Its step is committed and the original gone: it waits as it is on disk, Retry.
            part.state = QueueState.RETRY
            self._wake_later(part)
            raise

    async def _deliver_local(self, entry: Entry) -> None:
        assert self.components is not None
        content = await asyncio.to_thread(self.directory.read_content, self._content_id(entry.msg))
        result = await self.components.deliver_local(entry.msg, content)
        if result.delivered:
            crash_points.reached(crash_points.STORE_DELIVERED)
            self.tracking.log(
                tracking.SD_LOCAL_DELIVERY, entry.msg, result.delivered, "IN-6a", partner="STORE"
            )
            self.tracking.log(tracking.LOCAL_DELIVERY, entry.msg, result.delivered, "IN-6a", partner="STORE")
        dsns = self._ndr_request(entry, result.failed) if result.failed else []
        if result.deferred:
            self.tracking.log(tracking.LOCAL_RETRY, entry.msg, result.deferred, "C-AQ", detail=result.error)
            await self._park(
                entry, result.deferred, LOCAL_DELIVERY, resume=LOCAL_DELIVERY, error=result.error, also=dsns
            )
            return
        await self._commit(dsns, entry)
        self._start_each(dsns)

    def _waits_for_schedule(self, entry: Entry) -> bool:
        """The connector's schedule is closed and no Force Connection let this message through: it waits
        in its link queue, Scheduled, until the schedule opens."""
        assert self.components is not None and entry.hop is not None
        if entry.msg.properties.pop(_FORCED, False):
            return False
        wait = self.components.schedule_wait(entry.hop) if self.components.schedule_wait else 0.0
        if wait == 0.0:
            return False
        entry.state = QueueState.SCHEDULED
        if wait is not None:
            asyncio.get_running_loop().call_later(wait, self._schedule_opens, entry.hop.queue)
        return True

    async def _deliver_remote(self, entry: Entry) -> None:
        assert self.components is not None and entry.hop is not None
        lock = self._links.setdefault(entry.hop.queue, asyncio.Lock())
        async with lock:  # one session at a time per link keeps the queue's order
            # Both checked once the link is ours: the queue may have been frozen, or link state may have
            # changed, while this message waited for the session before it.
            if entry.hop.queue.lower() in self.frozen:
                # A frozen link queue still takes new messages; nothing leaves it until it is unfrozen.
                entry.state = QueueState.FROZEN
                return
            if entry.reroute:
                entry.reroute, entry.queue, entry.hop = False, TO_BE_ROUTED, None
                await asyncio.to_thread(self.directory.save, entry)
                self._work.put_nowait(entry.msg.id)
                return
            remote = entry.hop.queue.lower() in self.remote_links
            if remote and not entry.msg.properties.pop(_TRIGGERED, False):
                # Remote triggered delivery: no session is opened until the remote host sends ETRN.
                entry.state = QueueState.REMOTE
                return
            if self._waits_for_schedule(entry):
                return
            entry.state = QueueState.ACTIVE
            content = await asyncio.to_thread(self.directory.read_content, self._content_id(entry.msg))
            # The store driver hands a gateway's or an X.400 connector's message to the MTA.
            if entry.hop.kind in (HopKind.GATEWAY, HopKind.X400):
                self.tracking.log(tracking.SD_GATEWAY_DELIVERY, entry.msg, None, "IN-7c", partner="X400")
            else:
                for spec, recipients in _by_spec(entry.msg, entry.msg.recipients, entry.hop).items():
                    self.tracking.log(
                        tracking.BEGIN_OUTBOUND,
                        entry.msg,
                        recipients,
                        spec,
                        queue=entry.hop.queue,
                        detail=",".join(entry.hop.targets),
                    )
            result = await self.components.deliver_remote(entry.hop, entry.msg, content)
        if result.delivered:
            # The window left open, as in any MTA: the next hop has it, the envelope does not say so yet.
            crash_points.reached(crash_points.NEXT_HOP_ACCEPTED)
        if result.delivered and entry.hop.kind not in (HopKind.GATEWAY, HopKind.X400):
            for spec, recipients in _by_spec(entry.msg, result.delivered, entry.hop).items():
                self.tracking.log(
                    tracking.END_OUTBOUND,
                    entry.msg,
                    recipients,
                    spec,
                    partner=result.partner,
                    queue=entry.hop.queue,
                )
        dsns = self._ndr_request(entry, result.failed) if result.failed else []
        if result.deferred:
            # The link queue shows Retry; the next attempt is routed afresh (link state may have changed).
            await self._park(
                entry, result.deferred, entry.hop.queue, resume=TO_BE_ROUTED, error=result.error, also=dsns
            )
            return
        await self._commit(dsns, entry)
        self._start_each(dsns)

    async def _park(
        self,
        entry: Entry,
        waiting: list[Recipient],
        queue: str,
        *,
        resume: str,
        error: str = "",
        code: str = replies.DELIVERY_TIME_EXPIRED,
        expires: bool = True,
        also: list[Entry] | None = None,
        nudged: int | None = None,
    ) -> None:
        """Park `waiting` recipients in `queue` until their next attempt, which starts in `resume`;
        past the expiration time they fail instead (4.4.7, or `code` for unreachable destinations).
        The envelope on disk then holds only `waiting`, in the same commit as the new envelopes `also`
        (DSN requests of the attempt that parks it). `nudged`: the count of `retry_now(queue)` calls
        when the attempt began, where it did not begin in this task's turn of the loop."""
        new = list(also or [])
        entry.msg.recipients = waiting
        entry.attempts += 1
        arrival = float(entry.msg.properties.get("ARRIVAL_TIME", time.time()))
        if expires and time.time() - arrival > self.retry.expiration:
            for recipient in waiting:
                recipient.fail_with(replies.expired(code, queue, error), 0)
            new += self._ndr_request(entry, waiting)
            await self._commit(new, entry)
            self._start_each(new)
            return
        notice = None
        if (
            time.time() - arrival > self.retry.delay_notification
            and self._content_id(entry.msg) not in self._delay_notified
        ):
            notice = await self._delay_notice(entry, waiting)
        entry.next_retry = time.time() + self.retry.delay(entry.attempts)
        entry.queue, entry.resume = queue, resume
        entry.hop = None if resume == TO_BE_ROUTED else entry.hop
        changes, nudges = self._link_changes, self._nudges.get(queue, 0) if nudged is None else nudged
        if self.entries.get(entry.msg.id) is not entry:
            return  # finished meanwhile: writing it again would bring it back
        # Saved as Retry, but marked Retry in memory only once on disk: a wake-up cannot overtake the
        # write and have a finished message's envelope written again afterwards.
        await self._commit([*new, *([notice] if notice else []), replace(entry, state=QueueState.RETRY)])
        entry.state = QueueState.RETRY
        self._start_each(new)
        if notice is not None:
            self._submitted(notice, "dsn")
        if queue == UNREACHABLE and self._link_changes != changes:
            self.link_state_changed()
        elif self._nudges.get(queue, 0) != nudges:
            self.retry_now(queue)  # what it waited for happened while it was being written
        self._wake_later(entry)

    def _wake_later(self, entry: Entry) -> None:
        def wake() -> None:
            self._timers.pop(entry.msg.id, None)
            if self.entries.get(entry.msg.id) is entry and entry.state == QueueState.RETRY:
                entry.queue, entry.state = entry.resume, QueueState.READY
                self._work.put_nowait(entry.msg.id)

        delay = max(0.0, entry.next_retry - time.time())
        previous = self._timers.pop(entry.msg.id, None)
        if previous is not None:
            previous.cancel()
        self._timers[entry.msg.id] = asyncio.get_running_loop().call_later(delay, wake)

    def _ndr_request(self, entry: Entry, failed: list[Recipient]) -> list[Entry]:
        """Failed recipients: log the NDR event, and the DSN request to commit with the step (none for
        an NDR, or for a DSN request itself, which goes to BadMail)."""
        self.tracking.log(
            tracking.NDR_ALL,
            entry.msg,
            failed,
            "DSN-1",
            detail="; ".join(r.status_text or "" for r in failed),
        )
        if not entry.msg.sender:
            return []  # no NDR for an NDR
        if entry.msg.properties.get("DSN_REQUEST"):
            # The DSN itself could not be made: BadMail, never a DSN about a DSN.
            self.tracking.log(tracking.BAD_MAIL, entry.msg, failed, "DSN-1", queue=BADMAIL)
            return []
        dsn = entry.msg.copy_for([Recipient(**r.__dict__) for r in failed])
        dsn.properties["DSN_REQUEST"] = True
        return [Entry(dsn, DSN_PENDING)]

    async def _delay_notice(self, entry: Entry, waiting: list[Recipient]) -> Entry | None:
        """Once per message, past the delay notification time: the notice that tells the sender it is
        still trying, to be committed with the envelope that records it was sent."""
        self._delay_notified.add(self._content_id(entry.msg))
        entry.msg.properties[_DELAY_NOTIFIED] = True
        if self.components is None or self.components.make_delay_notice is None or not entry.msg.sender:
            return None
        content = await asyncio.to_thread(self.directory.read_content, self._content_id(entry.msg))
        made = self.components.make_delay_notice(entry.msg, waiting, content)
        return None if made is None else await self._new_message(*made)

    async def _submit_dsn(self, entry: Entry) -> None:
        assert self.components is not None
        content = await asyncio.to_thread(self.directory.read_content, self._content_id(entry.msg))
        made = self.components.make_ndr(entry.msg, entry.msg.recipients, content)
        ndr = [] if made is None else [await self._new_message(*made)]
        await self._commit(ndr, entry, crash_points.NDR_SUBMITTED)
        for new in ndr:
            self._submitted(new, "dsn")

    # --- queue bookkeeping -----------------------------------------------------------------------

    async def _commit(
        self,
        outputs: list[Entry],
        done: Entry | None = None,
        point: str | None = None,
        *,
        held: list[Entry] | None = None,
    ) -> None:
        """One queue step, on disk all or nothing (`queue_store`): the `outputs` written, in place of
        `done`. An output AQ does not hold yet joins its queue (`_start_each` sets it going); those
        `held` join it Active, whatever their state on disk, for the step to go on with them."""
        removed = None if done is None else done.msg.id
        await asyncio.to_thread(self.directory.commit, outputs, removed, point)
        for output in outputs:
            if output.msg.id not in self.entries:
                self._register(output)
        for output in held or []:
            output.state = QueueState.ACTIVE
        if done is not None:
            await self._forget(done)

    def _register(self, entry: Entry) -> None:
        self.entries[entry.msg.id] = entry
        self._content_refs[self._content_id(entry.msg)] += 1

    def _start_each(self, entries: list[Entry]) -> None:
        for entry in entries:
            self._work.put_nowait(entry.msg.id)

    async def _forget(self, entry: Entry) -> None:
        self.entries.pop(entry.msg.id, None)
        content_id = self._content_id(entry.msg)
        self._content_refs[content_id] -= 1
        if self._content_refs[content_id] <= 0:
            del self._content_refs[content_id]
            # A crash before this leaves content no envelope refers to: the next start removes it.
            self._delay_notified.discard(content_id)  # the message is gone: nothing left to notify about
            await asyncio.to_thread(self.directory.remove_content, content_id)

    def _schedule(self, entry: Entry) -> None:
        if entry.state == QueueState.RETRY:
            self._wake_later(entry)
        else:
            self._work.put_nowait(entry.msg.id)

    @staticmethod
    def _content_id(msg: MailMsg) -> str:
        value: str = msg.properties["CONTENT_ID"]
        return value
