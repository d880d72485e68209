"""Targets: what stands in for the server under test. Each declares its capabilities, and a trace that
requires one a target lacks is skipped with the reason.

`reference` runs every Exchange server of the lab as the reference MTA, so everything is visible
(white box: tracking logs, LDAP log, queues, mailbox stores). `postfix` runs Postfix from its Debian
package in place of one server (EX1 unless named: `postfix:EX2`), in that server's network namespace;
the rest of the lab stays as it is. What it shows is black box: replies, DNS queries, what reaches its
mailboxes and the other hosts.

An MTA the harness does not start stands in for a server too: `smtp://HOST:PORT`, `submission://...`,
`smtps://...`, or a target profile file that says more about it (harness/targets/outside.py,
harness/targets/profile.py). The lab runs without that server; the sessions for it go to HOST:PORT.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from harness.corpus.script import Auth, Bdat, Pipeline, StartTls, TlsHandshake
from harness.corpus.trace import EXCHANGE_WORDING, ForeignMemo, LabAction, LabVerb, Session, Submission, Trace
from harness.judge.deviations import Deviation, Tolerate, deviations
from harness.judge.records import Failure
from harness.lab import config as lab_config
from harness.lab import containers, netns, sender
from harness.lab.admin import LabAdmin
from harness.lab.certificates import LabCertificates
from harness.lab.config import LabConfig
from harness.lab.docker_lab import DockerLab
from harness.lab.recipients import RecipientTable
from harness.lab.runtime import Lab, LabError
from harness.lab.standin import StandIn
from harness.targets import exim, opensmtpd, postfix, profile
from harness.targets.outside import Observer, OutsideMta, is_url, parse_url, probe, singled_out


class NoSuchServer(ValueError):
    """A real MTA is to stand in for a server the lab does not have: the user's input is wrong."""


@dataclass(frozen=True)
class Target:
    name: str
    capabilities: frozenset[str]
    description: str
    stands_in_for: str | None = None  # the lab server a real MTA replaces; None: the reference MTA
    adapter: Adapter | None = None  # how that MTA is configured and run
    profile: str | None = None
    """Whose words the target answers in: `exchange` for the reference MTA, which models Exchange 2003.
    Every target is judged on behaviour (reply class, code, enhanced status code, EHLO keywords
    offered, and the outcome); a trace's wording (its texts, line layout, EHLO keyword order, banner)
    only where the target's profile is the trace's `wording` (docs/decisions.md)."""
    outside: OutsideMta | None = None  # an MTA the harness does not start, at a host and port
    source: str = ""  # where stands_in_for was written (a profile's file:line), for an error about it
    deviations_of: str | None = None  # whose known deviations apply (an outside MTA's profile says)
    backend: str = "local"
    """Where the lab's hosts run: `local` (in this process, a real MTA in a network namespace) or
    `docker` (each host in a container of its own: harness/lab/docker_lab.py)."""

    def judges_wording(self, trace: Trace) -> bool:
        return self.profile is not None and self.profile == trace.wording

    @property
    def needs_netns(self) -> bool:
        return self.adapter is not None and self.backend == "local"

    @property
    def in_docker(self) -> bool:
        return self.backend == "docker"

    def missing(self, trace: Trace) -> list[str]:
        """What the trace needs that this target does not have (then it is skipped, with these)."""
        lacking = sorted(needs(trace, self.stands_in_for) - self.capabilities)
        if self.outside is not None and trace.senders:
            # A via: sender lives in the lab's network namespaces, whose DNS and routes lead only there.
            lacking.append(f"a route from the real MTA on {', '.join(trace.senders)} to {self.outside.url}")
        if self.outside is not None and not self.outside.on_loopback and self.stands_in_for is not None:
            config = lab_config.load(trace.lab)
            for client in singled_out(trace, config, self.stands_in_for):
                lacking.append(
                    f"sessions from {client}'s own address, which its rules single out ({self.outside.url} "
                    "is off loopback: sessions come from this machine's address)"
                )
        return lacking

    def tolerate(self, trace: str, spec: Sequence[str] = ()) -> Tolerate | None:
        """This target's known deviations for `trace`, as the replay asks about a reply mismatch."""
        known = [d for d in deviations(self.deviations_of or self.name) if d.applies_to(trace, spec)]
        if not known:
            return None

        def entry(failure: Failure) -> Deviation | None:
            return next((d for d in known if d.matches(failure)), None)

        return entry

    def unavailable(self, trace: Trace | None = None) -> str | None:
        """None if this target can run here (and `trace`, whose real sending MTA needs the same: a
        network namespace, Postfix), else why not (a reason to skip, not a failure)."""
        if self.in_docker:  # every MTA, a sending one too, is in a container of its image
            return containers.unavailable()
        if trace is not None and trace.senders and (reason := sender.available()) is not None:
            return f"the trace sends through a real MTA on {', '.join(trace.senders)}: {reason}"
        if self.adapter is None:
            return None
        return netns.available() or self.adapter.installed()

    def lab(
        self,
        config: LabConfig,
        workdir: Path | None = None,
        control: bool = False,
        senders: Sequence[str] = (),
    ) -> Lab:
        if self.stands_in_for is None or (self.adapter is None and self.outside is None):
            if self.in_docker:
                return DockerLab(config, workdir, control=control, senders=senders)
            return Lab(config, workdir, reference_servers=True, control=control, senders=senders)
        servers = [s.name for s in config.organization.servers]
        server = next((name for name in servers if name.lower() == self.stands_in_for.lower()), None)
        if server is None:
            where = f"{self.source}: stands_in_for: " if self.source else ""
            raise NoSuchServer(
                f"{where}target {self.name}: lab {config.name} has no server {self.stands_in_for!r}; "
                f"servers: {', '.join(servers)}"
            )
        if self.outside is not None:
            if self.in_docker:
                raise LabError("an MTA outside the lab is a target of the local backend only")
            return Lab(
                config,
                workdir,
                reference_servers=True,
                control=control,
                senders=senders,
                outside={server: Observer(self.outside, server)},
            )
        adapter = self.adapter
        assert adapter is not None

        def stand_in(lab: LabAdmin) -> StandIn:
            directory = lab.gc.connect(f"{self.name} configuration")
            table = RecipientTable.from_directory(directory, lab.config.global_catalog.base_dn)
            root = lab.workdir / f"{server}-{adapter.name}"
            return adapter.make(lab.config, server, table, root, lab.certificates)

        if self.in_docker:
            return DockerLab(
                config,
                workdir,
                control=control,
                stand_ins={server: stand_in},
                mtas={server: adapter.name},
                senders=senders,
            )
        return Lab(
            config,
            workdir,
            reference_servers=True,
            control=control,
            stand_ins={server: stand_in},
            senders=senders,
        )


