"""A program of its own standing in for one server of the lab (a real MTA), in that server's network
namespace. The lab starts it once its own hosts are up, asks it whether its queue is idle when the
harness waits for the lab to settle, reads what it delivered into its mailboxes, and stops it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from harness.lab.netns import Namespace

if TYPE_CHECKING:
    from harness.lab.runtime import Lab


@dataclass(frozen=True)
class MailboxDelivery:
    mailbox: str
    server: str
    sender: str
    data: bytes


class StandIn(Protocol):
    server: str

    @property
    def log_path(self) -> Path: ...

    def start(self, namespace: Namespace) -> None: ...

    def stop(self) -> None: ...

    def idle(self) -> bool: ...

    def deliveries(self) -> list[MailboxDelivery]: ...


# Made when the lab's own hosts are running (the directory is loaded, its DNS answers).
StandInFactory = Callable[["Lab"], StandIn]
