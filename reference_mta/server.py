"""One Exchange server: wires its SMTP virtual servers, AQ, categorizer, routing engine, store driver,
outbound SMTP and DSN generation together, and runs them on the current event loop.

Everything a server needs from the world around it (where its files go, which DNS server and global
catalog it uses, which port the other hosts listen on) comes in through `Environment`, so the same
server runs inside a lab or, with real LDAP and DNS, on its own.
"""

from __future__ import annotations

import asyncio
import datetime
import email
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reference_mta import dsn
from reference_mta import store as store_driver
from reference_mta.address_book import AddressBook
from reference_mta.categorizer import Categorizer
from reference_mta.connector_restrictions import priority_of
from reference_mta.delivery import SmtpDelivery, make_resolver
from reference_mta.directory import Directory
from reference_mta.gateway import NotesGateway
from reference_mta.linkstate import LinkState
from reference_mta.mailmsg import MailMsg, Recipient
from reference_mta.mta import MessageTransferAgent, x400_outlet
from reference_mta.queue_contract import (
    DEFERRED_DELIVERY_TIME,
    X400_QUEUES,
    Components,
    ComponentUnavailable,
    DeliveryResult,
    Hop,
    HopKind,
    RetryPolicy,
)
from reference_mta.queue_store import QueueDirectory
from reference_mta.queuing import AdvancedQueuingEngine
from reference_mta.route_action import RouteActions
from reference_mta.routing import RoutingEngine
from reference_mta.smtp_server import Authenticator, VirtualServerHandler
from reference_mta.topology import Organization
from reference_mta.tracking import TrackingLog


@dataclass(frozen=True)
class Environment:
    root: Path
    dns_address: str
    dns_port: int
    smtp_port: int  # where the other hosts' SMTP services listen
    directory: Callable[[str], Directory]  # a GC connection for the named server
    base_dn: str
    authenticate: Authenticator | None = None
    retry: RetryPolicy | None = None
    link_state: LinkState | None = None  # shared by the organization's servers; one of its own if None
    tls_context: Callable[[str], ssl.SSLContext] | None = None  # server FQDN → its certificate's context


