"""OpenSMTPD standing in for one Exchange server of the lab, in that server's network namespace.

The server's plan (harness/targets/plan.py) is written as one smtpd.conf (6.8 syntax) with file tables
beside it, the way a mail administrator would translate the Exchange settings:

    mailboxes on this server               match rcpt-to <mailboxes> → maildir action, virtual table
                                           mapping each address to the delivery user
    secondary addresses, groups, contacts  the same virtual table (address → addresses); what it
                                           expands to is matched again, as mail from `local`
    mailboxes on other servers             match rcpt-to <server_N> → relay host that server
    authoritative domains                  match for domain <authoritative> reject: unknown users are
                                           refused at RCPT (Exchange accepts them and returns an NDR)
    <Postmaster> without a domain          smtpd adds the listener's host name: postmaster at each
                                           name the server goes by, aliased to the organization's one
    shared namespaces, "allow relaying"    match from any for domain <relay_domains_N> → its route
    connectors and smart hosts             one relay action per route: host smtp://... or DNS (MX)
    each virtual server                    a listen on line: hostname, tag, tls pki, filters
    relay restrictions                     match tag vsN from src <relay_N_M> for ... (first match wins,
                                           as Exchange's list is judged)
    connection control                     a builtin filter at the connect phase: 554, then only QUIT
    anonymous access off                   a builtin filter at MAIL FROM refusing unauthenticated clients
    recipient filtering (list)             a builtin filter at RCPT TO, regex table, anonymous clients
                                           from outside the organization only
    size / recipient / message limits      smtp max-message-size, limit max-rcpt, limit max-mails: global
                                           in OpenSMTPD, so the default virtual server's values
    delivery timers                        queue ttl, bounce warn-interval; retries: see Kicker

Not rendered, because OpenSMTPD 6.8 has no way to say them: per-virtual-server size and recipient
limits, VRFY/EXPN answers, SMTPUTF8, CHUNKING, pipelining enforcement, error and connection time limits,
the hop count limit. Basic authentication is not offered: OpenSMTPD offers AUTH only inside TLS and
checks it against crypt(3) hashes or system accounts, so a trace authenticating in clear could not pass.

OpenSMTPD's Debian package conflicts with Postfix's, so on this machine it is unpacked into
tools/mtas/root (`make mtas`) and run from there in a private mount namespace, where the lab folder's own
directories stand at the paths compiled into the binary (spool, control socket, chroot, helpers) and a UTS
namespace gives it the server's FQDN as host name (bounces and Message-IDs use it). In a container of its
image (the Docker backend) it runs from its package, with its own helpers, chroot and control socket;
/var/spool/smtpd is a link to the lab folder's spool, and /etc/mailname, which smtpd reads before the
host name, a link to a file naming the server's FQDN (harness/targets/daemon.py says why).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import pwd
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.lab.certificates import LabCertificates
from harness.lab.config import LabConfig
from harness.lab.netns import Namespace
from harness.lab.recipients import RecipientTable
from harness.lab.standin import MailboxDelivery, MtaQueue, NotPossible
from harness.targets.daemon import (
    UNPACKED,
    Foreground,
    StandInBase,
    StandInError,
    in_private_mounts,
    link_into_place,
    maildir_deliveries,
    open_to_daemons,
    packaged,
    wait_until_listening,
)
from harness.targets.plan import EVERYONE, ClientRule, Listener, NextHop, Route, ServerPlan, plan
from reference_mta import replies
from reference_mta.queue_contract import QueueState

SMTPD = UNPACKED / "usr" / "sbin" / "smtpd"
SMTPCTL = UNPACKED / "usr" / "sbin" / "smtpctl"
LIBEXEC = UNPACKED / "usr" / "libexec"
PACKAGED_SMTPD, PACKAGED_SMTPCTL = "/usr/sbin/smtpd", "/usr/sbin/smtpctl"  # in a container of its image
USER = "opensmtpd"  # the unprivileged daemons' user; it also owns the Maildirs (one delivery user)
QUEUE_GROUP = "opensmtpq"  # smtpctl talks to the daemon only with this effective group
DNS = "dns"  # the action delivering by MX look-up
# OpenSMTPD has one queue; `mailflow queues` shows its suspended (paused) envelopes apart, as frozen.
QUEUE, SUSPENDED = "queue", "suspended"


def render(
    config: LabConfig, server: str, table: RecipientTable, root: Path, tls_chain: Path | None
) -> dict[str, str]:
    """The files of the configuration folder: smtpd.conf and the tables it names."""
    the_plan = plan(config, server, table)
    files: dict[str, str] = {}
    conf = _Conf(config, the_plan, root / "etc", files)
    files["smtpd.conf"] = conf.text(root, tls_chain)
    return files


class _Conf:
    """smtpd.conf being written, with the file tables it needs collected in `files`."""

    def __init__(self, config: LabConfig, the_plan: ServerPlan, etc: Path, files: dict[str, str]) -> None:
        self.config = config
        self.plan = the_plan
        self.etc = etc
        self.files = files
        self.tables: list[str] = []

    def table(self, name: str, entries: Iterable[str]) -> str:
        """A file table; `<name>` as the rules refer to it. Empty tables are written too: smtpd reads
        an empty file as a table matching nothing."""
        self.files[name] = "".join(f"{entry}\n" for entry in entries)
        self.tables.append(f"table {name} file:{self.etc / name}")  # smtpd takes no quotes here
        return f"<{name}>"

    def text(self, root: Path, tls_chain: Path | None) -> str:
        me = self.plan.server
        default = self.plan.listeners[0].vs
        timers = self.config.timers
        head = [
            "# Rendered by mailflow from the lab file; see harness/targets/opensmtpd.py.",
            f"queue ttl {_seconds(timers.expiration)}",
            # Exchange sends one delay notification after this long; so does smtpd with one delay.
            f"bounce warn-interval {_seconds(timers.delay_notification)}",
            f"smtp max-message-size {default.max_message_kb * 1024}",
            f"smtp limit max-rcpt {default.max_recipients}",
        ]
        if default.max_messages_per_connection:
            head.append(f"smtp limit max-mails {default.max_messages_per_connection}")
        if tls_chain is not None:
            head += [f'pki {me.fqdn} cert "{tls_chain}"', f'pki {me.fqdn} key "{tls_chain}"']
        filters, listens = self._listeners(me.fqdn if tls_chain is not None else None)
        actions = self._actions(root)
        rules = self._rules()
        return "\n".join([*head, *self.tables, *filters, *listens, *actions, *rules]) + "\n"

    def _listeners(self, pki: str | None) -> tuple[list[str], list[str]]:
        filters: list[str] = []
        listens: list[str] = []
        organization = self.table(
            "organization_servers",
            sorted(f"{address}/32" for address in self._other_servers()),
        )
        for number, listener in enumerate(self.plan.listeners):
            vs = listener.vs
            chain = self._listener_filters(number, listener, organization)
            filters += chain
            line = f'listen on {vs.address} port {vs.port} hostname "{vs.fqdn or self.plan.server.fqdn}"'
            line += f" tag vs{number}"
            if vs.tls and pki is not None:
                line += f' tls pki "{pki}"'
            names = [f.split('"')[1] for f in chain]
            if len(names) > 1:
                filters.append(f'filter "vs{number}" chain {{ ' + ", ".join(f'"{n}"' for n in names) + " }")
                line += f' filter "vs{number}"'
            elif names:
                line += f' filter "{names[0]}"'
            listens.append(line)
        return filters, listens

    def _listener_filters(self, number: int, listener: Listener, organization: str) -> list[str]:
        vs = listener.vs
        filters: list[str] = []
        if listener.connection_clients:
            negate, networks = _refused(listener.connection_clients)
            clients = self.table(f"connection_{number}", networks)
            filters.append(
                f'filter "connect_{number}" phase connect match {"!" if negate else ""}src {clients} '
                f'reject "{replies.CONNECTION_REFUSED}"'
            )
        if not vs.anonymous:
            # Without AUTH offered, no client of this virtual server can send: all are anonymous.
            filters.append(
                f'filter "anonymous_{number}" phase mail-from match !auth '
                f'reject "{replies.NOT_AUTHENTICATED}"'
            )
        filtering = vs.recipient_filtering
        if filtering is not None and (filtering.addresses or filtering.directory):
            filters += self._recipient_filters(number, filtering.addresses, filtering.directory, organization)
        return filters

    def _recipient_filters(
        self, number: int, addresses: Sequence[str], directory: bool, organization: str
    ) -> list[str]:
        """Recipient filtering: only for anonymous clients outside the organization, at authoritative
        domains (reference_mta/access_policy.py: filtering_applies); a filter sees only what clients
        send, never what an alias expands to. A filter has one condition, so this is a chain in which
        a `bypass` ends the judging: the organization's servers first, then the list, then (directory
        filtering) the addresses the directory knows, and the authoritative domains' other ones last."""
        refuse = f'reject "{replies.MAILBOX_NOT_AVAILABLE}"'
        filters = [f'filter "organization_{number}" phase rcpt-to match src {organization} bypass']
        if addresses:
            patterns = self.table(f"filtered_{number}", _filter_regexes(addresses, self.plan.authoritative))
            filters.append(f'filter "listed_{number}" phase rcpt-to match rcpt-to regex {patterns} {refuse}')
        if directory:
            domains = self._authoritative_regexes()
            filters += [
                f'filter "known_{number}" phase rcpt-to match rcpt-to {self._directory()} bypass',
                f'filter "unknown_{number}" phase rcpt-to match rcpt-to regex {domains} {refuse}',
            ]
        return filters

    def _directory(self) -> str:
        """Every address the directory knows, on any server."""
        if "directory" not in self.files:
            known = [a for m in self.plan.all_mailboxes for a in m.addresses] + list(self.plan.aliases)
            return self.table("directory", dict.fromkeys(known))
        return "<directory>"

    def _authoritative_regexes(self) -> str:
        if "authoritative_addresses" not in self.files:
            domains = [f"(?i)@{re.escape(domain)}$" for domain in self.plan.authoritative]
            return self.table("authoritative_addresses", domains)
        return "<authoritative_addresses>"

    def _other_servers(self) -> set[str]:
        me = self.plan.server
        return {
            address
            for server in self.config.organization.servers
            if server.name != me.name
            for address in (server.address, *(v.address for v in server.virtual_servers))
        }

    def _postmasters(self) -> dict[str, list[str]]:
        """smtpd completes RCPT TO:<Postmaster> with the listener's host name, so postmaster at each name
        the server goes by is an alias of the organization's postmaster (RFC 5321 4.1.1.3): the first
        authoritative domain's, as Exchange reads <Postmaster> as the primary domain's."""
        known = next(
            (f"postmaster@{d}" for d in self.plan.authoritative if self.plan.accepts(f"postmaster@{d}")),
            None,
        )
        if known is None:
            return {}
        names = [self.plan.server.fqdn, *(listener.vs.fqdn for listener in self.plan.listeners)]
        return {f"postmaster@{name.lower()}": [known] for name in dict.fromkeys(n for n in names if n)}

    def _actions(self, root: Path) -> list[str]:
        me = self.plan.server
        aliases = {**self._postmasters(), **self.plan.aliases}
        virtual = self.table(
            "addresses",
            # Secondary addresses are aliases of the primary one, which is the delivery user's. A
            # mailbox forwarding with a copy kept names itself among its targets: that copy is the
            # delivery user's too (smtpd refuses an address that expands to itself).
            [f"{m.primary} {USER}" for m in self.plan.mailboxes if m.primary not in aliases]
            + [
                f"{address} {', '.join(USER if target == address else target for target in targets)}"
                for address, targets in aliases.items()
                if targets
            ],
        )
        outgoing = f'helo "{me.fqdn}" src "{me.address}"'
        actions = [
            f'action "mailbox" maildir "{root / "mail"}/%{{dest:lowercase}}" virtual {virtual}',
            f'action "{DNS}" relay {outgoing}',
        ]
        for name, hop in self._hops().items():
            actions.append(f'action "{name}" relay host "{_url(hop)}" {outgoing}')
        return actions

    def _hops(self) -> dict[str, NextHop]:
        """Every next hop named once: the action relaying to it."""
        hops = [*self.plan.mailbox_routes.values(), *(r.hop for r in self.plan.routes if r.hop)]
        return {f"hop_{number}": hop for number, hop in enumerate(dict.fromkeys(hops))}

    def _action(self, hop: NextHop | None) -> str:
        return next((name for name, each in self._hops().items() if each == hop), DNS)

    def _rules(self) -> list[str]:
        the_plan = self.plan
        rules = ["# Inside the organization: for everyone, and for what aliases expand to."]
        by_hop: dict[str, list[str]] = {}
        for address, hop in the_plan.mailbox_routes.items():
            by_hop.setdefault(self._action(hop), []).append(address)
        for name, addresses in by_hop.items():
            rules.append(
                f'match from any for rcpt-to {self.table(f"mailboxes_{name}", addresses)} action "{name}"'
            )
        local = dict.fromkeys(
            [*(a for m in the_plan.mailboxes for a in m.addresses), *the_plan.aliases, *self._postmasters()]
        )
        rules.append(f'match from any for rcpt-to {self.table("mailboxes", local)} action "mailbox"')
        authoritative = self.table("authoritative", the_plan.authoritative)
        rules.append(f"match from any for domain {authoritative} reject")
        destinations = self._destinations()
        relay_domains: dict[str, list[str]] = {}
        for domain in the_plan.relay_domains:
            relay_domains.setdefault(_route_action(domain, the_plan.routes, self._action), []).append(domain)
        for name, domains in relay_domains.items():
            patterns = self.table(f"relay_domains_{name}", (_domain(d) for d in domains))
            rules.append(f'match from any for domain {patterns} action "{name}"')
        rules.append("# Forwarded (contacts, expanded groups) and bounces: wherever they are addressed.")
        rules += [f'match from local {where} action "{name}"' for where, name in destinations]
        rules.append("# Relaying, per virtual server: its relay list, first match wins.")
        for number, listener in enumerate(the_plan.listeners):
            for run, (allow, networks) in enumerate(_runs(listener.relay_clients)):
                clients = self.table(f"relay_{number}_{run}", networks)
                head = f"match tag vs{number} from src {clients}"
                if allow:
                    rules += [f'{head} {where} action "{name}"' for where, name in destinations]
                else:
                    rules.append(f"{head} for any reject")
        return rules

    def _destinations(self) -> list[tuple[str, str]]:
        """(`for ...` clause, action) for mail leaving the organization, most specific first."""
        routes = [route for route in self.plan.routes if route.domain != "*"]
        found = []
        for number, route in enumerate(routes):
            found.append(
                (
                    f"for domain {self.table(f'route_{number}', [_domain(route.domain)])}",
                    self._action(route.hop),
                )
            )
        default = self.plan.default_route
        found.append(("for any", self._action(default.hop if default else None)))
        return found


