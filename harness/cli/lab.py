"""`mailflow lab ...`, `mailflow queues`, `mailflow submit` and `mailflow sinks`: a lab started by hand,
what an administrator does to it while it runs (through the lab's control socket), and what its
Internet hosts received (from the lab's folder)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.cli import target_option
from harness.exit_codes import BrokenError, InputError
from harness.lab import captures
from harness.lab import config as lab_config
from harness.lab.certificates import CA_FILE
from harness.lab.docker_lab import DockerLab
from harness.run import signals
from harness.yamlsource import SourceError

if TYPE_CHECKING:
    from harness.lab import compose
    from harness.lab.recipients import RecipientTable
    from harness.lab.runtime import Lab

console = Console(stderr=False)
if not console.is_terminal and "COLUMNS" not in os.environ:
    # Read in wide windows and logs: don't fold the host and message tables into 80 columns.
    console = Console(stderr=False, width=150)


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
@target_option.backend_option
def lab_up(
    name: str, base: str | None, port_offset: int | None, workdir: Path | None, target_name: str, backend: str
) -> None:
    """Start lab NAME (or a lab file) in the foreground until Ctrl-C, SIGTERM or SIGHUP."""
    from harness import targets
    from reference_mta import crash_points

    if (wrong := crash_points.check(os.environ.get(crash_points.VARIABLE))) is not None:
        raise InputError(wrong)
    target = target_option.on_backend(target_option.chosen(target_name), backend)
    if (unavailable := target.unavailable()) is not None:
        raise BrokenError(f"target {target.name} cannot run here: {unavailable}")
    base, port_offset = placement(base, port_offset, netns=target.needs_netns, docker=target.in_docker)
    config = load_lab(name, base, port_offset)
    if workdir is not None:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--workdir {workdir}: {exc.strerror or exc}") from None
    try:
        running = target.lab(config, workdir, control=True)
    except targets.NoSuchServer as exc:
        raise InputError(str(exc)) from None
    except RuntimeError as exc:  # a Docker lab's containers are made here: its errors say what
        raise BrokenError(str(exc)) from None
    try:
        running.start()
    except RuntimeError as exc:  # the lab's, a stand-in's or the lab network's own errors say what
        raise BrokenError(str(exc)) from None
    except OSError as exc:
        raise BrokenError(f"lab {config.name} could not start: {exc}") from None
    signals.expect_stop()  # the lab is up: from here a signal is how it ends
    try:
        _print_hosts(running, target.name)
        kept = "" if workdir is not None else " (a temporary folder, removed when the lab stops)"
        console.print(
            f"queues, mailboxes, tracking logs and what the Internet hosts received: {running.workdir}{kept}",
            soft_wrap=True,
        )
        console.print(
            f"control: mailflow queues --lab-dir {running.workdir}  (also: mailflow submit, mailflow sinks, "
            "mailflow lab connector|server|freeze|gateway)",
            soft_wrap=True,
        )
        console.print("Ctrl-C stops the lab.")
        signals.until_stopped()  # also SIGTERM and SIGHUP; the lab is then stopped and removed, exit 0
        console.print("stopping")
    except KeyboardInterrupt:  # also while the table is printed: the lab answers before that
        console.print("stopping")
    finally:
        running.stop()


def _print_hosts(running: Lab, target_name: str) -> None:
    """What a person needs to poke the lab: each host's address and role, and how to log in and verify
    TLS. One narrow table (readable at 80 columns): every SMTP service listens on the same port."""
    config = running.config
    in_containers = isinstance(running, DockerLab)
    console.print(
        f"lab {config.name} started in {running.started_in * 1000:.0f} ms: every SMTP service on port "
        f"{config.port(25)}, DNS on {config.dns_address}:{config.dns_port} (udp+tcp)"
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("host", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("what", overflow="fold")
    roles = {
        "dns": "DNS server",
        "gc": "global catalog (LDAP)" if in_containers else "global catalog (in-process LDAP)",
        "server": "server",
        "internet": "Internet host",
        "virtual_server": "virtual server",
        "client": "client",
    }
    for host in config.hosts.values():
        if host.kind == "dns":
            continue
        role = roles.get(host.kind, host.kind)
        if host.name in running.stand_ins:
            role = f"{target_name} standing in for this server"
        if host.name in running.outside:
            role = f"not started here: {target_name} answers for this server"
        name = host.name.removesuffix(" SMTP Virtual Server")
        table.add_row(name, host.address, f"{role}: {host.fqdn}" if host.fqdn else role)
    console.print(table)
    console.print("A session from a client binds the client's address (swaks --local-interface).")
    for server, stand_in in running.stand_ins.items():
        where = "its container" if in_containers else "its network namespace"
        console.print(f"{server}: {target_name} in {where}, logging to {stand_in.log_path}")
    if in_containers:
        console.print(
            "Each host runs in a container of its own (docker ps --filter label=org.mailflow.lab); this "
            "machine reaches them through the lab network's bridge."
        )
    ca = running.workdir / CA_FILE
    # Paths are never folded: a person copies them.
    console.print(f"STARTTLS: verify the server's name (e.g. ex1.contoso.com) against {ca}", soft_wrap=True)
    logins = _logins(running)
    if logins:
        console.print(
            "AUTH (LOGIN, PLAIN): " + ", ".join(f"{user} / {password}" for user, password in logins)
        )


def _logins(running: Lab) -> list[tuple[str, str]]:
    """The directory's accounts, by their first name, as SMTP AUTH accepts them."""
    from harness.lab.recipients import RecipientTable

    if not running.gc.available:
        return []
    table = RecipientTable.from_directory(
        running.gc.connect("mailflow lab up"), running.config.global_catalog.base_dn
    )
    return [(login.names[0], login.password) for login in table.logins]


