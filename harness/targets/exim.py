"""Exim 4 standing in for one Exchange server of the lab, in that server's network namespace.

The server's plan (harness/targets/plan.py) is written as one Exim configuration, the way a mail
administrator would translate the Exchange settings:

    authoritative domains                  domainlist local_domains; unknown users bounce after
                                           acceptance, as Exchange does, unless directory filtering
    shared namespaces, "allow relaying"    domainlist relay_to_domains
    mailboxes on this server               accept router → a Maildir per mailbox the harness reads
    mailboxes on other servers             manualroute to that server (lsearch table)
    secondary addresses, groups, contacts  redirect router (lsearch table)
    connectors and smart hosts             a manualroute or dnslookup router per address space
    each virtual server                    an interface in local_interfaces; its settings chosen by
                                           $received_ip_address in the ACLs and expanded options
    relay restrictions, connection control host lists in the RCPT and connect ACLs
    recipient filtering                    the RCPT ACL, with a wildlsearch table of the list
    Basic authentication                   plaintext PLAIN and LOGIN against the directory's accounts

The replies Exim's ACLs give are Exchange's own texts (reference_mta/replies.py): an ACL needs a message
in any case, and an administrator emulating Exchange would write those.

Exim's Debian package conflicts with Postfix's, so on this machine it is unpacked into tools/mtas/root
(`make mtas`) and run from there, in a private mount namespace where /etc/exim4 is the lab folder's
configuration (the path compiled into Debian's binary; the folder must exist, `make mtas` makes it). In a
container of its image (the Docker backend) it runs from its package, /usr/sbin/exim4, and
/etc/exim4/exim4.conf is a link to the lab folder's (harness/targets/daemon.py says why).
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
    run,
    wait_until_listening,
)
from harness.targets.plan import ClientRule, NextHop, ServerPlan, plan
from reference_mta import replies
from reference_mta.queue_contract import QueueState
from reference_mta.session_rules import CALL_LIMITS
from reference_mta.topology import VirtualServer

EXIM = UNPACKED / "usr" / "sbin" / "exim4"
PACKAGED_EXIM = "/usr/sbin/exim4"  # in a container of Exim's image
CONFIG_DIR = "/etc/exim4"  # compiled into Debian's binary, with exim4.conf in it
USER = "Debian-exim"
# Exim has one queue; `mailflow queues` shows its frozen messages apart, as Queue Viewer would.
QUEUE, FROZEN_QUEUE = "queue", "frozen"
# The unknown commands a session may send to Exchange, the last one closing it (aiosmtpd's budget).
UNKNOWN_COMMANDS = 5
# The first line of a message in `exim -bp`: time queued, size, id, <sender>, and a frozen mark.
_LISTED = re.compile(
    r"\s*\S+\s+\S+\s+(?P<id>[\w]+-[\w]+-[\w]+) <(?P<sender>[^>]*)>(?P<frozen> \*\*\* frozen \*\*\*)?"
)


def render(
    config: LabConfig,
    server: str,
    table: RecipientTable,
    root: Path,
    tls_chain: Path | None,
    exim: str = str(EXIM),
) -> dict[str, str]:
    """The files of the configuration folder: exim4.conf and the lookup tables it names; `exim` is the
    binary's path where it runs (it runs itself again to deliver)."""
    the_plan = plan(config, server, table)
    etc = root / "etc"
    files = {
        "mailboxes": _table((address, m.primary) for m in the_plan.mailboxes for address in m.addresses),
        "mailbox_routes": _table((a, _host(hop)) for a, hop in the_plan.mailbox_routes.items()),
        "aliases": _table((a, ", ".join(t) if t else ":blackhole:") for a, t in the_plan.aliases.items()),
        "passwords": _table((name, login.password) for login in table.logins for name in login.names),
    }
    for number, listener in enumerate(the_plan.listeners):
        filtering = listener.vs.recipient_filtering
        if filtering is not None and filtering.addresses:
            files[f"filter_{number}"] = "".join(f"{_pattern(p)}: yes\n" for p in filtering.addresses)
    files["exim4.conf"] = _configuration(config, the_plan, table, root, etc, tls_chain, exim)
    return files