def _route_action(domain: str, routes: Sequence[Route], action: Callable[[NextHop | None], str]) -> str:
    """The action of the first route covering `domain` (a domain, or ".x" for x's subdomains)."""
    return next((action(route.hop) for route in routes if _covers(route.domain, domain)), DNS)


def _covers(route: str, domain: str) -> bool:
    if route == "*":
        return True
    if route.startswith("."):
        return domain.endswith(route)
    return route == domain


def _runs(rules: Iterable[ClientRule]) -> list[tuple[bool, list[str]]]:
    """First-match-wins rules as runs of consecutive rules with the same verdict."""
    runs: list[tuple[bool, list[str]]] = []
    for rule in rules:
        if runs and runs[-1][0] == rule.allow:
            runs[-1][1].append(str(rule.network))
        else:
            runs.append((rule.allow, [str(rule.network)]))
    return runs


def _refused(rules: Sequence[ClientRule]) -> tuple[bool, list[str]]:
    """Connection control as one source condition: (negated, networks). The plan writes it either as
    refusals only, or as admissions ending with a refusal of everyone; a filter says either."""
    if all(not rule.allow for rule in rules):
        return False, [str(rule.network) for rule in rules]
    last = rules[-1]
    if not last.allow and last.network == EVERYONE and all(rule.allow for rule in rules[:-1]):
        return True, [str(rule.network) for rule in rules[:-1]]
    raise StandInError(f"connection control OpenSMTPD cannot express: {rules}")


