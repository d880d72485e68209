"""The control channel of a running lab: what an administrator does through Exchange System Manager
(Queue Viewer, marking connectors down) and what an Outlook client does (submit through the store),
for a lab started by `mailflow lab up` in another process.

A Unix socket in the lab's folder carries one JSON object per line each way. Requests:
  {"op": "queues"}                                  → every server's queues, with state and next retry
  {"op": "link_state"}                              → connectors up/down, servers down, version
  {"op": "connector", "name": N, "up": bool}        → mark a connector up or down
  {"op": "server", "name": N, "up": bool}           → take a server down or bring it back
  {"op": "submit", "server": S, "mailbox": M, "to": [...], "content": base64}  → store submission
  {"op": "freeze" | "unfreeze", "server": S, "queue": Q} → Queue Viewer's Freeze / Unfreeze
  {"op": "global_catalog", "up": bool}              → stop the global catalog, or bring it back
Replies are {"ok": true, "result": ...} or {"ok": false, "error": "..."}. The socket file is created
with the folder's permissions; nothing listens on the network.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reference_mta.queuing import ACTIVE, FROZEN, READY, RETRYING

if TYPE_CHECKING:
    from harness.lab.runtime import Lab

SOCKET_NAME = "control.sock"


class ControlError(RuntimeError):
    """The lab refused a request, or could not be reached."""


class ControlServer:
    def __init__(self, lab: Lab, path: Path) -> None:
        self.lab = lab
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a socket left by a lab that was killed
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
                try:
                    reply = {"ok": True, "result": await self.handle(json.loads(line))}
                except Exception as exc:  # any refusal goes back to the client; the lab keeps running
                    reply = {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    async def handle(self, request: dict[str, Any]) -> Any:
        op = request.get("op")
        if op == "queues":
            return queue_table(self.lab.queue_snapshot(), self.lab.frozen_queues())
        if op == "link_state":
            return self.lab.link_state.snapshot()
        if op == "connector":
            self.lab.link_state.set_connector(str(request["name"]), bool(request["up"]))
            return self.lab.link_state.snapshot()
        if op == "server":
            await self.lab.change_server(str(request["name"]), bool(request["up"]))
            return self.lab.link_state.snapshot()
        if op == "submit":
            content = base64.b64decode(request["content"])
            server = self.lab.servers[self.lab.config.organization.server(str(request["server"])).name]
            return await server.submit_from_store(str(request["mailbox"]), list(request["to"]), content)
        if op == "global_catalog":
            self.lab.change_global_catalog(bool(request["up"]))
            return {"available": self.lab.gc.available}
        if op in ("freeze", "unfreeze"):
            self.lab.change_freeze(str(request["server"]), str(request["queue"]), op == "freeze")
            return queue_table(self.lab.queue_snapshot(), self.lab.frozen_queues())
        raise ValueError(f"unknown operation {op!r}")


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
                FROZEN
                if name.lower() in frozen.get(server, set())
                else ACTIVE
                if ACTIVE in states
                else RETRYING
                if states == {RETRYING}
                else READY
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
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(str(path))
            connection.sendall(json.dumps(payload).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ControlError(
            f"no running lab at {lab_dir} (start one with `mailflow lab up --workdir {lab_dir}`)"
        ) from exc
    reply = json.loads(data)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "the lab refused the request"))
    return reply["result"]
