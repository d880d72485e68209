"""Postfix standing in for one Exchange server of the lab, in that server's network namespace.

The lab file is rendered into Postfix's own configuration, the way a mail administrator would translate
the Exchange settings:

    recipient policies, authoritative      virtual_mailbox_domains (unknown users refused at RCPT)
    recipient policies, shared namespace   relay_domains (unknown users go on by MX)
    mailboxes on this server               virtual_mailbox_maps → a Maildir the harness reads
    mailboxes on other servers             transport_maps → smtp:[that server]
    secondary addresses, groups, contacts  virtual_alias_maps
    relay restrictions                     smtpd_relay_restrictions with a cidr client table
    "allow relaying" connector domains     relay_domains
    connectors with smart hosts            transport_maps → smtp:[smart host]
    connector delivery restrictions        sender_dependent_relayhost_maps for the senders they name
    recipient filtering                    smtpd_recipient_restrictions with a regexp recipient table
    anonymous access off                   530 for MAIL and VRFY until permit_sasl_authenticated
    size / recipient limits, FQDN, VRFY    message_size_limit, smtpd_recipient_limit, myhostname, ...
    connection time-out, error limit       smtpd_timeout, smtpd_hard_error_limit
    CHUNKING or SMTPUTF8 off               smtpd_discard_ehlo_keywords (SMTPUTF8 is on for the server)
    a recipient without a domain refused   reject_non_fqdn_recipient, with 501
    unknown verbs answered 500             no smtpd_forbidden_commands
    DATA ends only at CRLF.CRLF            smtpd_forbid_bare_newline = normalize, no client excluded

Postfix runs from its Debian package with a configuration directory of its own in the lab's folder
(`postfix -c`), every daemon unchrooted, logging to a file the report attaches. Not modelled: Basic
authentication is checked by Dovecot's SASL server against the directory's accounts.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from harness.lab import postfix_services
from harness.lab.config import LabConfig
from harness.lab.netns import Namespace
from harness.lab.recipients import Login, RecipientTable
from harness.lab.standin import MailboxDelivery, MtaQueue, NotPossible
from harness.targets.daemon import (
    StandInBase,
    StandInError,
    maildir_deliveries,
    open_to_daemons,
    pid_file,
    wait_until_listening,
)
from harness.targets.plan import Listener, NextHop, RecipientFilter, ServerPlan, plan
from reference_mta import replies
from reference_mta.queue_contract import QueueState
from reference_mta.topology import Server

SPOOL_QUEUES = ("maildrop", "incoming", "active")
# Postfix's queues as `postqueue -j` names them, with the Queue Viewer state each one means.
QUEUE_STATES = {
    "maildrop": QueueState.READY,
    "incoming": QueueState.READY,
    "active": QueueState.ACTIVE,
    "deferred": QueueState.RETRY,
    "hold": QueueState.FROZEN,
}
# What `postsuper -h` can put on hold (and `-H` releases from "hold").
HOLDABLE = ("incoming", "active", "deferred")
TABLES = ("virtual_mailbox", "virtual_alias", "transport", "sender_relay")
# Non-delivery and delay reports under Exchange's subjects (reference_mta/dsn.py); the rest is Postfix's.
_BOUNCE_TEMPLATES = """\
failure_template = <<EOF
Charset: us-ascii
From: MAILER-DAEMON (Mail Delivery System)
Subject: Delivery Status Notification (Failure)
Postmaster-Subject: Postmaster Copy: Undelivered Mail

This is the mail system at host $myhostname.

Your message could not be delivered to one or more recipients.
The problem report and the returned message are attached.
EOF

delay_template = <<EOF
Charset: us-ascii
From: MAILER-DAEMON (Mail Delivery System)
Subject: Delivery Status Notification (Delay)
Postmaster-Subject: Postmaster Warning: Delayed Mail

This is the mail system at host $myhostname.

Your message has not been delivered yet to one or more recipients.
Delivery will be tried again; you need not send it again.
EOF
"""


class PostfixError(StandInError):
    """Postfix could not be configured or started; the message quotes Postfix's own words."""