def _filter_regexes(patterns: Iterable[str], authoritative: Sequence[str]) -> list[str]:
    """Exchange filter entries (`*` the only wildcard) as case-blind regexes, each for one authoritative
    domain (entries of other domains are never applied)."""
    found = []
    for pattern in patterns:
        local, _, domain = pattern.lower().rpartition("@")
        for each in authoritative:
            if fnmatch.fnmatchcase(each, domain):
                found.append("(?i)^" + _wildcard(local) + "@" + re.escape(each) + "$")
    return found


def _wildcard(text: str) -> str:
    return ".*".join(re.escape(part) for part in text.split("*"))


def _domain(domain: str) -> str:
    return f"*{domain}" if domain.startswith(".") else domain


def _url(hop: NextHop) -> str:
    return f"smtp://{hop.host}:{hop.port}"


def _seconds(value: float) -> str:
    return f"{max(1, round(value))}s"


@dataclass(frozen=True)
class Envelope:
    """One line of `smtpctl show queue`: id|family|type|flags|sender|dest|rcpt|creation|expiry|last
    try|retries|run state|seconds to the next try|last error."""

    id: str
    recipient: str
    suspended: bool
    state: str
    tried: bool

    @classmethod
    def parse(cls, line: str) -> Envelope | None:
        fields = line.split("|")
        if len(fields) < 13 or not fields[12].lstrip("-").isdigit():
            return None
        return cls(
            id=fields[0],
            recipient=fields[6],
            suspended="suspend" in fields[3],
            state=fields[11],
            tried=fields[10] not in ("", "0"),
        )


