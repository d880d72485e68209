"""What the lab's control server and a stand-in's factory may use of a running lab.

The control server answers `mailflow queues`, `lab link`, `submit` and the like for a lab that
`Lab` starts; naming this narrow interface instead of `Lab` keeps the control server below the lab
runtime, which starts it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from harness.lab.certificates import LabCertificates
from harness.lab.config import LabConfig
from harness.lab.gc import MockGlobalCatalog
from harness.lab.standin import StandIn
from reference_mta.linkstate import LinkState


class LabAdmin(Protocol):
    @property
    def config(self) -> LabConfig: ...

    @property
    def workdir(self) -> Path: ...

    @property
    def certificates(self) -> LabCertificates: ...

    @property
    def gc(self) -> MockGlobalCatalog: ...

    @property
    def link_state(self) -> LinkState: ...

    @property
    def reference_server_names(self) -> list[str]:
        """The servers the reference MTA runs (not those a real MTA stands in for)."""
        ...

    @property
    def stand_ins(self) -> Mapping[str, StandIn]: ...

    def change_connector(self, name: str, up: bool) -> None:
        """Mark a connector down or up for every reference server (call on the lab's loop)."""

    async def submit_through_store(
        self, server: str, mailbox: str, recipients: list[str], content: bytes, defer: float = 0.0
    ) -> str:
        """A MAPI client's submission through `server`'s store; its Message-ID (ValueError if refused)."""
        ...

    async def change_server(self, name: str, up: bool) -> None:
        """Take a reference server down (its virtual servers stop answering) or bring it back up."""

    def change_global_catalog(self, up: bool) -> None: ...

    def change_gateway(self, name: str, running: bool) -> None:
        """Stop or start the service of a gateway connector (call on the lab's loop)."""

    def change_freeze(self, server: str, queue: str, frozen: bool) -> None:
        """Freeze or release one of a reference server's queues (call on the lab's loop)."""

    def change_force(self, queue: str) -> int:
        """Queue Viewer's Force Connection on link queue `queue` of every reference server (call on the
        lab's loop); how many messages it released."""
        ...

    def frozen_queues(self) -> dict[str, set[str]]: ...

    def queue_snapshot(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Every reference server's queues (call on the lab's loop)."""


# Made when the lab's own hosts are running (the directory is loaded, its DNS answers).
StandInFactory = Callable[[LabAdmin], StandIn]