class ExchangeServer:
    def __init__(self, organization: Organization, name: str, environment: Environment) -> None:
        self.organization = organization
        self.config = organization.server(name)
        self.environment = environment
        self.tracking = TrackingLog(environment.root / "tracking", self.config.name, self.config.address)
        queue_path = environment.root / self.config.name / "Mailroot" / "vsi 1" / "Queue"
        self.route_actions = RouteActions.of(organization, self.config)
        self.aq = AdvancedQueuingEngine(
            self.config.name,
            QueueDirectory(queue_path),
            self.tracking,
            environment.retry,
            remote_links=self.route_actions.remote_links,
        )
        self.link_state = environment.link_state or LinkState(organization)
        self.routing = RoutingEngine(organization, self.config, self.link_state)
        self.store = store_driver.MailboxStore(
            environment.root, self.config.name, self.config.duplicate_detection
        )
        self.categorizer: Categorizer | None = None
        self.delivery = SmtpDelivery(
            self.config.fqdn,
            self.config.address,
            make_resolver(environment.dns_address, environment.dns_port),
            environment.smtp_port,
            own_addresses=frozenset(
                {self.config.address, *(vs.address for vs in self.config.virtual_servers)}
            ),
            encapsulation_domain=organization.primary_domain,
            is_organization_server=organization.is_own_address,
            helo_links=frozenset(
                name for name, action in self.route_actions.by_link.items() if action.send_helo
            ),
        )
        self._listeners: list[asyncio.Server] = []
        self._handlers: list[VirtualServerHandler] = []
        self.gateways: dict[str, NotesGateway] = {}
        self.frozen_x400: set[str] = set()  # X.400 queues an administrator froze, shared by the gateways
        self.mta = MessageTransferAgent(self.config.name, environment.root, self.tracking, self.frozen_x400)

    async def start(self, *, process: bool = True) -> None:
        """Recover the queues and listen; with `process`, AQ works on its backlog at once, else only
        at `begin`."""
        self.categorizer = Categorizer(
            self.organization,
            self.config,
            self.environment.directory(self.config.name),
            self.environment.base_dn,
        )
        self.aq.start(
            Components(
                categorize=self.categorizer.categorize,
                route=self.routing.route,
                deliver_local=self._deliver_local,
                deliver_remote=self._deliver_remote,
                make_ndr=self._make_ndr,
                make_delay_notice=self._make_delay_notice,
                schedule_wait=self._schedule_wait,
            ),
            process=process,
        )
        directory = self.environment.directory(self.config.name)
        for connector in self.organization.connectors:
            if connector.kind == "gateway" and self.config.name in connector.local_bridgeheads:
                self.gateways[connector.name.lower()] = NotesGateway(
                    self.organization,
                    self.config.name,
                    connector,
                    self.environment.root,
                    directory,
                    self.environment.base_dn,
                    self.tracking,
                    lambda msg, content: self.aq.submit(msg, content, source="gateway"),
                    self.frozen_x400,
                )
        for gateway in self.gateways.values():
            self.mta.connect(gateway.connector.name, gateway.outlet())
        for connector in self.organization.connectors:
            if connector.kind == "x400" and self.config.name in connector.local_bridgeheads:
                remote = connector.remote_bridgeheads[0] if connector.remote_bridgeheads else None
                self.mta.connect(connector.name, x400_outlet(self.environment.root, connector.name, remote))
        # The MTA first: it finishes a transfer into MTS-OUT cut short, which the gateway then delivers.
        self.mta.recover()
        for gateway in self.gateways.values():
            # AQ has loaded its own queue folder by now: a message it holds was handed over already.
            gateway.recover(
                lambda message_id: any(e.msg.message_id == message_id for e in self.aq.entries.values())
            )
        # What other MTAs transfer over X.400 connectors goes to AQ as the store driver hands it over.
        self.mta.receive(
            lambda msg, content: self.aq.submit(msg, content, source="gateway"),
            lambda item: item in self.aq.entries,
        )
        # A change of link state is a chance for what waits on an unreachable destination.
        self.link_state.on_change(self.aq.link_state_changed)
        await self.listen()

    def begin(self) -> None:
        """AQ starts on what waits in its queues."""
        self.aq.begin()

    async def listen(self) -> None:
        """Open the virtual servers' listeners (at start, and when a stopped server comes back)."""
        if self._listeners:
            return  # already up
        loop = asyncio.get_running_loop()
        self._handlers.clear()
        for vs in self.config.virtual_servers:
            # A certificate only where one is bound.
            tls = (
                self.environment.tls_context(self.config.fqdn)
                if vs.tls and self.environment.tls_context
                else None
            )
            handler = VirtualServerHandler(
                self.organization,
                self.config,
                vs,
                self.aq,
                self.environment.authenticate,
                tls,
                AddressBook(self.environment.directory(self.config.name), self.environment.base_dn),
                etrn=self._etrn if self.route_actions.offers_etrn else None,
            )
            self._handlers.append(handler)
            listener = await loop.create_server(handler.protocol, vs.address, vs.port)
            self._listeners.append(listener)

    async def stop(self) -> None:
        await self.close()
        for gateway in self.gateways.values():
            await gateway.stop()
        await self.mta.stop()
        await self.aq.stop()
        self.tracking.close()

    async def close(self) -> None:
        """Close the listeners and end open sessions: the server is down for its clients."""
        for listener in self._listeners:
            listener.close()
        for handler in self._handlers:
            await handler.close_sessions()
            if handler.protocol_log is not None:
                handler.protocol_log.close()
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()

    async def submit_from_store(
        self, mailbox: str, recipients: list[str], content: bytes, *, defer: float = 0.0
    ) -> str:
        """The MAPI/OWA path (OUT-2a): a mailbox on this server submits a message through the store;
        the store driver hands it to AQ (tracking 1027 first). With `defer`, the client set a deferred
        delivery time (PR_DEFERRED_DELIVERY_TIME) that many seconds ahead. Returns its Message-ID."""
        assert self.categorizer is not None
        try:
            home = self.categorizer.home_server_of(mailbox)
        except ComponentUnavailable as exc:
            raise ValueError(f"the store cannot look {mailbox} up: {exc}") from exc
        if home is None:
            raise ValueError(f"{mailbox} is not a mailbox in the directory")
        if home != self.config.fqdn:
            raise ValueError(
                f"the mailbox of {mailbox} is on {home}, not on {self.config.fqdn}: submit it there"
            )
        headers = email.message_from_bytes(content.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
        message_id = (headers.get("Message-ID") or "").strip().strip("<>")
        if not message_id:
            message_id = f"{uuid.uuid4().hex.upper()}@{self.config.fqdn}"
            content = f"Message-ID: <{message_id}>\r\n".encode() + content
        msg = MailMsg.new(
            mailbox,
            recipients,
            CONNECTION_IP_ADDRESS=self.config.address,
            HELO_DOMAIN="STORE",
            SERVER_NAME=self.config.fqdn,
            RFC822_MSG_ID=message_id,
            RFC822_MSG_SUBJECT=str(headers.get("Subject") or ""),
            MSG_SIZE_HINT=len(content),
            ORG_INTERNAL=True,
            AUTHENTICATED_USER_NAME=mailbox,
            PRIORITY=priority_of(headers),
        )
        if defer > 0:
            msg.properties[DEFERRED_DELIVERY_TIME] = time.time() + defer
        await self.aq.submit(msg, content, source="store")
        return message_id

    def _etrn(self, domain: str) -> int | None:
        """ETRN <domain> (RFC 1985): release the link queue of the remote-triggered connector for that
        domain; the number of messages that now go, or None if no such queue is kept here."""
        link = self.route_actions.etrn_link(domain)
        return None if link is None else self.aq.trigger(link)

    def idle(self, horizon: float | None = None) -> bool:
        return (
            self.aq.idle(horizon)
            and self.mta.idle()
            and all(gateway.idle() for gateway in self.gateways.values())
            and not any(handler.receiving() for handler in self._handlers)
        )

    def queues(self) -> dict[str, list[dict[str, Any]]]:
        """Every queue Queue Viewer shows for this server: AQ's, the gateways' folders and the X.400 ones."""
        queues: dict[str, list[dict[str, Any]]] = dict(self.aq.snapshot())
        for gateway in self.gateways.values():
            queues.update(gateway.folders())
        queues.update(self.mta.folders())
        return queues

    def set_gateway(self, name: str, running: bool) -> None:
        """Stop or start the gateway service of connector `name` (KeyError if none runs here)."""
        gateway = self.gateways[name.lower()]
        if running:
            gateway.start_service()
        else:
            gateway.stop_service()

    def freeze(self, queue: str, frozen: bool = True) -> None:
        """Queue Viewer's Freeze (or Unfreeze) on a link queue, or on an X.400 queue of the gateway path."""
        names = (*X400_QUEUES, *self.mta.queue_names())
        x400 = next((name for name in names if name.lower() == queue.lower()), None)
        if x400 is None:
            (self.aq.freeze if frozen else self.aq.unfreeze)(queue)
            return
        if frozen:
            self.frozen_x400.add(x400)
            return
        self.frozen_x400.discard(x400)
        for gateway in self.gateways.values():
            gateway.release(x400)
        self.mta.release(x400)

    def force_connection(self, queue: str) -> int:
        """Queue Viewer's Force Connection on a link queue: how many messages it sent on their way."""
        return self.aq.force_connection(queue)

    def _schedule_wait(self, hop: Hop) -> float | None:
        # Only a connector's own queue, on its bridgehead, keeps its schedule; a hop toward the
        # bridgehead is not held by it.
        if hop.connector is None or hop.queue.lower() != hop.connector.lower():
            return 0.0
        connector = next((c for c in self.organization.connectors if c.name == hop.connector), None)
        return 0.0 if connector is None else connector.schedule.wait(datetime.datetime.now(datetime.UTC))

    @property
    def frozen(self) -> set[str]:
        """The frozen queues, in lower case as the queuing engine keeps them."""
        return self.aq.frozen | {name.lower() for name in self.frozen_x400}

    async def _deliver_local(self, msg: MailMsg, content: bytes) -> DeliveryResult:
        return await asyncio.to_thread(self.store.deliver, msg, content, self.config.stores)

    async def _deliver_remote(self, hop: Hop, msg: MailMsg, content: bytes) -> DeliveryResult:
        if hop.kind == HopKind.GATEWAY:
            # The store driver hands it to the MTA (1029, logged by AQ), which queues it for the connector.
            return await self.mta.accept(hop.queue, msg, content)
        if hop.kind == HopKind.X400:
            connector = next(c for c in self.organization.connectors if c.name == hop.connector)
            if connector.remote_bridgeheads and not hop.targets:
                # The remote MTA's server is down: no association now; AQ retries later.
                error = f"{hop.queue}: the remote MTA does not answer"
                return DeliveryResult(delivered=[], failed=[], deferred=list(msg.recipients), error=error)
            # The store driver hands it to the MTA (1029), which transfers it to the remote MTA.
            return await self.mta.accept(hop.queue, msg, content)
        return await self.delivery.deliver(hop, msg, content)

    def _make_delay_notice(
        self, msg: MailMsg, waiting: list[Recipient], content: bytes
    ) -> tuple[MailMsg, bytes] | None:
        return self._made(
            dsn.make_dsn(
                msg,
                waiting,
                content,
                self.config.fqdn,
                f"postmaster@{self.organization.primary_domain}",
                action="delayed",
            )
        )

    def _made(self, made: tuple[MailMsg, bytes] | None) -> tuple[MailMsg, bytes] | None:
        if made is not None:
            made[0].properties.update(CONNECTION_IP_ADDRESS=self.config.address, SERVER_NAME=self.config.fqdn)
        return made

    def _make_ndr(
        self, msg: MailMsg, failed: list[Recipient], content: bytes
    ) -> tuple[MailMsg, bytes] | None:
        return self._made(
            dsn.make_ndr(
                msg, failed, content, self.config.fqdn, f"postmaster@{self.organization.primary_domain}"
            )
        )
