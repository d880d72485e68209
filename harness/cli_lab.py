"""`mailflow lab ...`, `mailflow queues` and `mailflow submit`: a lab started by hand, and what an
administrator does to it while it runs (through the lab's control socket)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness import signals
from harness.lab import config as lab_config
from harness.yamlsource import SourceError

console = Console(stderr=False)


@click.group()
def lab() -> None:
    """Run a lab by hand: poke it with swaks or a mail client, read its logs."""


@lab.command("up")
@click.argument("name", default="contoso")
@click.option(
    "--base",
    default=None,
    help="relocate: address base (in 127.0.0.0/8; in 198.18.0.0/15 for a real-MTA target)",
)
@click.option("--port-offset", type=int, default=None, help="relocate: port offset")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="keep queues, mailboxes and tracking logs here (default: a temporary folder)",
)
@click.option(
    "--target",
    "target_name",
    default="reference",
    show_default=True,
    help="what stands in for the server under test, e.g. postfix or exim:EX2 (a real MTA puts the lab "
    "on 198.18.0.0/15, in network namespaces; needs root)",
)
def lab_up(
    name: str, base: str | None, port_offset: int | None, workdir: Path | None, target_name: str
) -> None:
    """Start lab NAME (or a lab file) in the foreground until Ctrl-C."""
    from harness import targets
    from harness.runner import relocation

    try:
        target = targets.get(target_name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--target") from None
    if (unavailable := target.unavailable()) is not None:
        raise click.ClickException(f"target {target.name} cannot run here: {unavailable}")
    if target.needs_netns and base is None:
        base, port_offset = relocation(netns=True)
    try:
        config = lab_config.load(lab_config.lab_path(name), base=base, port_offset=port_offset)
    except SourceError as exc:
        raise click.ClickException(str(exc)) from exc
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    with target.lab(config, workdir, control=True) as running:
        table = Table(title=f"lab {config.name} (started in {running.started_in * 1000:.0f} ms)")
        for column in ("host", "kind", "name", "address", "service"):
            table.add_column(column)
        services = {
            "dns": f"DNS udp+tcp :{config.dns_port}",
            "gc": "LDAP: in-process only (ldap3 MOCK_SYNC)",
            "server": f"SMTP :{config.port(25)}",
            "internet": f"SMTP sink :{config.port(25)}",
            "virtual_server": f"SMTP :{config.port(25)}",
            "client": "-",
        }
        for host in config.hosts.values():
            service = services.get(host.kind, "-")
            if host.name in running.stand_ins:
                service = f"{target.name}: {service}"
            table.add_row(host.name, host.kind, host.fqdn or "-", host.address, service)
        console.print(table)
        for server, stand_in in running.stand_ins.items():
            console.print(f"{server}: {target.name} in its network namespace, logging to {stand_in.log_path}")
        console.print(f"queues, mailboxes and tracking logs: {running.workdir}")
        console.print(
            f"control: mailflow queues --lab-dir {running.workdir}  (also: mailflow submit, "
            "mailflow lab connector|server NAME up|down)"
        )
        console.print("Ctrl-C stops the lab.")
        signals.until_stopped()  # also SIGTERM and SIGHUP; the lab is then stopped and removed, exit 0
        console.print("stopping")


LAB_DIR = click.option(
    "--lab-dir",
    type=click.Path(path_type=Path),
    required=True,
    help="the folder of a lab started with `mailflow lab up --workdir DIR`",
)


def _control(lab_dir: Path, payload: dict[str, Any]) -> Any:
    from harness.lab.control import ControlError, request

    try:
        return request(lab_dir, payload)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@LAB_DIR
@click.option("--server", default=None, help="only this server's queues")
@click.option("--all", "show_all", is_flag=True, help="also list empty queues")
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON, for scripts")
def queues(lab_dir: Path, server: str | None, show_all: bool, as_json: bool) -> None:
    """Queue Viewer: every queue of a running lab's servers, with state, count and next retry."""
    rows = [
        row
        for row in _control(lab_dir, {"op": "queues"})
        if (not server or row["server"].lower() == server.lower()) and (show_all or row["count"])
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    table = Table(title="queues")
    for column in ("server", "queue", "state", "messages", "next retry"):
        table.add_column(column, no_wrap=True)
    table.add_column("recipients")
    for row in rows:
        retry = f"in {row['next_retry_in']:g} s" if row["next_retry_in"] is not None else "-"
        table.add_row(
            row["server"],
            row["queue"],
            row["state"],
            str(row["count"]),
            retry,
            escape(", ".join(row["recipients"])),
        )
    console.print(table)


@click.command()
@LAB_DIR
@click.option("--server", required=True, help="the home server of the mailbox")
@click.option("--from", "mailbox", required=True, help="the submitting mailbox's address")
@click.option("--to", "recipients", multiple=True, required=True, help="a recipient (repeat for more)")
@click.argument("message", type=click.File("rb"))
def submit(lab_dir: Path, server: str, mailbox: str, recipients: tuple[str, ...], message: Any) -> None:
    """Submit MESSAGE (a file, or - for standard input) through a server's store, as Outlook does."""

    content = message.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    msgid = _control(
        lab_dir,
        {
            "op": "submit",
            "server": server,
            "mailbox": mailbox,
            "to": list(recipients),
            "content": base64.b64encode(content).decode(),
        },
    )
    console.print(f"submitted <{msgid}>")


@lab.command("connector")
@LAB_DIR
@click.argument("name")
@click.argument("state", type=click.Choice(["up", "down"]))
def lab_connector(lab_dir: Path, name: str, state: str) -> None:
    """Mark connector NAME up or down in the lab's link state."""
    result = _control(lab_dir, {"op": "connector", "name": name, "up": state == "up"})
    console.print(f"link state {result['version']}: {name} is {result['connectors'].get(name, state)}")


@lab.command("freeze")
@LAB_DIR
@click.option("--server", required=True)
@click.argument("queue")
@click.option("--undo", is_flag=True, help="unfreeze")
def lab_freeze(lab_dir: Path, server: str, queue: str, undo: bool) -> None:
    """Freeze a link queue (it keeps and takes messages, sends none), or unfreeze it with --undo."""
    rows = _control(lab_dir, {"op": "unfreeze" if undo else "freeze", "server": server, "queue": queue})
    states = [
        r["state"]
        for r in rows
        if r["server"].lower() == server.lower() and r["queue"].lower() == queue.lower()
    ]
    state = states[0] if states else f"{'unfrozen' if undo else 'frozen'} (no message in it yet)"
    console.print(f"{queue} on {server}: {state}")


@lab.command("server")
@LAB_DIR
@click.argument("name")
@click.argument("state", type=click.Choice(["up", "down"]))
def lab_server(lab_dir: Path, name: str, state: str) -> None:
    """Take server NAME down (it stops answering) or bring it back up."""
    result = _control(lab_dir, {"op": "server", "name": name, "up": state == "up"})
    console.print(
        f"link state {result['version']}: servers down: {', '.join(result['servers_down']) or 'none'}"
    )