def placement(
    base: str | None, port_offset: int | None, *, netns: bool, docker: bool = False
) -> tuple[str | None, int | None]:
    """Where the lab goes: --base and --port-offset, else MAILFLOW_LAB_BASE / MAILFLOW_PORT_OFFSET (or,
    for a real-MTA target, MAILFLOW_NETNS_SUBNET), as for every other lab the harness starts."""
    from harness.lab.placement import relocation

    try:
        env_base, env_offset = relocation(netns=netns, docker=docker)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if base is not None:
        # A real MTA's lab keeps the standard ports (its DNS and SMTP clients use them), as does a lab
        # of containers, each host with an address of its own.
        return base, port_offset if port_offset is not None or netns or docker else env_offset
    return env_base, port_offset if port_offset is not None else env_offset


def load_lab(name: str, base: str | None, port_offset: int | None) -> lab_config.LabConfig:
    path = lab_config.lab_path(name)
    if not path.is_file():
        raise InputError(lab_config.missing_lab(name, path))
    try:
        return lab_config.load(path, base=base, port_offset=port_offset)
    except SourceError as exc:
        raise InputError(str(exc)) from None


@lab.command("export")
@click.argument("name", default="contoso")
@click.option(
    "--compose",
    "folder",
    metavar="DIR",
    type=click.Path(path_type=Path),
    required=True,
    help="write the lab here as a docker compose project: a new or empty folder",
)
@click.option(
    "--target",
    "target_name",
    default="reference",
    show_default=True,
    help="reference, or postfix (Postfix stands in for EX1) or postfix:SERVER",
)
@click.option(
    "--subnet",
    default=None,
    help="the lab's network, a /24 inside 198.18.0.0/15 [default: 198.19.N.0/24, N from "
    "MAILFLOW_DOCKER_SUBNET, else 10]",
)
@click.option(
    "--force", is_flag=True, help="write into a folder that is not empty (the export's files are replaced)"
)
def lab_export(name: str, folder: Path, target_name: str, subnet: str | None, force: bool) -> None:
    """Write lab NAME (or a lab file) as a folder that docker compose starts without mailflow: one
    container per host on an internal network, the configuration, keys and a README.txt."""
    from harness.lab import compose, compose_folder
    from harness.lab.docker_lab import SOURCE_SETTING
    from harness.lab.placement import docker_first_octet

    try:
        network = compose.parse_subnet(subnet or f"198.19.{docker_first_octet()}.0/24")
    except ValueError as exc:  # also MAILFLOW_DOCKER_SUBNET's own mistakes
        raise InputError(str(exc)) from None
    config = load_lab(name, str(network.network_address), 0)
    try:
        target = compose.parse_target(target_name, config)
        compose.check_fits(config, network)
        compose_folder.check(folder, force)
        lab_text = compose.lab_file_text(
            config.path.read_text(encoding="utf-8"), config.global_catalog.directory.name
        )
    except ValueError as exc:  # ExportError, FolderError
        raise InputError(str(exc)) from None
    table = _recipients(config)
    source = os.environ.get(SOURCE_SETTING)
    try:
        stand_in = None
        if target.server is not None:
            from harness.targets import postfix_export

            image = _image("postfix")
            owner = compose_folder.image_user(image, "postfix")
            stand_in = postfix_export.service(config, target.server, table, image, owner)
        export = compose.Export(config, network, config.path.name, _image("lab"), stand_in, bool(source))
        entry = stand_in.server if stand_in is not None else config.organization.servers[0].name
        files = compose.write_plan(export, lab_text, _example(config, table, entry))
        compose_folder.write(folder, files, export, Path(source) if source else None)
    except compose_folder.FolderError as exc:
        raise InputError(str(exc)) from None
    except compose_folder.ExportBroken as exc:
        raise BrokenError(str(exc)) from None
    hosts = len(compose.container_hosts(export))
    console.print(f"lab {config.name} exported to {folder}: {hosts} containers on {network}", soft_wrap=True)
    console.print(
        f"start it: cd {folder} && docker compose up -d   (see {folder / compose.README_FILE})",
        soft_wrap=True,
    )