def _configuration(
    config: LabConfig,
    the_plan: ServerPlan,
    table: RecipientTable,
    root: Path,
    etc: Path,
    tls_chain: Path | None,
    exim: str,
) -> str:
    authenticated = bool(table.logins)
    lines = [
        *_identity_options(config, the_plan, root, exim),
        *_policy_options(the_plan, authenticated, tls_chain is not None),
        *_limit_options(config),
        *_session_limits(the_plan),
    ]
    if tls_chain is not None:
        lines += [f"tls_certificate = {tls_chain}", f"tls_privatekey = {tls_chain}"]
    lines += ["", "begin acl", ""]
    lines += _acls(the_plan, etc, authenticated)
    lines += ["", "begin routers", ""]
    lines += _routers(the_plan, etc)
    lines += _transports(config, the_plan, root, etc)
    if authenticated:
        lines += _authenticators(etc)
    return "\n".join(lines) + "\n"


def _identity_options(config: LabConfig, the_plan: ServerPlan, root: Path, exim: str) -> list[str]:
    """Where Exim's files are, whom it runs as, and the names and addresses it answers on."""
    me = the_plan.server
    listeners = the_plan.listeners
    hostnames = {each.vs.address: each.vs.fqdn for each in listeners if each.vs.fqdn}
    return [
        "# Rendered by mailflow from the lab file; see harness/targets/exim.py.",
        f"exim_path = {exim}",
        f"spool_directory = {root / 'spool'}",
        f"log_file_path = {root / 'log' / '%slog'}",
        "log_selector = +smtp_protocol_error +smtp_syntax_error +received_recipients +incoming_interface",
        f"exim_user = {USER}",
        f"exim_group = {USER}",
        "keep_environment =",
        f"primary_hostname = {me.fqdn}",
        f"qualify_domain = {config.organization.primary_domain}",
        "local_interfaces = <; " + " ; ".join(f"[{each.vs.address}]:{each.vs.port}" for each in listeners),
        f"smtp_active_hostname = {_by_listener(hostnames, me.fqdn)}",
        "smtp_banner = $smtp_active_hostname ESMTP",
        # RFC 5321 4.4's trace line: the client's EHLO name with its address literal, by the name of the
        # virtual server it reached. Exim's own puts the address first and the EHLO name in a comment,
        # since it looks up no host names here.
        "received_header_text = Received: ${if def:sender_host_address"
        "{from ${if def:sender_helo_name{$sender_helo_name }}([$sender_host_address]) }}"
        "by $smtp_active_hostname with $received_protocol\\n\\t(Exim $version_number) "
        "id $message_exim_id${if def:received_for{\\n\\tfor $received_for}}",
    ]


def _policy_options(the_plan: ServerPlan, authenticated: bool, tls: bool) -> list[str]:
    """The domain and host lists, what each virtual server advertises, and the ACLs' names."""
    listeners = the_plan.listeners
    return [
        "domainlist local_domains = " + (" : ".join(the_plan.authoritative) or "!*"),
        "domainlist relay_to_domains = "
        + (" : ".join(_domain_pattern(d) for d in the_plan.relay_domains) or "!*"),
        "hostlist organization_servers = <; "
        + " ; ".join(str(network) for network in the_plan.organization_servers),
        "message_size_limit = "
        + _by_listener({each.vs.address: f"{each.vs.max_message_kb}K" for each in listeners}, "50M"),
        "smtputf8_advertise_hosts = " + _where(the_plan, (each.vs.smtputf8 for each in listeners)),
        "chunking_advertise_hosts = " + _where(the_plan, (each.vs.chunking for each in listeners)),
        f"auth_advertise_hosts = {_auth_offered(the_plan, authenticated, tls)}",
        "tls_advertise_hosts = " + _where(the_plan, (tls and each.vs.tls for each in listeners)),
        # PIPECONNECT (Exim's early pipelining) lets a client write commands behind EHLO before its reply,
        # which is what a virtual server that enforces sync points refuses (RFC 2920 3.1): offered only
        # where the virtual server is lenient. Exchange offers no such extension.
        "pipelining_connect_advertise_hosts = "
        + _where(the_plan, (each.vs.pipelining_sync == "lenient" for each in listeners)),
        "dsn_advertise_hosts = *",  # Exchange offers DSN (RFC 3461) to every client
        # Exchange takes domain literals and judges them as any other domain (relay refused, 550).
        "allow_domain_literals = true",
        "acl_smtp_connect = acl_connect",
        "acl_smtp_helo = acl_helo",
        "acl_smtp_mail = acl_mail",
        "acl_smtp_rcpt = acl_rcpt",
        "acl_smtp_vrfy = acl_vrfy",
        "acl_smtp_expn = acl_expn",
        "acl_smtp_data = acl_data",
    ]