class OpenSmtpdStandIn(StandInBase):
    """A running OpenSMTPD for one lab server: configured, started in its namespace, read, stopped."""

    mta = "OpenSMTPD"

    def __init__(
        self,
        config: LabConfig,
        server: str,
        table: RecipientTable,
        root: Path,
        certificates: LabCertificates | None = None,
    ) -> None:
        super().__init__(config, server, table, root, certificates)
        self.daemon: Foreground | None = None
        self.namespace: Namespace | None = None
        self.retries = Retries(self._smtpctl, config.timers.intervals[0] if config.timers.intervals else 60.0)

    @property
    def log_path(self) -> Path:
        return self.root / "smtpd.log"

    @property
    def spool(self) -> Path:
        return self.root / "spool" / "smtpd"

    def start(self, namespace: Namespace) -> None:
        self.namespace = namespace
        etc = self.root / "etc"
        self._make_folders(namespace)
        fqdn = self.config.organization.server(self.server).fqdn
        # No certificate, so no STARTTLS: Debian bookworm's 6.8.0p2 against OpenSSL 3 fails every
        # server-side handshake ("EVP lib", OpenSMTPD issues #1171, #1239), and offering STARTTLS would
        # only make clients that try it lose their session.
        for name, text in render(self.config, self.server, self.table, self.root, None).items():
            (etc / name).write_text(text, encoding="utf-8")
        if packaged(namespace):
            # smtpd names itself (bounces, Message-IDs) by /etc/mailname, else by the host name.
            (etc / "mailname").write_text(f"{fqdn}\n", encoding="utf-8")
            links = [(self.spool, "/var/spool/smtpd"), (etc / "mailname", "/etc/mailname")]
            link_into_place(namespace, links, f"OpenSMTPD's spool and name for {self.server}")
            argv = [PACKAGED_SMTPD, "-d", "-f", str(etc / "smtpd.conf")]
        else:
            smtpd = in_private_mounts(self._binds(), [str(SMTPD), "-d", "-f", str(etc / "smtpd.conf")])
            # Its own UTS namespace: smtpd names itself (bounces, Message-IDs) by the host name.
            argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', fqdn, *smtpd]
        self.daemon = Foreground(namespace, argv, self.log_path, "smtpd")
        vs = self.default_virtual_server
        try:
            wait_until_listening(vs.address, vs.port, f"OpenSMTPD for {self.server}", self.daemon)
        except StandInError:
            self.stop()
            raise
        self.retries.start(self.spool)

    def _make_folders(self, namespace: Namespace) -> None:
        for folder in ("etc", "run", "mail", "spool/smtpd", "lib/opensmtpd/empty"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        open_to_daemons(self.root)
        # smtpd refuses a spool that is not root's with exactly these permissions.
        self.spool.chmod(0o711)
        os.chown(self.root / "mail", *namespace.user(USER))

    def _binds(self) -> list[tuple[Path, str]]:
        """The lab folder's directories at the paths compiled into the binary: spool (/var/spool/smtpd),
        control socket and pid file (/var/run → /run), chroot (/var/lib/opensmtpd/empty), helpers."""
        return [
            (self.root / "spool", "/var/spool"),
            (self.root / "run", "/run"),
            (self.root / "lib", "/var/lib"),
            (LIBEXEC, "/usr/libexec"),
        ]

    def stop(self) -> None:
        self.retries.stop()
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def _smtpctl(self, arguments: Sequence[str]) -> list[str]:
        """smtpctl with `arguments`, with the group it wants and where the daemon's control socket is:
        this machine's namespace, where /run is bound to the lab folder's, or the daemon's container."""
        if self.namespace is not None and packaged(self.namespace):
            return self.namespace.command(
                ["setpriv", "--regid", QUEUE_GROUP, "--keep-groups", PACKAGED_SMTPCTL, *arguments]
            )
        return in_private_mounts(
            [(self.root / "run", "/run")],
            ["setpriv", "--regid", QUEUE_GROUP, "--keep-groups", str(SMTPCTL), *arguments],
        )

    def idle(self) -> bool:
        """No message is being received or delivered: none in incoming/ (a transaction is open), no
        envelope that was never tried (delivery is under way), and no retry round in progress. Envelopes
        that were tried and deferred wait for a retry and count as idle, as Postfix's deferred queue
        does."""
        if self.retries.busy or any((self.spool / "incoming").glob("*")):
            return False
        try:
            return not any(_never_tried(path) for path in (self.spool / "queue").glob("*/*/*"))
        except FileNotFoundError:  # a message's folder went while it was listed: delivered, ask again
            return False

    def queues(self) -> list[MtaQueue]:
        """OpenSMTPD's queue from `smtpctl show queue`: the envelopes it schedules (Active while one is
        in flight, Retry once they were tried) and the suspended ones apart, as frozen."""
        envelopes = self._envelopes()
        waiting = [e for e in envelopes if not e.suspended]
        suspended = [e for e in envelopes if e.suspended]
        state = (
            QueueState.ACTIVE
            if any(e.state == "inflight" for e in waiting)
            else QueueState.RETRY
            if any(e.tried for e in waiting)
            else QueueState.READY
        )
        # No next retry: smtpd's own schedule (hours) is not when the lab retries (Retries, every second).
        return [
            MtaQueue(QUEUE, state, len(waiting), tuple(e.recipient for e in waiting)),
            MtaQueue(
                SUSPENDED,
                QueueState.FROZEN if suspended else QueueState.READY,
                len(suspended),
                tuple(e.recipient for e in suspended),
            ),
        ]

    def freeze(self, queue: str, frozen: bool) -> str:
        """`smtpctl pause envelope` suspends envelopes (every one, or one envelope or message by id) and
        `resume envelope` schedules them again. Envelopes that arrive later are not suspended."""
        envelopes = self._envelopes()
        names = (QUEUE,) if frozen else (QUEUE, SUSPENDED)
        ids = {e.id for e in envelopes} | {e.id[:8] for e in envelopes}  # a message id: its first 8
        if queue.lower() in names:
            chosen = "all"
        elif queue.lower() in ids:
            chosen = queue.lower()
        else:
            raise NotPossible(
                f"OpenSMTPD on {self.server} has no queue {queue!r}: it suspends envelopes, not "
                f"destinations; name its queue ({', '.join(names)}) or an envelope or message id "
                f"({', '.join(sorted(e.id for e in envelopes)) or 'none queued'})"
            )
        verb = "pause" if frozen else "resume"
        output = self.retries.smtpctl(verb, "envelope", chosen).strip()
        done = f"smtpctl {verb} envelope {chosen}: {output or 'no answer'}"
        return done + (" (later envelopes are not suspended)" if frozen else "")

    def _envelopes(self) -> list[Envelope]:
        if self.daemon is None:
            raise StandInError(f"OpenSMTPD for {self.server} is not running")
        lines = self.retries.smtpctl("show", "queue").splitlines()
        return [e for line in lines if (e := Envelope.parse(line)) is not None]

    def deliveries(self) -> list[MailboxDelivery]:
        # smtpd's Delivered-To names the address the client gave (a group, a secondary address), not the
        # mailbox it reached: the folder says which mailbox, once smtpd's escaping of it is undone.
        found = maildir_deliveries(self.root / "mail", self.server, by_folder=True)
        mailboxes = [m.primary for m in self.table.mailboxes_on(self.server)]
        return [dataclasses.replace(d, mailbox=_unescaped(d.mailbox, mailboxes)) for d in found]


def _unescaped(folder: str, mailboxes: Sequence[str]) -> str:
    """The mailbox a Maildir folder is for: smtpd writes characters it will not put in a path name
    (the `*` of st*r@contoso.com, say) as ':' when it expands %{dest}."""
    if folder in mailboxes:
        return folder
    return next(
        (
            mailbox
            for mailbox in mailboxes
            if len(mailbox) == len(folder)
            and all(f in (m, ":") for f, m in zip(folder, mailbox, strict=True))
        ),
        folder,
    )


def _never_tried(envelope: Path) -> bool:
    if envelope.name == "message":
        return False
    try:
        text = envelope.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:  # delivered meanwhile
        return False
    return "\nretry: 0\n" in text


class Retries:
    """OpenSMTPD retries on its own schedule (a first retry after 400 s), which no setting changes; the
    lab's timers retry within seconds. As an administrator would from cron, `smtpctl schedule all` runs
    every first retry interval while anything waits in the queue, and the round counts as busy until no
    envelope is in flight or due."""

    def __init__(self, smtpctl: Callable[[Sequence[str]], list[str]], interval: float) -> None:
        self._command = smtpctl  # the command line of smtpctl with the arguments given
        self.interval = max(1.0, interval)
        self.busy = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, spool: Path) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, args=(spool,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self, spool: Path) -> None:
        while not self._stopping.wait(self.interval):
            if not any((spool / "queue").glob("*/*/*")):
                continue
            self.busy = True
            try:
                self.smtpctl("schedule", "all")
                deadline = time.monotonic() + ROUND_LIMIT
                while time.monotonic() < deadline and not self._stopping.is_set() and self._under_way():
                    time.sleep(0.1)
            except (OSError, subprocess.SubprocessError):
                pass  # the daemon is stopping; the next round or stop() settles it
            finally:
                self.busy = False

    def _under_way(self) -> bool:
        for line in self.smtpctl("show", "queue").splitlines():
            fields = line.split("|")
            if len(fields) > 12 and (
                fields[11] == "inflight" or (fields[11] == "pending" and int(fields[12]) <= 0)
            ):
                return True
        return False

    def smtpctl(self, *args: str) -> str:
        result = subprocess.run(
            self._command(args),
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        return result.stdout


# How long one retry round may count as busy: a route smtpd has disabled after a refused connection keeps
# its envelopes in flight until it is enabled again, and the lab would never settle meanwhile.
ROUND_LIMIT = 5.0


def installed() -> str | None:
    """None if OpenSMTPD can run here, else why not."""
    if not SMTPD.is_file() or not SMTPCTL.is_file():
        return f"OpenSMTPD is not unpacked ({SMTPD} missing; `make mtas` unpacks the Debian package)"
    for tool in ("unshare", "setpriv", "hostname"):
        if shutil.which(tool) is None:
            return f"util-linux's {tool} is missing (Debian packages util-linux, hostname)"
    for user in (USER, "opensmtpq"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"the {user} user does not exist (`make mtas` adds it)"
    return None