def _image(kind: str) -> str:
    """The image the exported folder names: built here (or taken from a registry) when a Docker engine
    answers; else this checkout's content-keyed name, which `mailflow images build` makes on the
    machine that runs compose (the folder's README says so). Postfix's image is read at export (its
    user ids), so it needs the engine."""
    from harness.lab import containers, docker_lab, images

    if kind == "lab" and not os.environ.get("MAILFLOW_LAB_IMAGE") and containers.unavailable() is not None:
        return images.reference(kind, images.keys(images.source_root())[kind])
    try:
        return docker_lab.image(kind)
    except (ImportError, RuntimeError, ValueError) as exc:  # the image could not be had or built
        variable = f"MAILFLOW_{kind.upper()}_IMAGE"
        raise BrokenError(
            f"no {kind} image to export the lab with ({exc}); or name one in {variable}"
        ) from None


def _recipients(config: lab_config.LabConfig) -> RecipientTable:
    from harness.lab.gc import GlobalCatalogError, MockGlobalCatalog
    from harness.lab.recipients import RecipientTable

    catalog = MockGlobalCatalog(config.global_catalog)
    try:
        catalog.load()
    except GlobalCatalogError as exc:
        raise InputError(str(exc)) from None
    return RecipientTable.from_directory(
        catalog.connect("mailflow lab export"), config.global_catalog.base_dn
    )


def _example(config: lab_config.LabConfig, table: RecipientTable, server: str) -> compose.Example:
    """A mailbox on `server`, an Internet sender and the AUTH accounts, for the README."""
    from harness.lab import compose

    recipient = next((m.primary for m in table.mailboxes if m.server == server), None)
    recipient = recipient or f"postmaster@{config.organization.primary_domain}"
    internet = next((h.fqdn for h in config.internet_hosts if h.fqdn and "." in h.fqdn), "mail.example.net")
    logins = [(login.names[0], login.password) for login in table.logins]
    return compose.Example(recipient, f"someone@{internet.split('.', 1)[1]}", logins)


LAB_DIR = click.option(
    "--lab-dir",
    type=click.Path(path_type=Path),
    required=True,
    help="the folder of a lab started with `mailflow lab up --workdir DIR`",
)


def _control(lab_dir: Path, payload: dict[str, Any]) -> Any:
    """One request to the running lab: a wrong name or no lab there exits 2, a lab that broke 3."""
    from harness.lab.control import ControlError, request

    try:
        return request(lab_dir, payload)
    except ControlError as exc:
        raise (InputError if exc.kind == "input" else BrokenError)(str(exc)) from None