def _limit_options(config: LabConfig) -> list[str]:
    """Connections, the lab's timers, and the look-ups Exim must not make."""
    return [
        "smtp_accept_max = 100",
        # The lab's timers: retries within seconds, expiry as the lab file says, and one delay notice
        # (DSN-2) once a message has waited as long as Exchange waits (the last time repeats; never).
        f"delay_warning = {_seconds(config.timers.delay_notification)}:3650d",
        "ignore_bounce_errors_after = 0s",
        f"timeout_frozen_after = {_seconds(config.timers.expiration)}",
        "rfc1413_hosts =",
        "host_lookup =",
        "never_users = root",
    ]


def _session_limits(the_plan: ServerPlan) -> list[str]:
    """Each virtual server's session limits (General → Connection time-out, Messages → Limit number of
    messages per connection), and Exchange's fixed limit on commands that carry no mail."""
    listeners = the_plan.listeners
    per_connection = {
        each.vs.address: str(each.vs.max_messages_per_connection)
        for each in listeners
        if each.vs.max_messages_per_connection is not None
    }
    timeouts = {each.vs.address: _seconds(each.vs.connection_timeout) for each in listeners}
    return [
        "smtp_accept_max_per_connection = " + _by_listener(per_connection, "0"),
        "smtp_receive_timeout = " + _by_listener(timeouts, "10m"),
        # Exchange limits each command a session may send (reference_mta/session_rules.py CALL_LIMITS);
        # Exim has one limit for all commands that carry no mail, so it gets the largest of Exchange's
        # (RSET), and never refuses a client Exchange would serve. Exim's default (10) would.
        f"smtp_accept_max_nonmail = {CALL_LIMITS['RSET']}",
        # Exchange answers four unknown commands a session and closes at the fifth (aiosmtpd's budget,
        # docs/decisions.md); Exim closes when more than this many have come.
        f"smtp_max_unknown_commands = {UNKNOWN_COMMANDS - 1}",
        # Exchange counts every error reply towards a virtual server's limit; Exim counts only syntax and
        # protocol errors, with one limit for all listeners: the largest, so no session Exchange keeps
        # open is closed.
        f"smtp_max_synprot_errors = {max(each.vs.max_errors for each in listeners)}",
    ]


def _by_listener(values: Mapping[str, str], default: str) -> str:
    """An expansion giving the value of the listener a message came in on, else `default`."""
    text = default
    for address, value in values.items():
        text = f"${{if eq{{$received_ip_address}}{{{address}}}{{{value}}}{{{text}}}}}"
    return text


def _where(the_plan: ServerPlan, predicate: Iterable[bool]) -> str:
    """A host list matching every client on the listeners for which `predicate` holds."""
    addresses = [each.vs.address for each, yes in zip(the_plan.listeners, predicate, strict=True) if yes]
    if not addresses:
        return ""
    return "${if match_ip{$received_ip_address}{<; " + " ; ".join(addresses) + "}{*}{}}"


