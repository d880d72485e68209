"""The control channel of a running lab: what an administrator does through Exchange System Manager
(Queue Viewer, marking connectors down) and what an Outlook client does (submit through the store),
for a lab started by `mailflow lab up` in another process.

A Unix socket in the lab's folder carries one JSON object per line each way. Requests:
  {"op": "queues", "server": S (optional)}          → every server's queues, with state and next retry
                                                      (a real MTA standing in for a server: its own)
  {"op": "link_state"}                              → connectors up/down, servers down, version
  {"op": "connector", "name": N, "up": bool}        → mark a connector up or down
  {"op": "server", "name": N, "up": bool}           → take a server down or bring it back
  {"op": "submit", "server": S, "mailbox": M, "to": [...], "content": base64}  → store submission
  {"op": "freeze" | "unfreeze", "server": S, "queue": Q} → Queue Viewer's Freeze / Unfreeze (a real
                                                      MTA: its own hold, as far as it has one)
  {"op": "global_catalog", "up": bool}              → stop the global catalog, or bring it back
  {"op": "gateway", "name": N, "running": bool}     → stop or start a gateway connector's service
  {"op": "force", "connector": N}                   → Queue Viewer's Force Connection on the connector's
                                                      queue (Scheduled or Retry → Active)
Every name is checked against the lab (case-insensitively; the reply lists the valid ones). Replies are
{"ok": true, "result": ...} or {"ok": false, "error": "...", "kind": "input" | "broken"}: "input" when
the request was wrong, "broken" when the lab could not do it. The socket file is created with the
folder's permissions; nothing listens on the network.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.lab.admin import LabAdmin
from harness.lab.lock import holder
from harness.lab.recipients import RecipientTable
from harness.lab.standin import MtaQueue, NotPossible
from reference_mta.queue_contract import GATEWAY_FOLDERS, SYSTEM_QUEUES, QueueState

SOCKET_NAME = "control.sock"


class ControlError(RuntimeError):
    """The lab refused a request, or could not be reached. `kind` is "input" when the request was wrong
    (a name the lab does not have, something its target cannot do, no lab in that folder) and "broken"
    when the lab could not do it."""

    def __init__(self, message: str, kind: str = "broken") -> None:
        super().__init__(message)
        self.kind = kind


class Refused(ValueError):
    """A request naming what the lab does not have; the message lists what it has."""


def choose(what: str, name: str, valid: Iterable[str], where: str) -> str:
    """`name` as the lab spells it (names are case-insensitive, as in Exchange System Manager); else
    Refused, listing the valid ones: "{where} has no {what} 'X'; {what}s: ..."."""
    names = sorted(set(valid), key=str.lower)
    for candidate in names:
        if candidate.lower() == name.lower():
            return candidate
    raise Refused(f"{where} has no {what} {name!r}; {what}s: {', '.join(names) or 'none'}")


class ControlServer:
    def __init__(self, lab: LabAdmin, path: Path) -> None:
        self.lab = lab
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        # The folder is this lab's (it holds the folder's lock): a socket here was left by one killed.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                reply: dict[str, Any]
                try:
                    reply = {"ok": True, "result": await self.handle(json.loads(line))}
                except (Refused, NotPossible) as exc:
                    reply = {"ok": False, "error": str(exc), "kind": "input"}
                except Exception as exc:  # the lab keeps running; the client says what broke
                    reply = {"ok": False, "error": _broken(exc), "kind": "broken"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    async def handle(self, request: dict[str, Any]) -> Any:
        op = request.get("op")
        lab = self.lab
        if op == "queues":
            server = self._server_name(request["server"]) if request.get("server") else None
            return [row for row in await self._queue_rows() if server is None or row["server"] == server]
        if op == "link_state":
            return lab.link_state.snapshot()
        if op == "connector":
            name = choose(
                "connector",
                str(request["name"]),
                (c.name for c in lab.config.organization.connectors),
                self._lab,
            )
            lab.change_connector(name, bool(request["up"]))
            return {**lab.link_state.snapshot(), "name": name}
        if op == "server":
            name = self._reference_server(str(request["name"]), "taken down or brought up by the lab")
            await lab.change_server(name, bool(request["up"]))
            return {**lab.link_state.snapshot(), "name": name}
        if op == "submit":
            name = self._reference_server(str(request["server"]), "submitted to through a store")
            mailbox = self._mailbox(name, str(request["mailbox"]))
            content = base64.b64decode(request["content"])
            return await lab.submit_through_store(name, mailbox, list(request["to"]), content)
        if op == "global_catalog":
            lab.change_global_catalog(bool(request["up"]))
            return {"available": lab.gc.available}
        if op == "gateway":
            return self._gateway(str(request["name"]), bool(request["running"]))
        if op == "force":
            name = choose(
                "connector",
                str(request["connector"]),
                (c.name for c in lab.config.organization.connectors),
                self._lab,
            )
            return {"name": name, "released": lab.change_force(name)}
        if op in ("freeze", "unfreeze"):
            return await self._freeze(str(request["server"]), str(request["queue"]), op == "freeze")
        raise Refused(f"unknown operation {op!r}")

    def _gateway(self, name: str, running: bool) -> dict[str, Any]:
        connectors = self.lab.config.organization.connectors
        gateways = [c for c in connectors if c.kind == "gateway"]
        name = choose("gateway connector", name, (c.name for c in gateways), self._lab)
        connector = next(c for c in gateways if c.name == name)
        server = next((s for s in connector.local_bridgeheads), "")
        if server in self.lab.stand_ins:
            raise NotPossible(f"{name} runs on {server}, where {self.lab.stand_ins[server].mta} stands in")
        self.lab.change_gateway(name, running)
        return {"name": name, "server": server, "running": running}

    @property
    def _lab(self) -> str:
        return f"lab {self.lab.config.name}"

    def _server_name(self, name: str) -> str:
        return choose("server", name, (s.name for s in self.lab.config.organization.servers), self._lab)

    def _reference_server(self, name: str, what: str) -> str:
        server = self._server_name(name)
        if server in self.lab.stand_ins:
            mta = self.lab.stand_ins[server].mta
            raise NotPossible(
                f"{server} is {mta} standing in for the lab server: it cannot be {what}; "
                f"servers that can: {', '.join(sorted(self.lab.reference_server_names)) or 'none'}"
            )
        return server

    def _mailbox(self, server: str, mailbox: str) -> str:
        """The store takes a submission only from a mailbox it holds; the directory says which."""
        if not self.lab.gc.available:
            return mailbox  # the store says it cannot look the mailbox up

        table = RecipientTable.from_directory(
            self.lab.gc.connect("mailflow submit"), self.lab.config.global_catalog.base_dn
        )
        here = table.mailboxes_on(server)
        if any(mailbox.lower() in m.addresses for m in here):
            return mailbox
        elsewhere = next((m.server for m in table.mailboxes if mailbox.lower() in m.addresses), None)
        where = f" (its mailbox is on {elsewhere}: submit it there)" if elsewhere else ""
        raise Refused(
            f"{mailbox} is not a mailbox on {server}{where}; mailboxes on {server}: "
            + (", ".join(m.primary for m in here) or "none")
        )

    async def _queue_rows(self) -> list[dict[str, Any]]:
        rows = queue_table(self.lab.queue_snapshot(), self.lab.frozen_queues())
        for server, stand_in in self.lab.stand_ins.items():
            # The MTA's own commands are run outside the lab's loop, which keeps serving meanwhile.
            rows += [_mta_row(server, queue) for queue in await asyncio.to_thread(stand_in.queues)]
        order = [s.name for s in self.lab.config.organization.servers]
        return sorted(rows, key=lambda row: order.index(row["server"]))

    async def _freeze(self, server_name: str, queue: str, frozen: bool) -> dict[str, Any]:
        server = self._server_name(server_name)
        if server in self.lab.stand_ins:
            note = await asyncio.to_thread(self.lab.stand_ins[server].freeze, queue, frozen)
            rows = [r for r in await self._queue_rows() if r["server"] == server]
            return {"server": server, "queue": queue, "stand_in": True, "note": note, "rows": rows}
        name = self._link_queue(server, queue, frozen)
        self.lab.change_freeze(server, name, frozen)
        rows = [r for r in await self._queue_rows() if r["server"] == server]
        state = next((r["state"] for r in rows if r["queue"].lower() == name.lower()), None)
        note = f"{'frozen' if frozen else 'unfrozen'} (no message in it yet)" if state is None else ""
        return {
            "server": server,
            "queue": name,
            "stand_in": False,
            "state": state,
            "note": note,
            "rows": rows,
        }

    def _link_queue(self, server: str, queue: str, frozen: bool) -> str:
        """Queue Viewer freezes link queues: one per connector, per server a message is sent to, and per
        remote domain with messages waiting (those exist only while they do); and the X.400 queues of a
        server with a gateway connector (its own folders are not queues)."""
        organization = self.lab.config.organization
        if queue.lower() in {q.lower() for q in SYSTEM_QUEUES}:
            raise Refused(f"{queue!r} is a system queue of {server}: only link queues can be frozen")
        present = self.lab.queue_snapshot().get(server, {})
        folders = {
            f"{c.name} {folder}"
            for c in organization.connectors
            if c.kind == "gateway"
            for folder in GATEWAY_FOLDERS
        }
        valid = [c.name for c in organization.connectors]
        valid += [s.fqdn for s in organization.servers if s.name != server]
        valid += [q for q in present if q not in SYSTEM_QUEUES and q not in folders]
        if not frozen:
            # Kept in lower case by the queuing engine: only those not already spelled out above.
            known = {name.lower() for name in valid}
            valid += [name for name in self.lab.frozen_queues().get(server, set()) if name not in known]
        return choose("link queue", queue, valid, server)


def _mta_row(server: str, queue: MtaQueue) -> dict[str, Any]:
    return {
        "server": server,
        "queue": queue.name,
        "state": queue.state,
        "count": queue.count,
        "next_retry_in": round(queue.next_retry - time.time(), 1) if queue.next_retry else None,
        "recipients": sorted(queue.recipients),
    }


def _broken(exc: Exception) -> str:
    # The lab's own errors (LabError, a stand-in's StandInError: RuntimeErrors), the store's refusals
    # (ValueError) and the system's (OSError) say what happened in their message.
    if isinstance(exc, RuntimeError | ValueError | OSError):
        return str(exc)
    # Anything else is a harness defect: say what, without a traceback.
    return f"internal error in the lab: {exc.__class__.__name__}: {exc}"


def queue_table(
    snapshot: dict[str, dict[str, list[dict[str, Any]]]], frozen: dict[str, set[str]] | None = None
) -> list[dict[str, Any]]:
    """One row per queue of every server, as Queue Viewer lists them: name, state, count, next retry."""
    frozen = frozen or {}
    rows = []
    now = time.time()
    for server, queues in snapshot.items():
        for name, items in queues.items():
            states = {item["state"] for item in items}
            state = (
                QueueState.FROZEN
                if name.lower() in frozen.get(server, set())
                else QueueState.ACTIVE
                if QueueState.ACTIVE in states
                else QueueState.SCHEDULED
                if QueueState.SCHEDULED in states
                else QueueState.RETRY
                if states == {QueueState.RETRY}
                else QueueState.REMOTE
                if states == {QueueState.REMOTE}
                else QueueState.READY
            )
            retries = [item["next_retry"] for item in items if item.get("next_retry")]
            rows.append(
                {
                    "server": server,
                    "queue": name,
                    "state": state,
                    "count": len(items),
                    "next_retry_in": round(min(retries) - now, 1) if retries else None,
                    "recipients": sorted({r for item in items for r in item["recipients"]}),
                }
            )
    return rows


def request(lab_dir: Path, payload: dict[str, Any], timeout: float = 30.0) -> Any:
    """Send one request to the lab whose folder is `lab_dir` and return its result."""
    path = lab_dir / SOCKET_NAME
    if not lab_dir.is_dir():
        raise ControlError(f"no lab at {lab_dir}: it is not a folder", "input")
    data = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(str(path))
            connection.sendall(json.dumps(payload).encode() + b"\n")
            while not data.endswith(b"\n"):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        if (pid := holder(lab_dir)) is not None:
            raise ControlError(f"the lab in {lab_dir} (pid {pid}) does not answer on {path}") from exc
        raise ControlError(
            f"no running lab at {lab_dir} (start one with `mailflow lab up --workdir {lab_dir}`)", "input"
        ) from exc
    except TimeoutError as exc:
        raise ControlError(f"the lab in {lab_dir} did not answer within {timeout:g} s") from exc
    except OSError as exc:
        raise ControlError(
            f"cannot reach the lab in {lab_dir} through {path}: {exc.strerror or exc}"
        ) from exc
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"the lab in {lab_dir} closed the connection without answering") from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "the lab refused the request"), reply.get("kind", "broken"))
    return reply["result"]