@click.command()
@LAB_DIR
@click.option("--server", default=None, help="only this server's queues")
@click.option("--all", "show_all", is_flag=True, help="also list empty queues")
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON, for scripts")
def queues(lab_dir: Path, server: str | None, show_all: bool, as_json: bool) -> None:
    """Queue Viewer: every queue of a running lab's servers, with state, count and next retry."""
    request: dict[str, Any] = {"op": "queues"} | ({"server": server} if server else {})
    rows = [row for row in _control(lab_dir, request) if show_all or row["count"]]
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
@click.argument("state", type=click.Choice(["up", "down", "force"]))
def lab_connector(lab_dir: Path, name: str, state: str) -> None:
    """Mark connector NAME up or down in the lab's link state, or force a connection on its queue
    (Queue Viewer's Force Connection: what waits for the connector's schedule, or for its next retry, is
    sent now)."""
    if state == "force":
        forced = _control(lab_dir, {"op": "force", "connector": name})
        console.print(f"{forced['name']}: {forced['released']} message(s) sent on their way")
        return
    result = _control(lab_dir, {"op": "connector", "name": name, "up": state == "up"})
    name = result["name"]
    console.print(f"link state {result['version']}: {name} is {result['connectors'].get(name, state)}")


@lab.command("freeze")
@LAB_DIR
@click.option("--server", required=True)
@click.argument("queue")
@click.option("--undo", is_flag=True, help="unfreeze")
def lab_freeze(lab_dir: Path, server: str, queue: str, undo: bool) -> None:
    """Freeze a link queue (it keeps and takes messages, sends none), or unfreeze it with --undo; on a
    server with a gateway connector also its X.400 queues ("X.400: MTA queue", "X.400: MTS-OUT"). On a
    real MTA standing in for the server: hold or release its messages (a queue of its own, or a
    message's id), as far as it can."""
    result = _control(lab_dir, {"op": "unfreeze" if undo else "freeze", "server": server, "queue": queue})
    if result["stand_in"]:
        console.print(f"{result['server']}: {escape(result['note'])}")
        for row in result["rows"]:
            console.print(f"  {row['queue']}: {row['count']} ({row['state']})")
        return
    console.print(f"{result['queue']} on {result['server']}: {result['state'] or result['note']}")


@lab.command("gateway")
@LAB_DIR
@click.argument("name")
@click.argument("state", type=click.Choice(["stop", "start"]))
def lab_gateway(lab_dir: Path, name: str, state: str) -> None:
    """Stop or start the service of gateway connector NAME. Stopped, it takes no memos from its foreign
    system and delivers none; the MTA keeps putting what is for it in its MTS-OUT folder, which
    `mailflow queues` lists. Started, it delivers what waits there."""
    result = _control(lab_dir, {"op": "gateway", "name": name, "running": state == "start"})
    console.print(f"{result['name']} on {result['server']}: {'started' if result['running'] else 'stopped'}")


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


@click.command()
@LAB_DIR
@click.option("--host", default=None, help="only what this Internet host received")
@click.option("--json", "as_json", is_flag=True, help="print the envelopes as JSON, for scripts")
def sinks(lab_dir: Path, host: str | None, as_json: bool) -> None:
    """What the lab's Internet hosts received, from the lab's folder (while it runs or after): one line
    per message with its envelope; the message itself is the .eml file named."""
    known = captures.hosts(lab_dir)
    if not known:
        raise InputError(
            f"no lab has run in {lab_dir}: it has no {captures.SINKS_FOLDER} folder "
            "(start one with `mailflow lab up --workdir DIR`)"
        )
    if host is not None:
        chosen = next((name for name in known if name.lower() == host.lower()), None)
        if chosen is None:
            raise InputError(f"no Internet host {host!r} in the lab at {lab_dir}; hosts: {', '.join(known)}")
        host = chosen
    try:
        found = captures.stored(lab_dir, host)
    except captures.CaptureFileError as exc:
        raise InputError(str(exc)) from None
    if as_json:
        click.echo(json.dumps([{**c.envelope, "message": str(c.message)} for c in found], indent=1))
        return
    # One line per message rather than a table: it reads (and greps) the same in any width.
    for capture in found:
        envelope = capture.envelope
        received = str(envelope["received"]).replace("+00:00", "Z")
        click.echo(
            f"{envelope['host']}  {received}  from {envelope['peer']}  <{envelope['mail_from']}> → "
            f"{', '.join(envelope['rcpt_to'])}  {capture.subject!r}  {capture.message.relative_to(lab_dir)}"
        )
    if not found:
        click.echo(f"nothing received{f' by {host}' if host else ''}")