def _auth_offered(the_plan: ServerPlan, authenticated: bool, tls: bool) -> str:
    """Where AUTH is offered. "Requires TLS encryption": AUTH is offered on such a virtual server only
    inside TLS."""
    listeners = the_plan.listeners
    auth_anywhere = [each.vs.address for each in listeners if authenticated and each.vs.basic_auth]
    auth_after_tls = [each.vs.address for each in listeners if each.vs.auth_requires_tls and each.vs.tls]
    return (
        "${if or{{match_ip{$received_ip_address}{<; "
        + " ; ".join(a for a in auth_anywhere if a not in auth_after_tls or not tls)
        + "}}{and{{def:tls_in_cipher}{match_ip{$received_ip_address}{<; "
        + " ; ".join(a for a in auth_anywhere if a in auth_after_tls and tls)
        + "}}}}}{*}{}}"
    )


def _transports(config: LabConfig, the_plan: ServerPlan, root: Path, etc: Path) -> list[str]:
    """The transports (a Maildir per mailbox, SMTP from the server's address), the retry rule, and the
    heading of the authenticators."""
    mailbox = f"${{lookup{{${{lc:$local_part@$domain}}}}lsearch{{{etc / 'mailboxes'}}}}}"
    return [
        "",
        "begin transports",
        "",
        "maildir:",
        "  driver = appendfile",
        f"  directory = {root / 'mail'}/{mailbox}",
        "  maildir_format",
        f"  user = {USER}",
        f"  group = {USER}",
        "  mode = 0640",
        "  envelope_to_add",
        "  return_path_add",
        "  delivery_date_add",
        "",
        "remote_smtp:",
        "  driver = smtp",
        f"  interface = {the_plan.server.address}",
        "  connect_timeout = 5s",
        # A message with a non-ASCII address is not rewritten for a next hop without SMTPUTF8 (Exim would
        # turn the local part into punycode, another address): it is returned, as Exchange does.
        "  utf8_downconvert = 0",
        "",
        "begin retry",
        "",
        f"* * F,{_seconds(config.timers.expiration)},{_seconds(config.timers.intervals[0])}",
        "",
        "begin rewrite",
        "",
        "begin authenticators",
        "",
    ]


def _authenticators(etc: Path) -> list[str]:
    """LOGIN and PLAIN, checked against the directory's accounts."""
    check = f"lsearch{{{etc / 'passwords'}}}"
    return [
        "login:",
        "  driver = plaintext",
        "  public_name = LOGIN",
        '  server_prompts = "Username:: : Password::"',
        f"  server_condition = {_password_matches('$auth1', '$auth2', check)}",
        "  server_set_id = $auth1",
        "",
        "plain:",
        "  driver = plaintext",
        "  public_name = PLAIN",
        "  server_prompts = :",
        f"  server_condition = {_password_matches('$auth2', '$auth3', check)}",
        "  server_set_id = $auth2",
        "",
    ]


