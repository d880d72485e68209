"""`mailflow record`: the recording proxy's command (harness/capture/proxy.py)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import tempfile
from pathlib import Path

import click
from rich.console import Console

from harness.capture.importers.to_trace import to_trace
from harness.capture.proxy import RecordingProxy
from harness.capture.recorded import RecordedSession
from harness.cli.wording import wording_option
from harness.exit_codes import BrokenError, InputError
from harness.lab import config as lab_config
from harness.lab.certificates import LabCertificates
from harness.yamlsource import SourceError

console = Console()


def _endpoint(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"{text!r} is not HOST:PORT", param_hint=what)
    return host.strip("[]"), int(port)


@click.command(
    "record",
    epilog="Exit codes: 0 the sessions were written; 2 a wrong option or lab; "
    "3 the proxy could not listen (the address is in use or not this machine's).",
)
@click.option("--listen", required=True, help="ADDR:PORT the proxy listens on, e.g. 127.0.0.1:2525")
@click.option("--upstream", required=True, help="HOST:PORT of the server the sessions go on to")
@click.option("-o", "output", type=click.Path(path_type=Path), required=True, help="trace file to write")
@click.option("--lab", "lab_name", default="contoso", show_default=True, help="the lab the trace replays in")
@click.option("--server", default="EX1", show_default=True, help="the lab server the trace connects to")
@click.option("--client", default="internet", show_default=True, help="the lab host the trace connects from")
@click.option("--spec", "spec_ids", multiple=True, default=("IN-3",), show_default=True, help="catalogue IDs")
@click.option("--upstream-name", default=None, help="the upstream server's name, for its TLS certificate")
@click.option("--sessions", "count", type=int, default=0, help="stop after this many sessions (0: Ctrl-C)")
@wording_option
def record_command(
    listen: str,
    upstream: str,
    output: Path,
    lab_name: str,
    server: str,
    client: str,
    spec_ids: tuple[str, ...],
    upstream_name: str | None,
    count: int,
    wording: str,
) -> None:
    """Relay live SMTP sessions to the upstream server and write each one as a trace: the client's
    commands in order, every reply expected by its code and masked text. STARTTLS is terminated on
    both sides with a certificate from the lab's CA; AUTH credentials are never written."""
    listen_at, upstream_at = _endpoint(listen, "--listen"), _endpoint(upstream, "--upstream")
    try:
        config = lab_config.load(lab_config.lab_path(lab_name))
        name = upstream_name or config.organization.server(server).fqdn
    except SourceError as exc:
        raise InputError(str(exc)) from exc
    except KeyError as exc:
        raise InputError(f"--server: {exc.args[0] if exc.args else exc}") from exc
    recorder = _Recorder(output, lab_name, config, server, client, spec_ids, count, wording)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(recorder.serve((listen, listen_at), upstream_at, name))
    console.print(f"{len(recorder.written)} session(s) written")


class _Recorder:
    """Writes each session the proxy hands over as a trace, until `count` are written (0: never)."""

    def __init__(
        self,
        output: Path,
        lab_name: str,
        config: lab_config.LabConfig,
        server: str,
        client: str,
        spec_ids: tuple[str, ...],
        count: int,
        wording: str,
    ) -> None:
        self.output = output
        self.wording = wording
        self.lab_name = lab_name
        self.config = config
        self.server = server
        self.client = client
        self.spec_ids = spec_ids
        self.count = count
        self.written: list[Path] = []
        self.done = asyncio.Event()

    def keep(self, session: RecordedSession) -> None:
        output = self.output
        path = (
            output
            if not self.written
            else output.with_name(f"{output.stem}-{len(self.written) + 1}{output.suffix}")
        )
        converted = to_trace(
            [session],
            trace_id=f"recorded/{path.stem}",
            title=f"Recorded session from {session.client} to {session.server}:{session.server_port}",
            source="the recording proxy",
            lab=self.lab_name,
            config=self.config,
            server=self.server,
            client=self.client,
            spec=self.spec_ids,
            file_stem=path.stem,
            wording=self.wording,
        )
        try:
            converted.write(path)
        except SourceError as exc:
            console.print(f"[red]session from {session.client} not written:[/red] {exc}", highlight=False)
            return
        self.written.append(path)
        console.print(f"{path}: {len(session.exchanges)} replies recorded", highlight=False)
        if self.count and len(self.written) >= self.count:
            self.done.set()

    async def serve(
        self, listen: tuple[str, tuple[str, int]], upstream_at: tuple[str, int], name: str
    ) -> None:
        """Relay until `count` sessions are written, or Ctrl-C; `listen`: the address as given and read."""
        with tempfile.TemporaryDirectory(prefix="mailflow-record-") as folder:
            certificates = LabCertificates(Path(folder), self.config.name)
            # Towards the upstream nothing is checked: the proxy sits in the middle on purpose, and the
            # upstream's certificate comes from another CA (its own lab's, or a real one).
            client_tls = ssl.create_default_context()
            client_tls.check_hostname = False
            client_tls.verify_mode = ssl.CERT_NONE
            proxy = RecordingProxy(
                upstream_at,
                self.keep,
                server_tls=certificates.server_context(name),
                client_tls=client_tls,
                upstream_name=name,
            )
            try:
                host, port = await proxy.start(*listen[1])
            except OSError as exc:
                raise BrokenError(f"--listen {listen[0]}: cannot listen: {exc.strerror or exc}") from exc
            console.print(f"recording {host}:{port} → {upstream_at[0]}:{upstream_at[1]}; Ctrl-C stops")
            try:
                await self.done.wait()
            finally:
                await proxy.stop()
