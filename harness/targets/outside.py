"""An MTA the harness does not start, reached at a host and port: a staging relay, Exchange itself, a
cloud gateway, a team's own Postfix. It stands in for one server of the lab (EX1 unless named): the
sessions that would go to that server go to it instead, and the rest of the lab runs as for the reference
target.

`smtp://HOST:PORT` (port 25 if omitted), `submission://HOST:PORT` (587) and `smtps://HOST:PORT` (465,
TLS from the first byte). What it offers is read once per process from its EHLO reply (`probe`), unless
a target profile file (harness/targets/profile.py) lists it.
"""

from __future__ import annotations

import ipaddress
import smtplib
import socket
import ssl
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from harness.corpus.trace import Session, Trace
from harness.lab.captures import Capture
from harness.lab.config import Host, LabConfig
from harness.lab.recipients import RecipientTable
from harness.lab.runtime import Lab, LabError
from harness.lab.sinks import SinkHost
from harness.lab.standin import MailboxDelivery
from harness.targets.daemon import StandInError
from harness.targets.delivery_readers import DeliveryReader, MaildirReader

# The scheme of a target URL, and the port it means when the URL names none (RFC 5321, 6409, 8314).
SCHEMES = {"smtp": 25, "submission": 587, "smtps": 465}
URL_FORMS = "smtp://HOST[:PORT], submission://HOST[:PORT], smtps://HOST[:PORT]"


class Unreachable(StandInError):
    """Nothing answers SMTP at the target's address: the run cannot start (exit 3)."""


@dataclass(frozen=True)
class TlsSettings:
    """How the replay and the probe check the outside MTA's certificate: against the system's CAs by
    default, against `ca_file` when given, or not at all (`verify: false`, for a staging relay with a
    self-signed certificate)."""

    verify: bool = True
    ca_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


@dataclass(frozen=True)
class Deliveries:
    """Where the outside MTA's deliveries can be seen: a Maildir per mailbox (`{mailbox}` is the local
    part, `{address}` the whole address), and/or the address of a lab sink its next hop points at."""

    maildir: str | None = None
    sink: tuple[str, int] | None = None


@dataclass(frozen=True)
class OutsideMta:
    scheme: str
    host: str
    port: int
    tls: TlsSettings = field(default_factory=TlsSettings)
    deliveries: Deliveries = field(default_factory=Deliveries)
    quiet: float = 2.0
    """Seconds the observed mailboxes and sink must stay unchanged before the lab counts as settled."""

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def implicit_tls(self) -> bool:
        return self.scheme == "smtps"

    @property
    def on_loopback(self) -> bool:
        """On 127.0.0.0/8 a session can keep the lab client's own source address (relay by IP is then
        checked); elsewhere the kernel chooses it."""
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host.lower() == "localhost"


def is_url(spec: str) -> bool:
    return spec.partition("://")[0].lower() in SCHEMES and "://" in spec


def parse_url(text: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a target URL; ValueError saying what is wrong and the forms there are."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a target URL ({exc}); the forms are {URL_FORMS}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"{text!r}: unknown scheme {parts.scheme!r}; the forms are {URL_FORMS}")
    if not parts.hostname:
        raise ValueError(f"{text!r} names no host; the forms are {URL_FORMS}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{text!r}: a target URL is a host and a port only; the forms are {URL_FORMS}")
    return scheme, parts.hostname, port if port is not None else SCHEMES[scheme]


# The name the probe greets with: RFC 2606 keeps .test for testing, so it is nobody's real host.
_PROBE_NAME = "probe.mailflow.test"


@cache
def probe(mta: OutsideMta, timeout: float = 10.0) -> frozenset[str]:
    """The EHLO keywords the outside MTA offers (upper case), after STARTTLS too when it offers that and
    the handshake succeeds (a submission server offers AUTH only then). Unreachable if nothing answers.
    Once per process: every trace of a run sees the same server."""
    try:
        if mta.implicit_tls:
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                mta.host, mta.port, _PROBE_NAME, timeout=timeout, context=mta.tls.context()
            )
        else:
            client = smtplib.SMTP(mta.host, mta.port, _PROBE_NAME, timeout=timeout)
    except ssl.SSLError as exc:
        raise Unreachable(f"{mta.url} answered, but {_tls_failed(exc)}") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise Unreachable(f"nothing answers at {mta.url}: {_why(exc)}") from None
    try:
        code, _ = client.ehlo()
        if code != 250:
            raise Unreachable(f"{mta.url} refused EHLO with {code}: it cannot stand in for a lab server")
        offered = {keyword.upper() for keyword in client.esmtp_features}
        if "STARTTLS" in offered and not mta.implicit_tls:
            try:
                client.starttls(context=mta.tls.context())
                client.ehlo()
                offered |= {keyword.upper() for keyword in client.esmtp_features}
            except (OSError, smtplib.SMTPException):
                # What the server offers before TLS is still what it offers: a trace's own STARTTLS
                # step will show why the handshake fails.
                pass
        return frozenset(offered)
    except (OSError, smtplib.SMTPException) as exc:
        raise Unreachable(f"{mta.url} did not answer EHLO: {_why(exc)}") from None
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