def _acls(the_plan: ServerPlan, etc: Path, authenticated: bool) -> list[str]:
    connect, rcpt, vrfy, expn = ["acl_connect:"], ["acl_rcpt:"], ["acl_vrfy:"], ["acl_expn:"]
    mail = ["acl_mail:", "  deny", "    condition = ${if !def:sender_helo_name}"]
    mail.append(f"    message = {_text(replies.SEND_HELLO_FIRST)}")
    for number, listener in enumerate(the_plan.listeners):
        vs = listener.vs
        on = f"  condition = ${{if eq{{$received_ip_address}}{{{vs.address}}}}}"
        if listener.connection_clients:
            connect += [
                "  deny",
                on,
                f"    hosts = <; {_refused(listener.connection_clients)}",
                f"    message = {_text(replies.CONNECTION_REFUSED)}",
            ]
        if not vs.anonymous:
            for acl in (mail, vrfy, expn):
                acl += ["  deny", on, "    !authenticated = *"]
                acl.append(f"    message = {_text(replies.NOT_AUTHENTICATED)}")
        vrfy += _vrfy_refused(vs, on)
        if vs.expn == "disabled":
            expn += ["  deny", on, f"    message = {_text(replies.NOT_IMPLEMENTED)}"]
        rcpt += [
            "  defer",
            on,
            f"    condition = ${{if >={{$recipients_count}}{{{vs.max_recipients}}}}}",
            f"    message = {_text(replies.TOO_MANY_RECIPIENTS)}",
        ]
        filtering = vs.recipient_filtering
        if filtering is not None:
            # Only for anonymous clients outside the organization, at authoritative domains
            # (reference_mta/access_policy.py: filtering_applies).
            judged = [
                on,
                "    !authenticated = *",
                "    !hosts = +organization_servers",
                "    domains = +local_domains",
            ]
            if filtering.addresses:
                rcpt += ["  deny", *judged, f"    recipients = nwildlsearch;{etc / f'filter_{number}'}"]
                rcpt.append(f"    message = {_text(replies.MAILBOX_NOT_AVAILABLE)}")
            if filtering.directory:
                rcpt += ["  deny", *judged, "    !verify = recipient/no_details"]
                rcpt.append(f"    message = {_text(replies.MAILBOX_NOT_AVAILABLE)}")
        relay_hosts = _allowed(listener.relay_clients)
        rcpt += ["  accept", on, "    domains = +local_domains : +relay_to_domains"]
        if relay_hosts:
            rcpt += ["  accept", on, f"    hosts = <; {relay_hosts}"]
        if authenticated and vs.relay.allow_authenticated and vs.basic_auth:
            rcpt += ["  accept", on, "    authenticated = *"]
    connect.append("  accept")
    mail += ["  accept"]
    vrfy += ["  accept"]
    expn += ["  accept"]
    rcpt += ["  deny", f"    message = {replies.unable_to_relay('$local_part@$domain')}"]
    helo = ["acl_helo:", "  accept"]
    data = ["acl_data:", "  accept"]
    return [*connect, "", *helo, "", *mail, "", *rcpt, "", *vrfy, "", *expn, "", *data]


def _vrfy_refused(vs: VirtualServer, on: str) -> list[str]:
    """The VRFY ACL's statements for one virtual server: disabled, or "cannot verify" (252)."""
    if vs.vrfy == "disabled":
        return ["  deny", on, f"    message = {_text(replies.NOT_IMPLEMENTED)}"]
    if vs.vrfy == "cannot_verify":
        cannot = _text(replies.cannot_verify("ADDRESS")).replace("ADDRESS", "$local_part@$domain")
        return ["  deny", on, f"    message = {cannot}"]
    return []


def _routers(the_plan: ServerPlan, etc: Path) -> list[str]:
    key = "${lc:$local_part@$domain}"
    routers = [
        "aliases:",
        "  driver = redirect",
        f"  data = ${{lookup{{{key}}}lsearch{{{etc / 'aliases'}}}}}",
        "  allow_defer",
        "",
        "other_servers:",
        "  driver = manualroute",
        f"  route_data = ${{lookup{{{key}}}lsearch{{{etc / 'mailbox_routes'}}}}}",
        "  transport = remote_smtp",
        "  self = send",
        "",
        "mailboxes:",
        "  driver = accept",
        f"  condition = ${{lookup{{{key}}}lsearch{{{etc / 'mailboxes'}}}{{yes}}{{no}}}}",
        "  transport = maildir",
        "",
        # An authoritative domain holds every address it has: anything else bounces as unknown.
        "unknown:",
        "  driver = redirect",
        "  domains = +local_domains",
        "  allow_fail",
        f"  data = :fail: {_text(replies.USER_UNKNOWN)[4:]}",
        "",
    ]
    # Connector delivery restrictions: the senders they concern are routed first.
    restricted = [
        (f"sender_route_{n}", route, senders) for n, (route, senders) in enumerate(the_plan.sender_routes)
    ]
    general = [(f"route_{n}", route, ()) for n, route in enumerate(the_plan.routes)]
    for name, route, senders in [*restricted, *general]:
        routers.append(f"{name}:")
        if route.domain != "*":
            routers.append(f"  domains = {_domain_pattern(route.domain)}")
        if senders:
            routers.append(f"  senders = <; {' ; '.join(senders)}")
        if route.hop is None:
            routers += ["  driver = dnslookup", "  transport = remote_smtp", "  no_more", ""]
        else:
            routers += [
                "  driver = manualroute",
                f"  route_list = * {_host(route.hop)}",
                "  transport = remote_smtp",
                "  self = send",
                "",
            ]
    routers += ["dns:", "  driver = dnslookup", "  transport = remote_smtp", "  no_more", ""]
    return routers


