"""`mailflow import pcap|w3c|swaks FILE -o OUT`: a captured SMTP session (a packet capture, an Exchange
protocol log, a swaks transcript) becomes a trace that replays it against a lab server.

`-o` names a trace file (`.yaml`: every session of the input in one trace, in order) or a folder (one
trace per session); any other name is refused. Everything is converted before anything is written, and
each trace is loaded back before it is kept, so bad input, or a trace the loader would refuse, leaves
nothing behind, and a file it would have replaced is put back. Bad input exits 2
(`harness.exit_codes`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from harness.capture.importers import BadInput, Imported
from harness.capture.importers.replace import Replacement
from harness.capture.importers.to_trace import DEFAULT_SPEC, Converted, to_trace
from harness.capture.recorded import RecordedSession
from harness.cli.wording import wording_option
from harness.corpus import writer
from harness.corpus.claims import claims
from harness.corpus.trace import load
from harness.exit_codes import InputError
from harness.lab import config as lab_config
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
            click.option(
                "--codes-only",
                is_flag=True,
                help="expect reply codes and enhanced status codes only, not the texts (to replay a session "
                "captured on one MTA against another)",
            ),
            wording_option,
            click.option(
                "--outcome",
                "with_outcome",
                is_flag=True,
                help="expect the delivery of every message the capture shows accepted (where the lab "
                "delivers it), and nothing else",
            ),
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
@click.option(
    "--server-addr",
    default=None,
    help="the production server's address: only sessions to it are replayed (its own deliveries show "
    "where a message went); needed when the capture holds sessions to several servers",
)
def import_pcap(ports: tuple[int, ...], server_addr: str | None, **options: Any) -> None:
    """A pcap or pcapng capture: the SMTP sessions to one server (TCP reassembled)."""
    import harness.capture.importers.pcap as pcap
    from harness.capture.importers import by_server

    if server_addr is not None:
        try:
            by_server.normalized(server_addr)
        except ValueError:
            raise click.BadParameter(
                f"{server_addr!r} is no IP address", param_hint="--server-addr"
            ) from None

    def read(path: Path) -> Imported:
        capture = pcap.read(path, ports or pcap.SMTP_PORTS)
        if not capture.sessions and capture.cut is not None:
            raise BadInput(
                path,
                "",
                f"no complete SMTP session found: the file ends inside {capture.cut}, and every session "
                "was still open there",
            )
        chosen = by_server.select(capture.sessions, server_addr, path)
        said = [f"{path}: {line}" for line in chosen.left_out()]
        return Imported(chosen.sessions, chosen.onward, capture.warnings, said)

    _import(read, **options)


@import_group.command("w3c")
@_common
def import_w3c(**options: Any) -> None:
    """An Exchange 2003 / IIS SMTP protocol log in W3C extended format (exYYMMDD.log): the codes only."""
    import harness.capture.importers.w3c as w3c

    _import(lambda path: Imported(w3c.read(path)), **options)


@import_group.command("swaks")
@_common
def import_swaks(**options: Any) -> None:
    """A swaks transcript (what swaks prints), TLS-protected parts included."""
    import harness.capture.importers.swaks as swaks

    _import(lambda path: Imported(swaks.read(path)), **options)


def _import(
    read: Callable[[Path], Imported],
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
    codes_only: bool,
    wording: str,
    with_outcome: bool,
) -> None:
    single = _output_kind(output)
    config = _load_lab(lab)
    _check_names(config, server, client, virtual_server)
    imported = _read(read, source)
    folder = output.parent if single else output
    stem = output.stem if single else _slug(source.stem)
    groups = [imported.sessions] if single else [[s] for s in imported.sessions]
    names = [f"{stem}.yaml"] if len(groups) == 1 else [f"{stem}-{n}.yaml" for n in range(1, len(groups) + 1)]
    conversion = _Conversion(
        source=source,
        folder=folder,
        lab=lab,
        config=config,
        server=config.organization.server(server).name,
        client=client,
        virtual_server=virtual_server,
        spec=list(spec) or list(DEFAULT_SPEC),
        title=title or f"Imported from {source.name}",
        codes_only=codes_only,
        wording=wording,
        with_outcome=with_outcome,
        onward=imported.onward,
    )
    converted = []
    for number, (name, group) in enumerate(zip(names, groups, strict=True), 1):
        document_id = trace_id or f"imported/{_slug(Path(name).stem)}"
        if trace_id and len(groups) > 1:
            document_id = f"{trace_id}-{number}"
        converted.append(conversion.convert(name, group, document_id))
    for path in _write_all(folder, names, converted):
        click.echo(f"wrote {path}")
        _warn_unbacked(path)


def _warn_unbacked(path: Path) -> None:
    """A claim the written trace does not show is said now, in `mailflow check`'s words, rather than
    at the next check: the trace is kept (nothing is lost) for its author to add evidence or --spec."""
    for claim in claims(load(path)):
        if not claim.shown:
            said = f"warning: {path}:{claim.line}: {claim.missing} (set --spec to what it shows)"
            click.echo(said, err=True)


def _load_lab(lab: str) -> lab_config.LabConfig:
    from harness.lab.placement import relocation

    base, offset = relocation()
    if not lab_config.lab_path(lab).is_file():
        raise InputError(lab_config.missing_lab(lab, lab_config.lab_path(lab)))
    try:
        return lab_config.load(lab_config.lab_path(lab), base=base, port_offset=offset)
    except (SourceError, OSError) as exc:
        raise InputError(f"lab {lab}: {exc}") from exc


def _read(read: Callable[[Path], Imported], source: Path) -> Imported:
    """What the input holds, its warnings and notes said; bad input, or no session, is refused."""
    try:
        imported = read(source)
    except BadInput as exc:
        raise InputError(str(exc)) from exc
    except OSError as exc:
        raise InputError(f"{source}: {exc.strerror or exc}") from exc
    for warning in imported.warnings:
        click.echo(f"warning: {warning}", err=True)
    for note in imported.notes:
        click.echo(note, err=True)
    if not imported.sessions:
        raise InputError(f"{source}: no SMTP session found")
    return imported


@dataclass(frozen=True)
class _Conversion:
    """What every trace of one import is made with."""

    source: Path
    folder: Path
    lab: str
    config: lab_config.LabConfig
    server: str
    client: str
    virtual_server: str | None
    spec: list[str]
    title: str
    codes_only: bool
    wording: str
    with_outcome: bool
    onward: list[RecordedSession]

    def convert(self, name: str, group: list[RecordedSession], document_id: str) -> Converted:
        expected, outcome_notes = self._outcome(name, group) if self.with_outcome else (None, [])
        lab_file = lab_config.lab_path(self.lab)
        # A lab of the fixtures is named; any other by its path from where the trace is written.
        named = lab_file == lab_config.FIXTURES / "labs" / f"{self.lab}.yaml"
        return to_trace(
            group,
            trace_id=document_id,
            title=self.title,
            source=self.source.name,
            lab=self.lab if named else os.path.relpath(lab_file, self.folder.resolve()),
            config=self.config,
            server=self.server,
            client=self.client,
            virtual_server=self.virtual_server,
            spec=self.spec,
            file_stem=Path(name).stem,
            codes_only=self.codes_only,
            outcome=expected,
            outcome_notes=outcome_notes,
            wording=self.wording,
        )

    def _outcome(self, name: str, group: list[RecordedSession]) -> tuple[dict[str, Any] | None, list[str]]:
        from harness.capture.importers.outcome import outcome

        found = outcome(
            group,
            self.onward,
            lab_file=lab_config.lab_path(self.lab),
            config=self.config,
            server=self.server,
            client=self.client,
            virtual_server=self.virtual_server,
        )
        for note in found.notes:
            click.echo(f"{name}: {note}", err=True)
        return found.outcome, found.notes


def _output_kind(output: Path) -> bool:
    """True for a trace file, False for a folder; anything else is refused before the input is read."""
    if output.suffix in (".yaml", ".yml"):
        if output.is_dir():
            raise InputError(f"-o {output}: a folder is in the way of the trace file")
        return True
    if output.is_dir():
        return False
    if output.exists() or output.suffix:
        raise InputError(
            f"-o {output}: OUT must be a trace file ending in .yaml or .yml (every session in one trace) "
            "or a folder (one trace per session)"
        )
    return False


def _write_all(folder: Path, names: list[str], converted: list[Converted]) -> list[Path]:
    """Write every trace and its message files; each trace is loaded back before it is kept
    (`writer.write`). If one is refused, what this import wrote is removed again and every file it
    replaced is put back: nothing is lost."""
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    replacement = Replacement()
    try:
        for name, result in zip(names, converted, strict=True):
            for file_name, data in result.files.items():
                replacement.place(folder / file_name).write_bytes(data)
            try:
                writer.write(result.document, replacement.place(folder / name))
            except SourceError as exc:
                raise InputError(f"the imported trace {name} does not load: {exc}") from exc
    except BaseException:
        replacement.undo()
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    replacement.done()
    return [path for path in replacement.created if path.suffix == ".yaml"]


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
