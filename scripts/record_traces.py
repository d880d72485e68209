"""Records the traces in traces/recorded/: real SMTP sessions (Python's smtplib as the client) through the
recording proxy to EX1 of a running contoso lab, each written as a trace with its replies masked. The
delivered mail is added to each trace's outcome from what the lab shows, so the trace checks where the
message went as well as what the server said.

    .venv/bin/python scripts/record_traces.py      # rewrites traces/recorded/*.yaml
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.capture.importers.to_trace import to_trace  # noqa: E402
from harness.capture.proxy import RecordingProxy  # noqa: E402
from harness.capture.recorded import RecordedSession  # noqa: E402
from harness.judge.evidence import Delivery, DeliveryKind, Evidence  # noqa: E402
from harness.lab import config as lab_config  # noqa: E402
from harness.lab.runtime import Lab  # noqa: E402

OUT = ROOT / "traces" / "recorded"
PROXY_PORT = 2525


def local_delivery(smtp: smtplib.SMTP) -> None:
    smtp.ehlo("mail-out.fabrikam.com")
    smtp.sendmail("ann@fabrikam.com", ["alice@contoso.com"], "Subject: recorded\r\n\r\nHello Alice.\r\n")
    smtp.quit()


def relay_refused(smtp: smtplib.SMTP) -> None:
    smtp.ehlo("unknown.tailspin.example")
    with contextlib.suppress(smtplib.SMTPRecipientsRefused):  # the refusal is what is recorded
        smtp.sendmail("spam@tailspin.example", ["nancy@northwind.example"], "Subject: relay\r\n\r\nx\r\n")
    smtp.quit()


def starttls_delivery(smtp: smtplib.SMTP, context_for: Callable[[], ssl.SSLContext]) -> None:
    smtp.ehlo("mail-out.fabrikam.com")
    smtp.starttls(context=context_for())
    smtp.ehlo("mail-out.fabrikam.com")
    smtp.sendmail("ann@fabrikam.com", ["bob@contoso.com"], "Subject: over TLS\r\n\r\n.A dot line.\r\n")
    smtp.quit()


SESSIONS = {
    "local-delivery": ("Recorded: mail from the Internet to a mailbox on EX1", ["IN-3", "IN-6a"]),
    "relay-refused": ("Recorded: a stranger's relay attempt is refused", ["RELAY-1"]),
    "starttls-to-ex2-mailbox": ("Recorded: STARTTLS, then mail for a mailbox on EX2", ["PROTO-7", "IN-6b"]),
}


def _write(
    name: str, session: RecordedSession, config: lab_config.LabConfig, delivered: list[Delivery]
) -> None:
    """The recorded session as a trace, its outcome the mailboxes the lab delivered to."""
    title, spec = SESSIONS[name]
    converted = to_trace(
        [session],
        trace_id=f"recorded/{name}",
        title=title,
        source="`mailflow record` (scripts/record_traces.py)",
        lab="contoso",
        config=config,
        server="EX1",
        spec=spec,
        file_stem=name,
    )
    mailboxes = [
        {"mailbox": d.where, "server": d.server, "sender": d.sender or "<>"}
        for d in delivered
        if d.kind == DeliveryKind.MAILBOX
    ]
    converted.document["outcome"] = (
        {"delivered": mailboxes, "nothing_else_delivered": True} if delivered else {"nothing_delivered": True}
    )
    converted.write(OUT / f"{name}.yaml")
    print(f"{OUT / name}.yaml")


def _client_context(lab: Lab) -> ssl.SSLContext:
    # The lab's certificates name the server's FQDN; the client connects to the proxy's address.
    tls = lab.certificates.client_context()
    tls.check_hostname = False
    return tls


def _record(lab: Lab, internet: str, sessions: list[RecordedSession], finished: threading.Event) -> None:
    drivers: dict[str, Callable[[smtplib.SMTP], None]] = {
        "local-delivery": local_delivery,
        "relay-refused": relay_refused,
        "starttls-to-ex2-mailbox": lambda smtp: starttls_delivery(smtp, lambda: _client_context(lab)),
    }
    for name, drive in drivers.items():
        finished.clear()
        seen = len(Evidence.collect(lab).deliveries)
        with smtplib.SMTP(internet, PROXY_PORT, source_address=(internet, 0), timeout=10) as smtp:
            drive(smtp)
        finished.wait(10)
        lab.settle(timeout=10)
        _write(name, sessions[-1], lab.config, Evidence.collect(lab).deliveries[seen:])


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        config = lab_config.load(lab_config.lab_path("contoso"), base="127.230.0.0", port_offset=29000)
        with Lab(config, Path(folder)) as lab:
            ex1 = config.organization.server("EX1")
            internet = config.host("internet").address
            sessions: list[RecordedSession] = []
            finished = threading.Event()

            def keep(session: RecordedSession) -> None:
                sessions.append(session)
                finished.set()

            proxy = RecordingProxy(
                (ex1.default_virtual_server.address, ex1.default_virtual_server.port),
                keep,
                lab.certificates.server_context(ex1.fqdn),
                _client_context(lab),
                ex1.fqdn,
                internet,
            )
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True).start()
            asyncio.run_coroutine_threadsafe(proxy.start(internet, PROXY_PORT), loop).result(10)
            _record(lab, internet, sessions, finished)
            asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)


if __name__ == "__main__":
    main()