@dataclass(frozen=True)
class Adapter:
    """A real MTA: whether it is installed here (None, or why not), and how to make it stand in."""

    name: str
    installed: Callable[[], str | None]
    make: Callable[[LabConfig, str, RecipientTable, Path, LabCertificates | None], StandIn]


# The capabilities a server shows in its EHLO reply, by the keyword it offers them with (RFC 4954, 3207,
# 2920, 3030): a target declares them exactly when its MTA, as rendered, offers them
# (tests/test_mta_capabilities.py).
EHLO_CAPABILITIES = {
    "AUTH": "auth",
    "STARTTLS": "starttls",
    "PIPELINING": "pipelining",
    "CHUNKING": "chunking",
}

# Capabilities that only decide which checks can be made: a trace that declares them still runs on a
# target without them, and those checks are reported as not observable (harness/judge/expectations.py).
OBSERVATIONAL = frozenset(
    {"tracking", "ldap_log", "queues", "connection_log", "mailbox", "outbound", "dns_log"}
)


def needs(trace: Trace, stand_in: str | None = None) -> frozenset[str]:
    """What running `trace` takes: its declared `requires:` less what only decides checks, plus what its
    items imply. Store submissions, foreign memos and lab actions drive reference servers; AUTH and
    STARTTLS need those configured; a virtual server other than the default one of the stood-in server
    needs its own settings rendered."""
    # A foreign system's mailbox is reached through a gateway of a reference server: a real MTA standing
    # in for another server takes part as Exchange does, handing on the foreign address encapsulated in
    # an IMCEA address (harness/targets/plan.py).
    needed = set(trace.requires - OBSERVATIONAL)
    for item in trace.sessions:
        if isinstance(item, Submission | ForeignMemo | LabAction) and not (
            isinstance(item, LabAction) and item.action in (LabVerb.SETTLE, LabVerb.SINK_RULE)
        ):
            needed.add("reference")
        if not isinstance(item, Session):
            continue
        if any(isinstance(step, Auth) for step in item.steps):
            needed.add("auth")
        if any(isinstance(step, StartTls | TlsHandshake) for step in item.steps):
            needed.add("starttls")
        # Commands sent without waiting for replies are for a server that offers PIPELINING (RFC 2920),
        # BDAT for one that offers CHUNKING (RFC 3030): elsewhere the trace is not a fair test.
        if any(isinstance(step, Pipeline) for step in item.steps):
            needed.add("pipelining")
        if any(isinstance(step, Bdat) for step in item.steps):
            needed.add("chunking")
        connect = item.connect
        if stand_in and connect.virtual_server and (connect.server or "").lower() == stand_in.lower():
            needed.add("virtual_servers")
    return frozenset(needed)


REFERENCE = Target(
    name="reference",
    capabilities=frozenset(
        {
            "tracking",
            "ldap_log",
            "mailbox",
            "queues",
            "reference",
            "gateway",
            "auth",
            "starttls",
            "virtual_servers",
            "pipelining",
            "chunking",
            "connection_log",
            "outbound",
            "dns_log",
        }
    ),
    description="the reference MTA (Exchange 2003 model) runs every server of the lab",
    profile=EXCHANGE_WORDING,
)