def render(
    config: LabConfig,
    server: str,
    table: RecipientTable,
    root: Path,
    tls_chain: Path | None = None,
    owner: tuple[int, int] | None = None,
) -> dict[str, str]:
    """The files of Postfix's configuration directory for `server`, keyed by file name; `tls_chain` is
    the server's key and certificate when its virtual server has a certificate bound; `owner` the
    postfix user's uid and gid where Postfix runs (this machine's when None)."""
    the_plan = plan(config, server, table)
    me = the_plan.server
    if owner is None:
        entry = pwd.getpwnam("postfix")
        owner = entry.pw_uid, entry.pw_gid
    main = _main_settings(config, the_plan, root, tls_chain, owner)
    sender_hops, kept = _sender_relayhosts(the_plan)
    main["sender_dependent_relayhost_maps"] = f"hash:{root / 'etc' / 'sender_relay'}"
    # The default virtual server's settings are main.cf's; every other one is an smtpd listener of its
    # own that overrides what differs (master.cf -o), with its own relay table.
    default = _smtpd_settings(me, the_plan.listeners[0], 0, root, table, tls_chain)
    main.update(default)
    files = {"main.cf": "".join(f"{key} = {value}\n" for key, value in main.items())}
    listeners, listener_tables = _listeners(the_plan, root, table, tls_chain, default)
    files.update(listener_tables)
    files["bounce.cf"] = _BOUNCE_TEMPLATES
    files["organization"] = "".join(f"{network} OK\n" for network in the_plan.organization_servers)
    files["not_authenticated"] = f"0.0.0.0/0 {replies.NOT_AUTHENTICATED}\n"
    files["master.cf"] = "".join(listeners) + postfix_services.services()
    files["virtual_mailbox"] = "".join(f"{m.primary} {m.primary}/\n" for m in the_plan.all_mailboxes)
    files["virtual_alias"] = "".join(
        f"{address} {', '.join(targets) or 'devnull@invalid'}\n"
        for address, targets in the_plan.aliases.items()
    )
    files["transport"] = _transport_table(the_plan, kept if sender_hops else None)
    files["sender_relay"] = "".join(f"{sender} {_relayhost(hop)}\n" for sender, hop in sender_hops.items())
    return files


def _main_settings(
    config: LabConfig, the_plan: ServerPlan, root: Path, tls_chain: Path | None, owner: tuple[int, int]
) -> dict[str, str]:
    """main.cf, but for the default virtual server's smtpd settings and the sender-dependent relay
    hosts."""
    main = {**_main_places(config, the_plan, root, owner), **_main_routing(config, the_plan)}
    main.update(
        smtpd_sasl_type="dovecot",  # Dovecot's SASL server (DovecotAuth), a socket in the spool
        smtpd_sasl_path="private/auth",
        broken_sasl_auth_clients="yes",  # AUTH=LOGIN as well, as Exchange advertises it
    )
    # A virtual server ends DATA only at CRLF.CRLF; a bare LF, dot, LF is message content, so a
    # smuggled second transaction stays in the first message's body (SEC-2). "normalize" does
    # exactly that (Postfix >= 3.7.10); "yes" would refuse and disconnect instead, which Exchange
    # does not. No client is excluded: the lab's relay lists are not Postfix's mynetworks.
    main["smtpd_forbid_bare_newline"] = "normalize"
    main["smtpd_forbid_bare_newline_exclusions"] = ""
    if tls_chain is not None:
        main["smtpd_tls_chain_files"] = str(tls_chain)
    main["bounce_template_file"] = str(root / "etc" / "bounce.cf")
    return main