def _tls_failed(exc: ssl.SSLError) -> str:
    return (
        f"the TLS handshake failed ({exc.reason or exc}): a target profile's tls: {{ca_file: FILE}} names "
        "the CA that signed its certificate, tls: {verify: false} skips the check"
    )


def _why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer (timed out)"
    if isinstance(exc, socket.gaierror):
        return f"the name does not resolve ({exc.strerror})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


class Observer:
    """The outside MTA as the lab sees it (harness/lab/runtime.py: OutsideServer): its mailboxes through
    a reader, what it relays through a lab sink at the address its next hop points at. It settles when
    neither changes for `quiet` seconds: an MTA the harness does not run has no queue it can read."""

    def __init__(self, mta: OutsideMta, server: str) -> None:
        self.mta = mta
        self.server = server
        self._readers: list[DeliveryReader] = []
        self._sink: SinkHost | None = None
        self._lab: Lab | None = None
        self._state: Hashable = None
        self._changed_at = time.monotonic()

    def start(self, lab: Lab) -> None:
        self._lab = lab
        observed = self.mta.deliveries
        if observed.maildir is not None:
            directory = lab.gc.connect(f"{self.mta.url} mailboxes")
            table = RecipientTable.from_directory(directory, lab.config.global_catalog.base_dn)
            here = [m.primary for m in table.mailboxes if m.server.lower() == self.server.lower()]
            self._readers.append(MaildirReader(observed.maildir, here, self.server))
        if observed.sink is not None:
            address, port = observed.sink
            sink = SinkHost(Host(f"next hop of {self.mta.url}", None, address, "internet"), port)
            try:
                lab.run(sink.start())
            except OSError as exc:
                raise LabError(
                    f"the sink for {self.mta.url}'s next hop cannot listen on {address}:{port}: "
                    f"{exc.strerror or exc}"
                ) from exc
            self._sink = sink
        for reader in self._readers:
            reader.begin()
        self._state = self._now()

    def stop(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None and self._lab is not None:
            self._lab.run(sink.stop())

    def _now(self) -> Hashable:
        relayed = len(self._sink.captures) if self._sink is not None else 0
        return (tuple(reader.state() for reader in self._readers), relayed)

    def idle(self, since: float) -> bool:
        if not self._readers and self._sink is None:
            return True  # nothing of it can be seen: nothing to wait for
        state = self._now()
        if state != self._state:
            self._state, self._changed_at = state, time.monotonic()
        return time.monotonic() - max(since, self._changed_at) >= self.mta.quiet

    def deliveries(self) -> list[MailboxDelivery]:
        return [delivery for reader in self._readers for delivery in reader.deliveries()]

    def relayed(self) -> list[tuple[str, Capture]]:
        if self._sink is None or self._lab is None:
            return []
        config = self._lab.config
        return [(_meant_for(config, capture, self._sink.name), capture) for capture in self._sink.captures]


def _meant_for(config: LabConfig, capture: Capture, fallback: str) -> str:
    """The lab's Internet host a relayed message was meant for: the exchanger of its first recipient's
    domain."""
    if not capture.rcpt_tos:
        return fallback
    address = exchanger(config, capture.rcpt_tos[0].rpartition("@")[2])
    by_address = {host.address: host.name for host in config.hosts.values()}
    return by_address.get(address or "", fallback)


def exchanger(config: LabConfig, domain: str) -> str | None:
    """The address the lab's DNS gives a sending MTA for `domain`: its most preferred exchanger's, else
    the domain's own. Read from the lab file's records, so the look-up adds no query to the DNS log the
    trace checks."""
    domain = domain.lower().rstrip(".")
    by_address = {host.address for host in config.hosts.values()}

    def addresses(name: str) -> list[str]:
        return [r.value for r in config.records if r.rtype == "A" and r.name.lower().rstrip(".") == name]

    exchangers = sorted(
        (int(r.value.split()[0]), r.value.split()[1].lower().rstrip("."))
        for r in config.records
        if r.rtype == "MX" and r.name.lower().rstrip(".") == domain and len(r.value.split()) == 2
    )
    for name in [name for _, name in exchangers] or [domain]:
        for address in addresses(name):
            if address in by_address:
                return address
    return None


# An address no lab lists (TEST-NET-1, RFC 5737): how the server treats a client it knows nothing of.
_STRANGER = "192.0.2.1"


def singled_out(trace: Trace, config: LabConfig, server: str) -> list[str]:
    """The clients of `trace` whose sessions to `server` its relay or connection rules treat otherwise
    than a stranger's: the trace shows that policy only from the client's own address."""
    me = config.organization.server(server)
    addresses = {vs.address: vs for vs in me.virtual_servers}
    found: list[str] = []
    for item in trace.sessions:
        if not isinstance(item, Session):
            continue
        connect = item.connect
        if connect.server is not None:
            to = me.default_virtual_server.address if connect.server.lower() == server.lower() else None
        else:
            to = exchanger(config, connect.mx) if connect.mx else None
        vs = addresses.get(to or "")
        if vs is None:
            continue
        client = config.host(item.client).address
        if vs.relay.permits_address(client) != vs.relay.permits_address(_STRANGER) or (
            vs.connection.permits(client) != vs.connection.permits(_STRANGER)
        ):
            found.append(item.client)
    return sorted(set(found))
