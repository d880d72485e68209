"""`mailflow import pcap|w3c|swaks FILE -o OUT`: a captured SMTP session (a packet capture, an Exchange
protocol log, a swaks transcript) becomes a trace that replays it against a lab server.

`-o` names a trace file (`.yaml`: every session of the input in one trace, in order) or a folder (one
trace per session). Everything is converted and each trace loaded back before anything is moved into
place, so bad input, or a trace the loader would refuse, leaves nothing behind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from harness import tracefile
from harness.importers import BadInput
from harness.importers.to_trace import DEFAULT_SPEC, Converted, to_trace
from harness.lab import config as lab_config
from harness.recorded import RecordedSession
from harness.yamlsource import SourceError


@click.group("import")
def import_group() -> None:
    """Turn captured SMTP sessions into traces that replay them against a lab server."""


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        (
            click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
            click.option(
                "-o",
                "--output",
                type=click.Path(path_type=Path),
                required=True,
                help="a trace file (.yaml: all sessions in one trace) or a folder (one trace per session)",
            ),
            click.option("--lab", default="contoso", show_default=True, help="lab name or lab file"),
            click.option("--server", required=True, help="the lab server the sessions are replayed against"),
            click.option(
                "--client", default="internet", show_default=True, help="the lab host the sessions come from"
            ),
            click.option(
                "--virtual-server",
                default=None,
                help="the server's virtual server to connect to (default: the one at the recorded "
                "address, else the server's default one)",
            ),
            click.option(
                "--spec",
                multiple=True,
                help=f"catalogue ID the trace checks (repeat; default {', '.join(DEFAULT_SPEC)})",
            ),
            click.option("--id", "trace_id", default=None, help="trace id (default imported/<file name>)"),
            click.option("--title", default=None, help="trace title"),
        )
    ):
        command = option(command)
    return command


@import_group.command("pcap")
@_common
@click.option(
    "--port",
    "ports",
    type=int,
    multiple=True,
    help="server port of the SMTP sessions (repeat; default 25 and 587)",
)
def import_pcap(ports: tuple[int, ...], **options: Any) -> None:
    """A pcap or pcapng capture: every SMTP connection in it (TCP reassembled)."""
    import harness.importers.pcap as pcap

    _import(lambda path: pcap.read(path, ports or pcap.SMTP_PORTS), **options)


@import_group.command("w3c")
@_common
def import_w3c(**options: Any) -> None:
    """An Exchange 2003 / IIS SMTP protocol log in W3C extended format (exYYMMDD.log): the codes only."""
    import harness.importers.w3c as w3c

    _import(w3c.read, **options)


@import_group.command("swaks")
@_common
def import_swaks(**options: Any) -> None:
    """A swaks transcript (what swaks prints), TLS-protected parts included."""
    import harness.importers.swaks as swaks

    _import(swaks.read, **options)


def _import(
    read: Callable[[Path], list[RecordedSession]],
    *,
    source: Path,
    output: Path,
    lab: str,
    server: str,
    client: str,
    virtual_server: str | None,
    spec: Sequence[str],
    trace_id: str | None,
    title: str | None,
) -> None:
    from harness.runner import relocation

    base, offset = relocation()
    try:
        config = lab_config.load(lab_config.lab_path(lab), base=base, port_offset=offset)
    except (SourceError, OSError) as exc:
        raise click.ClickException(f"lab {lab}: {exc}") from exc
    _check_names(config, server, client, virtual_server)
    try:
        sessions = read(source)
    except BadInput as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"{source}: {exc.strerror or exc}") from exc
    if not sessions:
        raise click.ClickException(f"{source}: no SMTP session found")
    single = output.suffix in (".yaml", ".yml")
    folder = output.parent if single else output
    stem = output.stem if single else _slug(source.stem)
    groups = [sessions] if single else [[s] for s in sessions]
    names = [f"{stem}.yaml"] if len(groups) == 1 else [f"{stem}-{n}.yaml" for n in range(1, len(groups) + 1)]
    trace_lab = lab if lab_config.lab_path(lab) == lab_config.FIXTURES / "labs" / f"{lab}.yaml" else None
    converted = []
    for name, group in zip(names, groups, strict=True):
        document_id = trace_id or f"imported/{_slug(Path(name).stem)}"
        if trace_id and len(groups) > 1:
            document_id = f"{trace_id}-{names.index(name) + 1}"
        converted.append(
            to_trace(
                group,
                trace_id=document_id,
                title=title or f"Imported from {source.name}",
                source=source.name,
                lab=trace_lab or os.path.relpath(lab_config.lab_path(lab), folder.resolve()),
                config=config,
                server=config.organization.server(server).name,
                client=client,
                virtual_server=virtual_server,
                spec=list(spec) or list(DEFAULT_SPEC),
                file_stem=Path(name).stem,
            )
        )
    written = _write_all(folder, names, converted)
    for path in written:
        click.echo(f"wrote {path}")


def _write_all(folder: Path, names: list[str], converted: list[Converted]) -> list[Path]:
    """Write every trace and its message files; each trace is loaded back before it is kept
    (`tracefile.write`), and if one is refused, what this import wrote already is removed again."""
    folder.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    try:
        for name, result in zip(names, converted, strict=True):
            for file_name, data in result.files.items():
                created.append(folder / file_name)
                created[-1].write_bytes(data)
            try:
                tracefile.write(result.document, folder / name)
            except SourceError as exc:
                raise click.ClickException(f"the imported trace {name} does not load: {exc}") from exc
            created.append(folder / name)
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    return [path for path in created if path.suffix == ".yaml"]


def _check_names(config: lab_config.LabConfig, server: str, client: str, virtual_server: str | None) -> None:
    servers = [s.name for s in config.organization.servers]
    if server.lower() not in {s.lower() for s in servers}:
        raise click.BadParameter(
            f"lab {config.name} has no server {server!r} ({', '.join(servers)})", param_hint="--server"
        )
    hosts = [h.name for h in config.hosts.values()]
    if client.lower() not in {h.lower() for h in hosts}:
        raise click.BadParameter(f"lab {config.name} has no host {client!r}", param_hint="--client")
    if virtual_server is not None:
        names = [vs.name for vs in config.organization.server(server).virtual_servers]
        if virtual_server.lower() not in {n.lower() for n in names}:
            raise click.BadParameter(
                f"{server} has no virtual server {virtual_server!r} ({', '.join(names)})",
                param_hint="--virtual-server",
            )


def _slug(text: str) -> str:
    """A trace id part from a file name: lower case, and nothing the id pattern refuses."""
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-.") or "session"
