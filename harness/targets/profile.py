"""Target profile files: an outside MTA (harness/targets/outside.py) with what the harness should know
about it, checked against harness/schemas/target.schema.json. A mistake is a SourceError naming the
file, the line and the field.

```yaml
url: smtp://127.0.0.1:2525
stands_in_for: EX1          # the lab server it replaces; default EX1
profile: behaviour          # or exchange: judge the wording of traces in Exchange 2003's words too
capabilities: [pipelining, starttls, chunking, auth, size]   # omitted: read from its EHLO reply
tls: {verify: false}        # or {ca_file: staging-ca.pem}; default: the system's CAs
deliveries:                 # where its deliveries can be observed; omitted: not observable
  maildir: /var/mail/{mailbox}/     # {mailbox}: the local part, or {address}
  sink: 127.0.0.1:2526              # its next hop points at a lab sink the harness runs here
deviations: postfix         # the known deviations of a target the harness runs apply to it too
settle_quiet: 2             # seconds without a new delivery before the lab counts as settled
```
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from harness import yamlsource
from harness.judge.deviations import folder as deviation_files
from harness.targets.outside import Deliveries, OutsideMta, TlsSettings, parse_url

DEFAULT_SERVER = "EX1"
BEHAVIOUR = "behaviour"


@dataclass(frozen=True)
class Profile:
    mta: OutsideMta
    stands_in_for: str
    profile: str | None
    capabilities: frozenset[str] | None  # None: read from the MTA's EHLO reply
    source: Path
    server_line: int | None  # where stands_in_for is written, for an error about it
    deviations: str | None = None  # whose known deviations (harness/targets/deviations/) it shares


def looks_like_profile(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or Path(spec).is_file()


def load(path: Path) -> Profile:
    document = yamlsource.load(path)
    if not isinstance(document.data, dict):
        raise document.error([], "a target profile is a mapping with at least url: (smtp://HOST:PORT)")
    yamlsource.validate(document, "target.schema.json")
    data = document.data
    try:
        scheme, host, port = parse_url(data["url"])
    except ValueError as exc:
        raise document.error(["url"], str(exc)) from None
    tls = data.get("tls") or {}
    ca_file = None
    if "ca_file" in tls:
        ca_file = (path.parent / tls["ca_file"]).resolve()
        if not ca_file.is_file():
            raise document.error(["tls", "ca_file"], f"no such file: {ca_file}")
    deliveries = data.get("deliveries") or {}
    sink = None
    if "sink" in deliveries:
        address, _, number = deliveries["sink"].rpartition(":")
        try:
            loopback = ipaddress.IPv4Address(address).is_loopback
        except ValueError:
            loopback = False
        if not loopback or not 0 < int(number) < 65536:
            raise document.error(
                ["deliveries", "sink"],
                f"{deliveries['sink']!r}: the sink listens on ADDRESS:PORT in 127.0.0.0/8 (a lab sink never "
                "listens elsewhere)",
            )
        sink = (address, int(number))
    maildir = deliveries.get("maildir")
    if maildir is not None and "{mailbox}" not in maildir and "{address}" not in maildir:
        raise document.error(
            ["deliveries", "maildir"],
            f"{maildir!r} names no mailbox: put {{mailbox}} (the local part) or {{address}} in the path",
        )
    mta = OutsideMta(
        scheme,
        host,
        port,
        TlsSettings(bool(tls.get("verify", True)), ca_file),
        Deliveries(maildir, sink),
        float(data.get("settle_quiet", 2.0)),
    )
    known = sorted(p.stem for p in deviation_files().glob("*.yaml"))
    if "deviations" in data and data["deviations"] not in known:
        raise document.error(
            ["deviations"], f"no known deviations of {data['deviations']!r}; there are: {', '.join(known)}"
        )
    capabilities = data.get("capabilities")
    return Profile(
        mta=mta,
        stands_in_for=data.get("stands_in_for", DEFAULT_SERVER),
        # "behaviour" names no wording: only the behaviour layer is judged (harness/targets: Target.profile).
        profile=None if data.get("profile", BEHAVIOUR) == BEHAVIOUR else data["profile"],
        capabilities=frozenset(capabilities) if capabilities is not None else None,
        source=path,
        server_line=document.line_of(["stands_in_for"]) if "stands_in_for" in data else None,
        deviations=data.get("deviations"),
    )