def _password_matches(name: str, password: str, lookup: str) -> str:
    """An Exim condition: the directory has `name` with this `password`. A failed lookup yields "", so
    an empty password is refused outright (otherwise an unknown name with no password would pass)."""
    stored = f"${{lookup{{${{lc:{name}}}}}{lookup}}}"
    return f"${{if and{{{{!eq{{{password}}}{{}}}}{{eq{{{password}}}{{{stored}}}}}}}}}"


def _host(hop: NextHop) -> str:
    return f"{hop.host}::{hop.port}" if hop.port != 25 else hop.host


def _domain_pattern(domain: str) -> str:
    return f"*{domain}" if domain.startswith(".") else domain


def _allowed(rules: Iterable[ClientRule]) -> str:
    """First-match-wins rules as an Exim host list that matches the clients allowed."""
    return " ; ".join(str(rule.network) if rule.allow else f"!{rule.network}" for rule in rules)


def _refused(rules: Iterable[ClientRule]) -> str:
    return " ; ".join(f"!{rule.network}" if rule.allow else str(rule.network) for rule in rules)


def _pattern(pattern: str) -> str:
    """An Exchange filter entry (`*` the only wildcard) as a wildlsearch key: a case-blind regex."""
    return "^(?i)" + ".*".join(re.escape(part) for part in pattern.lower().split("*")) + "$"


def _table(pairs: Iterable[tuple[str, str]]) -> str:
    return "".join(f'"{key}": {value}\n' for key, value in pairs)


def _text(reply: str) -> str:
    """A reply as an ACL message: Exim takes the code and enhanced code from its start; `$` and `\\`
    would be expanded."""
    return reply.replace("\\", "\\\\").replace("$", "\\$")


def _seconds(value: float) -> str:
    return f"{max(1, round(value))}s"


@dataclass
class _Queued:
    id: str
    frozen: bool
    recipients: list[str] = field(default_factory=list)  # not yet delivered


def listed(output: str) -> list[_Queued]:
    """The messages of `exim -bp` output: recipients indented under each, "D " before delivered ones."""
    messages: list[_Queued] = []
    for line in output.splitlines():
        if match := _LISTED.match(line):
            messages.append(_Queued(match["id"], bool(match["frozen"])))
        elif messages and line.strip() and not line.lstrip().startswith("D "):
            messages[-1].recipients.append(line.strip())
    return messages