# Black box: replies, DNS queries (the lab's DNS logs them), mailboxes and the Internet hosts.
POSTFIX = Target(
    name="postfix",
    capabilities=frozenset(
        {"mailbox", "outbound", "dns_log", "starttls", "auth", "virtual_servers", "pipelining", "chunking"}
    ),
    description="Postfix (Debian package) stands in for one lab server, in its own network namespace",
    stands_in_for="EX1",
    adapter=Adapter("postfix", postfix.installed, postfix.PostfixStandIn),
)

EXIM = Target(
    name="exim",
    capabilities=frozenset(
        {"mailbox", "outbound", "dns_log", "starttls", "auth", "virtual_servers", "pipelining", "chunking"}
    ),
    description="Exim 4 (Debian package, unpacked) stands in for one lab server, in its network namespace",
    stands_in_for="EX1",
    adapter=Adapter("exim", exim.installed, exim.EximStandIn),
)

OPENSMTPD = Target(
    name="opensmtpd",
    # No "starttls": the package's server-side TLS fails against OpenSSL 3 (see opensmtpd.py). No
    # "pipelining": OpenSMTPD 6.8 does not offer PIPELINING, and answers commands sent after the end of
    # data in the same write with 500 "Pipelining not supported". No "auth": see opensmtpd.py.
    capabilities=frozenset({"mailbox", "outbound", "dns_log", "virtual_servers"}),
    description="OpenSMTPD (Debian package, unpacked) stands in for one lab server, in its network namespace",
    stands_in_for="EX1",
    adapter=Adapter("opensmtpd", opensmtpd.installed, opensmtpd.OpenSmtpdStandIn),
)

TARGETS = {target.name: target for target in (REFERENCE, POSTFIX, EXIM, OPENSMTPD)}

BACKENDS = ("local", "docker")


def on_backend(target: Target, backend: str) -> Target:
    """`target` with its lab on `backend`; ValueError naming the backends for any other word."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
    if backend == "docker" and target.outside is not None:
        raise ValueError(
            f"target {target.name} is an MTA outside the lab: it runs with --backend local only (the "
            "Docker lab's network has no route to it)"
        )
    return dataclasses.replace(target, backend=backend)


TARGET_FORMS = (
    f"a name ({', '.join(sorted(TARGETS))}; a real MTA may name the server it stands in for: postfix:EX2), "
    "a URL (smtp://HOST[:PORT], submission://HOST[:PORT], smtps://HOST[:PORT]) or a target profile file "
    "(.yaml)"
)


def get(name: str) -> Target:
    """The one place a `--target` word becomes a Target: a name (`postfix:EX2` stands Postfix in for EX2
    instead of EX1), a URL of an MTA the harness does not start, or a target profile file. ValueError
    for a word that is none of these; SourceError for a profile file with a mistake; Unreachable
    (harness/targets/outside.py) when nothing answers at the URL."""
    if is_url(name):
        return _outside(name)
    if profile.looks_like_profile(name):
        return _profiled(name)
    base, _, server = name.partition(":")
    try:
        target = TARGETS[base]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; a target is {TARGET_FORMS}") from None
    if server:
        if target.stands_in_for is None:
            raise ValueError(f"target {base!r} runs every lab server; it cannot stand in for {server!r}")
        target = dataclasses.replace(target, name=name, stands_in_for=server)
    return target


def _capabilities(mta: OutsideMta, declared: frozenset[str] | None) -> frozenset[str]:
    """What the outside MTA can be judged on: the protocol capabilities it offers (declared in its
    profile, or read from its EHLO reply), and what of its deliveries the harness can see."""
    # Probed even when declared: an address where nothing answers stops the run before any trace.
    offered = probe(mta)
    if declared is None:
        declared = frozenset(EHLO_CAPABILITIES[k] for k in offered if k in EHLO_CAPABILITIES)
    seen = {"mailbox"} if mta.deliveries.maildir else set()
    seen |= {"outbound"} if mta.deliveries.sink else set()
    return frozenset(declared & set(EHLO_CAPABILITIES.values())) | seen


def _outside(url: str) -> Target:
    scheme, host, port = parse_url(url)
    mta = OutsideMta(scheme, host, port)
    return _outside_target(url, mta, None, "EX1", None, "", None)


@cache
def _profiled(spec: str) -> Target:
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"no target profile file {spec!r}; a target is {TARGET_FORMS}")
    loaded = profile.load(path)
    line = f":{loaded.server_line}" if loaded.server_line else ""
    return _outside_target(
        spec,
        loaded.mta,
        loaded.capabilities,
        loaded.stands_in_for,
        loaded.profile,
        f"{path}{line}",
        loaded.deviations,
    )


def _outside_target(
    name: str,
    mta: OutsideMta,
    declared: frozenset[str] | None,
    server: str,
    judged: str | None,
    source: str,
    deviations_of: str | None,
) -> Target:
    bound = "from the lab client's address" if mta.on_loopback else "from any local address"
    return Target(
        name=name,
        capabilities=_capabilities(mta, declared),
        description=f"the MTA at {mta.url} stands in for {server} (sessions {bound})",
        stands_in_for=server,
        profile=judged,
        outside=mta,
        source=source,
        deviations_of=deviations_of,
    )