def _main_places(
    config: LabConfig, the_plan: ServerPlan, root: Path, owner: tuple[int, int]
) -> dict[str, str]:
    """Where Postfix keeps its files and the mailboxes, whom it runs as, its names and addresses, and
    the tables of the domains and addresses it holds."""
    me = the_plan.server
    return {
        "compatibility_level": "3.6",
        "queue_directory": str(root / "spool"),
        "data_directory": str(root / "data"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "maillog_file": str(root / "postfix.log"),
        "maillog_file_prefixes": str(root),
        "mydomain": config.organization.primary_domain,
        "myorigin": "$mydomain",
        "inet_interfaces": ", ".join(v.address for v in me.virtual_servers),
        "inet_protocols": "ipv4",
        "smtp_bind_address": me.address,
        "mydestination": "",
        "local_recipient_maps": "",
        "mynetworks": "",
        "smtpd_banner": "$myhostname ESMTP",
        # Exchange wants HELO or EHLO before MAIL (and again after STARTTLS).
        "smtpd_helo_required": "yes",
        "virtual_mailbox_domains": ", ".join(the_plan.authoritative),
        "virtual_mailbox_maps": f"hash:{root / 'etc' / 'virtual_mailbox'}",
        "virtual_alias_maps": f"hash:{root / 'etc' / 'virtual_alias'}",
        "transport_maps": f"hash:{root / 'etc' / 'transport'}",
        "virtual_mailbox_base": str(root / "mail"),
        "virtual_uid_maps": f"static:{owner[0]}",
        "virtual_gid_maps": f"static:{owner[1]}",
    }


def _main_routing(config: LabConfig, the_plan: ServerPlan) -> dict[str, str]:
    """The relay decision as Exchange makes it, and the lab's timers."""
    return {
        "relay_domains": ", ".join(the_plan.relay_domains),
        # Exchange's domains cover only themselves (docs/decisions.md): no parent-domain matching for
        # relay_domains (".example" entries, from "*.example" address spaces, still cover subdomains).
        "parent_domain_matches_subdomains": "debug_peer_list, fast_flush_domains, mynetworks, "
        "permit_mx_backup_networks, qmqpd_authorized_clients, smtpd_access_maps",
        # Exchange's codes where Postfix lets them be chosen: a refused relay is 550 5.7.1.
        "relay_domains_reject_code": "550",
        "non_fqdn_reject_code": "501",
        # SMTPUTF8 is on for the whole server, so that a message taken with it keeps it in the queue and
        # is returned with 5.6.7 rather than sent to a next hop that lacks it (RFC 6531 3.4); the virtual
        # servers without it do not offer it (smtpd_discard_ehlo_keywords). A non-ASCII address without
        # the SMTPUTF8 parameter is refused with 553 5.6.7, as Exchange does.
        "smtputf8_enable": "yes",
        "strict_smtputf8": "yes",
        # Exchange answers any verb it does not know with 500 and serves the session on (RFC 5321 3.8: a
        # server closes only after QUIT or with 421); Postfix would hang up on GET, POST, CONNECT and a
        # line that does not start with a letter, with 221.
        "smtpd_forbidden_commands": "",
        # Exchange accepts any recipient of an authoritative domain and the categorizer NDRs the unknown
        # ones (5.1.1), unless recipient filtering applies (smtpd_recipient_restrictions of the
        # listener): Postfix's virtual delivery agent bounces them the same way.
        "smtpd_reject_unlisted_recipient": "no",
        # Exchange's relay decision looks at the domain only (KB 260973): a % or ! in the local part of
        # a shared-namespace or relay-connector address does not stop the relay to that domain.
        "allow_untrusted_routing": "yes",
        # The lab's timers: retries within seconds, expiry as the lab file says.
        "queue_run_delay": _seconds(config.timers.intervals[0]),
        "minimal_backoff_time": _seconds(config.timers.intervals[0]),
        "maximal_backoff_time": _seconds(config.timers.intervals[-1]),
        "maximal_queue_lifetime": _seconds(config.timers.expiration),
        "bounce_queue_lifetime": _seconds(config.timers.expiration),
        # One delay notice (DSN-2) once a message has waited as long as Exchange waits.
        "delay_warning_time": _seconds(config.timers.delay_notification),
        "smtp_connect_timeout": "5s",
        # Exchange sends a message to one next hop in one transaction with all its recipients there;
        # Postfix's default splits it after 50, though every server must take 100 (RFC 5321 4.5.3.1.8).
        "smtp_destination_recipient_limit": "1000",
    }


def _listeners(
    the_plan: ServerPlan,
    root: Path,
    table: RecipientTable,
    tls_chain: Path | None,
    default: dict[str, str],
) -> tuple[list[str], dict[str, str]]:
    """master.cf's smtpd line of each virtual server, with the settings in which it differs from
    `default` (main.cf's), and the client and recipient tables of each, by file name."""
    me = the_plan.server
    listeners: list[str] = []
    files: dict[str, str] = {}
    for number, listener in enumerate(the_plan.listeners):
        settings = _smtpd_settings(me, listener, number, root, table, tls_chain)
        overrides = "".join(f" -o {{ {k} = {v} }}" for k, v in settings.items() if default.get(k) != v)
        vs = listener.vs
        listeners.append(f"{vs.address}:{vs.port} inet n - n - - smtpd{overrides}\n")
        files[_relay_table(number)] = "".join(
            f"{rule.network} {'OK' if rule.allow else 'DUNNO'}\n" for rule in listener.relay_clients
        )
        files[_connection_table(number)] = "".join(
            f"{rule.network} {'DUNNO' if rule.allow else 'REJECT'}\n" for rule in listener.connection_clients
        )
        if listener.recipient_filter is not None:
            files[_filter_table(number)] = _recipient_filter_table(listener.recipient_filter)
    return listeners, files


def _transport_table(the_plan: ServerPlan, sender_dependent: set[str] | None) -> str:
    """Mailboxes on other servers, then the connectors' address spaces. `sender_dependent`: the
    domains where a sender-dependent relay host may apply, None when there is none."""
    entries = [f"{address} {_transport(hop)}" for address, hop in the_plan.mailbox_routes.items()]
    if sender_dependent is None:
        # ":" is Postfix's "default transport, MX look-up": written out so that a wider entry
        # (".example") does not catch a domain this server delivers itself (northwind.example).
        entries += [f"{route.domain} {_transport(route.hop)}" for route in the_plan.routes]
        return "".join(f"{entry}\n" for entry in entries)
    # A sender-dependent relay host applies wherever the transport table keeps the next hop (":"), so
    # only the restricted connectors' domains keep it; every other domain is pinned to itself
    # ("smtp:", an MX look-up), and the authoritative domains stay with the virtual delivery agent.
    for route in the_plan.routes:
        dns = ":" if route.domain in sender_dependent else "smtp:"
        entries.append(f"{route.domain} {_transport(route.hop) if route.hop else dns}")
    entries += [f"{domain} :" for domain in the_plan.authoritative]
    if the_plan.default_route is None:
        entries.append("* smtp:")
    return "".join(f"{entry}\n" for entry in entries)


def _transport(hop: NextHop | None) -> str:
    return ":" if hop is None else f"smtp:[{hop.host}]:{hop.port}"


def _relayhost(hop: NextHop) -> str:
    return f"[{hop.host}]:{hop.port}"


def _sender_relayhosts(the_plan: ServerPlan) -> tuple[dict[str, NextHop], set[str]]:
    """The senders whose mail for some domains takes another connector (delivery restrictions), as
    Postfix can say it: one relay host per sender, for domains that everyone else reaches by DNS. A
    sender routed two ways, or to DNS where others go to a hop, is left out, and so is one whose domains
    are not those of the senders kept before it, in address order (docs/decisions.md)."""
    general = {route.domain: route.hop for route in the_plan.routes}
    hops: dict[str, set[NextHop | None]] = {}
    domains: dict[str, set[str]] = {}
    for route, senders in the_plan.sender_routes:
        for sender in senders:
            hops.setdefault(sender, set()).add(route.hop)
            domains.setdefault(sender, set()).add(route.domain)
    chosen: dict[str, NextHop] = {}
    kept: set[str] = set()
    for sender, found in sorted(hops.items()):
        hop = next(iter(found))
        by_dns = all(d in general and general[d] is None for d in domains[sender])
        # The relay host applies to every kept domain: a sender whose other domains differ would take
        # it for those too, so only senders routed differently for the same domains are kept.
        if len(found) != 1 or hop is None or not by_dns or (kept and domains[sender] != kept):
            continue
        chosen[sender] = hop
        kept |= domains[sender]
    return chosen, kept


def _seconds(value: float) -> str:
    return f"{max(1, round(value))}s"  # Postfix takes whole seconds


def _smtpd_settings(
    me: Server,
    listener: Listener,
    number: int,
    root: Path,
    table: RecipientTable,
    tls_chain: Path | None,
) -> dict[str, str]:
    """What one virtual server's property pages become for Postfix's SMTP server."""
    vs = listener.vs
    authenticated = vs.basic_auth and bool(table.logins)
    relay_clients = f"check_client_access cidr:{root / 'etc' / _relay_table(number)}"
    # Postfix refuses a bare "permit" here; an open relay is a relay table that lets everyone through.
    relay = f"{relay_clients}, reject_unauth_destination"
    relays_authenticated = authenticated and vs.relay.allow_authenticated and not vs.relay.open
    if relays_authenticated:
        relay = f"permit_sasl_authenticated, {relay}"
    etc = root / "etc"
    # Anonymous access off: nothing but an authenticated client may send, refused at MAIL with
    # Exchange's 530 5.7.3; VRFY too, whatever its address, so the refusal comes before the relay
    # decision when an authenticated client would relay anyway (else before the recipient checks).
    anonymous_refused = f"permit_sasl_authenticated, check_client_access cidr:{etc / 'not_authenticated'}"
    # Exchange refuses a recipient without a domain (RCPT TO:<dave>, 501) where Postfix would add
    # $myorigin; <Postmaster> is not refused (RFC 5321 4.1.1.3).
    recipient: list[str] = ["reject_non_fqdn_recipient"]
    if not vs.anonymous:
        if relays_authenticated or vs.relay.open:
            relay = f"{anonymous_refused}, {relay}"
        else:
            recipient.append(anonymous_refused)
    if listener.recipient_filter is not None:
        # Recipient filtering judges only anonymous clients outside the organization, after the relay
        # decision (access_policy.filtering_applies).
        recipient += [
            "permit_sasl_authenticated",
            f"check_client_access cidr:{etc / 'organization'}",
            f"check_recipient_access regexp:{etc / _filter_table(number)}",
        ]
    tls = vs.tls and tls_chain is not None
    return {
        "myhostname": vs.fqdn or me.fqdn,
        "smtpd_relay_restrictions": relay,
        "smtpd_sender_restrictions": "" if vs.anonymous else anonymous_refused,
        "smtpd_recipient_restrictions": ", ".join(recipient),
        # Connection control: clients outside the list are refused when they connect (554, then only
        # QUIT, as Exchange and RFC 5321 3.1 have it), which needs the restrictions judged at once.
        "smtpd_client_restrictions": f"check_client_access cidr:{root / 'etc' / _connection_table(number)}",
        "smtpd_delay_reject": "yes" if vs.anonymous and listener.connection_open else "no",
        "message_size_limit": str(vs.max_message_kb * 1024),
        "smtpd_recipient_limit": str(vs.max_recipients),
        "disable_vrfy_command": "yes" if vs.vrfy == "disabled" else "no",
        # General → Connection time-out: an idle client gets 421 4.4.2 and the connection closes.
        "smtpd_timeout": _seconds(vs.connection_timeout),
        # Exchange's error limit: the error reply that reaches it is followed by 421 and the close.
        # The soft limit is the same, so no error before it is answered late (smtpd_error_sleep_time).
        "smtpd_hard_error_limit": str(vs.max_errors),
        "smtpd_soft_error_limit": str(vs.max_errors),
        # A virtual server without CHUNKING or SMTPUTF8 neither offers it nor takes BDAT or the
        # SMTPUTF8 parameter.
        "smtpd_discard_ehlo_keywords": ", ".join(
            keyword for keyword, on in (("chunking", vs.chunking), ("smtputf8", vs.smtputf8)) if not on
        ),
        "smtpd_forbid_unauth_pipelining": "yes" if vs.pipelining_sync == "enforce" else "no",
        "smtpd_sasl_auth_enable": "yes" if authenticated else "no",
        "smtpd_tls_security_level": "may" if tls else "none",
        "smtpd_tls_auth_only": "yes" if tls and vs.auth_requires_tls else "no",
    }


def _recipient_filter_table(rules: RecipientFilter) -> str:
    """Recipient filtering as a regexp table, first match wins, for the authoritative domains only:
    the explicit list refuses, then (when the directory is asked) what it knows passes and the rest of
    those domains is refused. Postfix looks the address up after its own parsing (lower case, no
    trailing dot, no source route)."""
    domains = "|".join(_regexp(domain) for domain in rules.domains)
    lines = [f"if /@({domains})$/"]
    lines += [
        f"/^{_regexp(pattern, wildcards=True)}$/ {replies.MAILBOX_NOT_AVAILABLE}"
        for pattern in rules.patterns
    ]
    if rules.known is not None:
        lines += [f"/^{_regexp(address)}$/ DUNNO" for address in rules.known]
        lines.append(f"/./ {replies.MAILBOX_NOT_AVAILABLE}")
    lines.append("endif")
    return "".join(f"{line}\n" for line in lines)


def _regexp(text: str, wildcards: bool = False) -> str:
    """`text` as a POSIX extended regular expression in a Postfix regexp table (delimited by "/"); with
    `wildcards`, `*` and `?` keep their meaning in recipient filtering's list."""
    out = []
    for char in text:
        if wildcards and char in "*?":
            out.append(".*" if char == "*" else ".")
        elif char in "\\^/":
            out.append(f"\\{char}")
        elif char in ".[]$()*+?{}|":
            out.append("[[]" if char == "[" else f"[{char}]")
        else:
            out.append(char)
    return "".join(out)


def _filter_table(number: int) -> str:
    return f"recipient_filter_{number}"


def _connection_table(number: int) -> str:
    return "connection_clients" if number == 0 else f"connection_clients_{number}"


def _relay_table(number: int) -> str:
    return "relay_clients" if number == 0 else f"relay_clients_{number}"


class PostfixStandIn(StandInBase):
    """A running Postfix for one lab server: configured, started in its namespace, read, stopped."""

    mta = "Postfix"

    sasl: DovecotAuth | None = None
    namespace: Namespace | None = None

    @property
    def log_path(self) -> Path:
        return self.root / "postfix.log"

    def start(self, namespace: Namespace) -> None:
        self.namespace = namespace
        etc = self.root / "etc"
        for folder in ("etc", "spool", "data", "mail"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        owner = namespace.user("postfix")
        for folder in ("data", "mail"):
            os.chown(self.root / folder, *owner)
        open_to_daemons(self.root)  # they run as the postfix user
        chain = None
        if self.certificates is not None:
            fqdn = self.config.organization.server(self.server).fqdn
            chain = self.certificates.write_chain(fqdn, etc / "tls-chain.pem")
        for name, text in render(self.config, self.server, self.table, self.root, chain, owner).items():
            (etc / name).write_text(text, encoding="utf-8")
        for name in TABLES:
            self._postfix("postmap", "-c", str(etc), str(etc / name))
        virtual_servers = self.config.organization.server(self.server).virtual_servers
        if self.table.logins and any(vs.basic_auth for vs in virtual_servers):
            # Made before Postfix makes it, as Postfix would: the postfix user's, private to it.
            private = self.root / "spool" / "private"
            private.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chown(private, owner[0], 0)
            self.sasl = DovecotAuth(self.root, self.table.logins)
            self.sasl.start(namespace, self.root / "spool")
        master = namespace.daemon("postfix master")
        self._postfix("postfix", "-c", str(etc), "start")
        # The master runs apart from us (it leads a session of its own, its services in its group).
        if (pid := pid_file(self.root / "spool" / "pid" / "master.pid")) is not None:
            master.started(pid)
        self._wait_until_listening()

    def stop(self) -> None:
        if self.namespace is None:
            return
        if self.sasl is not None:
            self.sasl.stop(self.namespace)
            self.sasl = None
        # abort, not stop: nothing in the queue matters once the trace is over, and stop waits.
        subprocess.run(
            self.namespace.command(["postfix", "-c", str(self.root / "etc"), "abort"]),
            capture_output=True,
            check=False,
            timeout=30,
        )
        self.namespace = None

    def idle(self) -> bool:
        spool = self.root / "spool"
        return not any(path.is_file() for queue in SPOOL_QUEUES for path in (spool / queue).rglob("*"))

    def deliveries(self) -> list[MailboxDelivery]:
        return maildir_deliveries(self.root / "mail", self.server)

    def queues(self) -> list[MtaQueue]:
        """Postfix's own queues from `postqueue -j`; a deferred message's next attempt is its queue
        file's modification time, which the queue manager sets to it."""
        messages = self._messages()
        found = []
        for name, state in QUEUE_STATES.items():
            here = [m for m in messages if m["queue_name"] == name]
            retries = [t for m in here if name == "deferred" and (t := self._next_attempt(m["queue_id"]))]
            recipients = {r["address"] for m in here for r in m.get("recipients", [])}
            state = state if here else QueueState.READY
            found.append(MtaQueue(name, state, len(here), tuple(recipients), min(retries, default=None)))
        return found

    def freeze(self, queue: str, frozen: bool) -> str:
        """Postfix freezes messages, not destinations: `postsuper -h` puts what is in a queue (or one
        message, by queue id) on hold, `postsuper -H` releases it to the deferred queue. Messages that
        arrive later are not held."""
        etc = str(self.root / "etc")
        ids = {m["queue_id"]: m["queue_name"] for m in self._messages()}
        names = (*HOLDABLE, "hold") if not frozen else HOLDABLE
        chosen = next((n for n in (*names, *ids) if n.lower() == queue.lower()), None)
        if chosen is None:
            raise NotPossible(
                f"Postfix on {self.server} has no queue {queue!r} to {'freeze' if frozen else 'release'}: "
                f"it holds messages (postsuper), not destinations; name one of its queues "
                f"({', '.join(names)}) or a message's queue id ({', '.join(sorted(ids)) or 'none queued'})"
            )
        if frozen:
            argv = ["postsuper", "-c", etc, "-h", *(["ALL", chosen] if chosen in HOLDABLE else [chosen])]
        else:
            argv = ["postsuper", "-c", etc, "-H", "ALL" if chosen in (*HOLDABLE, "hold") else chosen]
        report = self._postfix_output(*argv).strip()
        return f"{' '.join(argv[:1] + argv[3:])}: {report or 'nothing to do'}" + (
            " (Postfix holds the messages queued now; later ones are not held)" if frozen else ""
        )

    def _messages(self) -> list[dict[str, Any]]:
        output = self._postfix_output("postqueue", "-c", str(self.root / "etc"), "-j")
        # One JSON object per line; a warning Postfix writes to stderr is not one.
        return [json.loads(line) for line in output.splitlines() if line.startswith("{")]

    def _next_attempt(self, queue_id: str) -> float | None:
        for path in (self.root / "spool" / "deferred").rglob(queue_id):
            try:
                return path.stat().st_mtime
            except FileNotFoundError:  # delivered meanwhile
                return None
        return None

    def _postfix_output(self, *argv: str) -> str:
        """A Postfix command's output (postsuper reports on stderr); a failure raises with its words."""
        if self.namespace is None:
            raise PostfixError(f"Postfix for {self.server} is not running")
        result = subprocess.run(
            self.namespace.command(argv), capture_output=True, text=True, check=False, timeout=60
        )
        if result.returncode != 0:
            raise PostfixError(
                f"{argv[0]} for {self.server} failed (exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip() or 'no output'}"
            )
        return result.stdout + result.stderr

    def _postfix(self, *argv: str) -> None:
        assert self.namespace is not None
        result = subprocess.run(
            self.namespace.command(argv), capture_output=True, text=True, check=False, timeout=60
        )
        if result.returncode != 0:
            log = (
                self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
            )
            raise PostfixError(
                f"{' '.join(argv[:2])} for {self.server} failed (exit {result.returncode}): "
                f"{(result.stderr.strip() or log.strip()[-2000:]) or 'no output'}"
            )

    def _wait_until_listening(self) -> None:
        vs = self.default_virtual_server
        wait_until_listening(vs.address, vs.port, f"Postfix for {self.server}")


class DovecotAuth:
    """Dovecot, as nothing but the SASL server Postfix asks about AUTH (PLAIN and LOGIN), with the
    directory's accounts in a passwd-file: the way a Postfix site without Exchange's directory would
    check Basic authentication. Runs in the same namespace, from the lab folder."""

    def __init__(self, root: Path, logins: list[Login]) -> None:
        self.root = root / "dovecot"
        self.logins = logins

    def files(self, spool: Path) -> dict[str, str]:
        """Dovecot's files in its folder, by name: the accounts (`users`, root's and the dovecot group's
        to read) and its configuration, for a Postfix whose spool is `spool`."""
        users = self.root / "users"
        config = f"""base_dir = {self.root / "run"}
state_dir = {self.root / "state"}
log_path = {self.root / "dovecot.log"}
protocols =
ssl = no
auth_mechanisms = login plain
# Exchange answers a wrong password at once: no failure delay, and no growing penalty per client
# address (the anvil listener that keeps it is turned off), which would outlast Postfix's wait.
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {users}
}}
userdb {{
  driver = static
  args = uid=postfix gid=postfix home=/nonexistent
}}
service auth {{
  unix_listener {spool / "private" / "auth"} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
"""
        return {
            "users": "".join(
                f"{name}:{{PLAIN}}{login.password}\n" for login in self.logins for name in login.names
            ),
            "dovecot.conf": config,
        }

    def start(self, namespace: Namespace, spool: Path) -> None:
        for folder in ("run", "state"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        for name, text in self.files(spool).items():
            (self.root / name).write_text(text, encoding="utf-8")
        users = self.root / "users"
        users.chmod(0o640)
        os.chown(users, 0, namespace.group("dovecot"))
        # The daemon keeps whatever it inherits open: its output goes to a file, not to a pipe we wait on.
        errors = self.root / "startup.log"
        master = namespace.daemon("dovecot")
        with errors.open("w") as sink:
            result = subprocess.run(
                namespace.command(["dovecot", "-c", str(self.root / "dovecot.conf")]),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                check=False,
                timeout=30,
            )
        if result.returncode != 0:
            raise PostfixError(f"dovecot (SASL for Postfix) failed: {errors.read_text().strip()}")
        if (pid := pid_file(self.root / "run" / "master.pid")) is not None:
            master.started(pid)

    def stop(self, namespace: Namespace) -> None:
        # Killed outright, its whole process group (the master daemonizes with its children): nothing it
        # holds outlives the trace, and `doveadm stop` would wait seconds for a graceful shutdown.
        try:
            master = int((self.root / "run" / "master.pid").read_text().strip())
            if namespace.shares_pids:
                os.killpg(os.getpgid(master), signal.SIGKILL)
            else:  # a pid of the container's own: killed there
                subprocess.run(
                    namespace.command(["sh", "-c", f"kill -KILL -- -$(ps -o pgid= -p {master} | tr -d ' ')"]),
                    capture_output=True,
                    check=True,
                    timeout=30,
                )
        except (OSError, ValueError, subprocess.CalledProcessError):
            subprocess.run(
                namespace.command(["doveadm", "-c", str(self.root / "dovecot.conf"), "stop"]),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
                timeout=30,
            )


def installed() -> str | None:
    """None if Postfix can run here, else why not."""
    if shutil.which("postfix") is None or shutil.which("postmap") is None:
        return "Postfix is not installed (Debian package postfix; `make postfix` installs it)"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "the postfix user does not exist (install the Debian package postfix)"
    return None