class EximStandIn(StandInBase):
    """A running Exim for one lab server: configured, started in its namespace, read, stopped."""

    mta = "Exim"
    daemon: Foreground | None = None
    namespace: Namespace | None = None

    @property
    def log_path(self) -> Path:
        return self.root / "log" / "mainlog"

    def start(self, namespace: Namespace) -> None:
        self.namespace = namespace
        owner = namespace.user(USER)
        etc = self.root / "etc"
        for folder in ("etc", "spool", "mail", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        open_to_daemons(self.root)
        for folder in ("spool", "mail", "log"):
            os.chown(self.root / folder, *owner)
        chain = None
        if self.certificates is not None:
            fqdn = self.config.organization.server(self.server).fqdn
            chain = self.certificates.write_chain(fqdn, etc / "tls-chain.pem")
            os.chown(chain, *owner)
        exim = PACKAGED_EXIM if packaged(namespace) else str(EXIM)
        for name, text in render(self.config, self.server, self.table, self.root, chain, exim).items():
            (etc / name).write_text(text, encoding="utf-8")
        if packaged(namespace):
            link_into_place(
                namespace,
                [(etc / "exim4.conf", f"{CONFIG_DIR}/exim4.conf")],
                f"Exim's configuration for {self.server}",
            )
        argv = self._command("-bdf", f"-q{_seconds(self.config.timers.intervals[0])}")
        self.daemon = Foreground(namespace, argv, self.root / "exim.out", "exim")
        vs = self.default_virtual_server
        try:
            wait_until_listening(vs.address, vs.port, f"Exim for {self.server}", self.daemon)
        except StandInError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def idle(self) -> bool:
        """No message is being received or delivered: every spooled message's data file can be locked
        (Exim holds that lock while it works on one). Messages waiting for a retry count as idle, as
        Postfix's deferred queue does."""
        for data in (self.root / "spool" / "input").glob("*-D"):
            try:
                with data.open("rb+") as handle:
                    fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB, 0)
                    fcntl.lockf(handle, fcntl.LOCK_UN)
            except FileNotFoundError:
                continue
            except OSError:
                return False
        return True

    def deliveries(self) -> list[MailboxDelivery]:
        return maildir_deliveries(self.root / "mail", self.server)

    def queues(self) -> list[MtaQueue]:
        """Exim's queue from `exim -bp`: the messages waiting (Active while Exim works on one: it did
        not deliver them when they came, so they wait for a retry) and the frozen ones apart."""
        messages = listed(self._exim("-bp", what="exim -bp (list the queue)"))
        waiting = [m for m in messages if not m.frozen]
        frozen = [m for m in messages if m.frozen]
        state = QueueState.ACTIVE if not self.idle() else QueueState.RETRY if waiting else QueueState.READY
        return [
            MtaQueue(QUEUE, state, len(waiting), tuple(r for m in waiting for r in m.recipients)),
            MtaQueue(
                FROZEN_QUEUE,
                QueueState.FROZEN if frozen else QueueState.READY,
                len(frozen),
                tuple(r for m in frozen for r in m.recipients),
            ),
        ]

    def freeze(self, queue: str, frozen: bool) -> str:
        """Exim freezes messages (`exim -Mf`) and thaws them (`exim -Mt`): every message in its queue,
        or one by its id. Messages that arrive later are not frozen."""
        messages = listed(self._exim("-bp", what="exim -bp (list the queue)"))
        names = (QUEUE,) if frozen else (QUEUE, FROZEN_QUEUE)
        ids = [m.id for m in messages if m.frozen != frozen]
        if queue.lower() in names:
            chosen = ids
        elif any(m.id == queue for m in messages):
            chosen = [queue]
        else:
            raise NotPossible(
                f"Exim on {self.server} has no queue {queue!r}: it freezes messages, not destinations; "
                f"name its queue ({', '.join(names)}) or a message id "
                f"({', '.join(m.id for m in messages) or 'none queued'})"
            )
        if not chosen:
            return f"nothing to {'freeze' if frozen else 'thaw'}"
        flag = "-Mf" if frozen else "-Mt"
        self._exim(flag, *chosen, what=f"exim {flag}")
        done = f"exim {flag} {' '.join(chosen)}"
        return done + (" (Exim froze the messages queued now; later ones are not frozen)" if frozen else "")

    def _exim(self, *arguments: str, what: str) -> str:
        if self.namespace is None:
            raise StandInError(f"Exim for {self.server} is not running")
        return run(self.namespace, self._command(*arguments), f"{what} for {self.server}")

    def _command(self, *arguments: str) -> list[str]:
        """Exim with `arguments`, reading the lab folder's configuration where it runs."""
        assert self.namespace is not None
        if packaged(self.namespace):
            return [PACKAGED_EXIM, *arguments]
        return in_private_mounts([(self.root / "etc", CONFIG_DIR)], [str(EXIM), *arguments])


def installed() -> str | None:
    """None if Exim can run here, else why not."""
    if not EXIM.is_file():
        return f"Exim is not unpacked ({EXIM} missing; `make mtas` unpacks the Debian package)"
    if not Path(CONFIG_DIR).is_dir():
        return (
            f"{CONFIG_DIR} is missing (`make mtas` makes it; the unpacked Exim reads its configuration there)"
        )
    if shutil.which("unshare") is None:
        return "util-linux's unshare is missing (Debian package util-linux)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"the {USER} user does not exist (`make mtas` adds it)"
    return None
