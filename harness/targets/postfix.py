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
    size / recipient limits, FQDN, VRFY    message_size_limit, smtpd_recipient_limit, myhostname, ...

Postfix runs from its Debian package with a configuration directory of its own in the lab's folder
(`postfix -c`), every daemon unchrooted, logging to a file the report attaches. Not modelled: Basic
authentication (Postfix needs a SASL server), recipient filtering lists, connection control.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from harness.lab.certificates import LabCertificates
from harness.lab.config import LabConfig
from harness.lab.netns import Namespace
from harness.lab.standin import MailboxDelivery
from harness.targets.daemon import StandInError, maildir_deliveries, open_to_daemons, wait_until_listening
from harness.targets.plan import Listener, NextHop, plan
from harness.targets.recipients import Login, RecipientTable
from reference_mta.topology import Server

SPOOL_QUEUES = ("maildrop", "incoming", "active")
# Every Postfix service a lab server needs, none chrooted (a chroot would need copies of the lab's
# resolv.conf and of the Maildir base inside the spool).
_SERVICES = """\
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 1 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
lmtp unix - - n - - lmtp
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
tlsmgr unix - - n 1000? 1 tlsmgr
"""
TABLES = ("virtual_mailbox", "virtual_alias", "transport")


class PostfixError(StandInError):
    """Postfix could not be configured or started; the message quotes Postfix's own words."""


def render(
    config: LabConfig, server: str, table: RecipientTable, root: Path, tls_chain: Path | None = None
) -> dict[str, str]:
    """The files of Postfix's configuration directory for `server`, keyed by file name; `tls_chain` is
    the server's key and certificate when its virtual server has a certificate bound."""
    organization = config.organization
    the_plan = plan(config, server, table)
    me = the_plan.server
    owner = pwd.getpwnam("postfix")
    main = {
        "compatibility_level": "3.6",
        "queue_directory": str(root / "spool"),
        "data_directory": str(root / "data"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "maillog_file": str(root / "postfix.log"),
        "maillog_file_prefixes": str(root),
        "mydomain": organization.primary_domain,
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
        "virtual_uid_maps": f"static:{owner.pw_uid}",
        "virtual_gid_maps": f"static:{owner.pw_gid}",
        "relay_domains": ", ".join(the_plan.relay_domains),
        # Exchange's domains cover only themselves (docs/decisions.md): no parent-domain matching for
        # relay_domains (".example" entries, from "*.example" address spaces, still cover subdomains).
        "parent_domain_matches_subdomains": "debug_peer_list, fast_flush_domains, mynetworks, "
        "permit_mx_backup_networks, qmqpd_authorized_clients, smtpd_access_maps",
        # Exchange's codes where Postfix lets them be chosen: a refused relay is 550 5.7.1.
        "relay_domains_reject_code": "550",
        # The lab's timers: retries within seconds, expiry as the lab file says.
        "queue_run_delay": _seconds(config.timers.intervals[0]),
        "minimal_backoff_time": _seconds(config.timers.intervals[0]),
        "maximal_backoff_time": _seconds(config.timers.intervals[-1]),
        "maximal_queue_lifetime": _seconds(config.timers.expiration),
        "bounce_queue_lifetime": _seconds(config.timers.expiration),
        "delay_warning_time": "0",
        "smtp_connect_timeout": "5s",
    }
    main.update(
        smtpd_sasl_type="dovecot",  # Dovecot's SASL server (DovecotAuth), a socket in the spool
        smtpd_sasl_path="private/auth",
        broken_sasl_auth_clients="yes",  # AUTH=LOGIN as well, as Exchange advertises it
    )
    if tls_chain is not None:
        main["smtpd_tls_chain_files"] = str(tls_chain)
    # The default virtual server's settings are main.cf's; every other one is an smtpd listener of its
    # own that overrides what differs (master.cf -o), with its own relay table.
    default = _smtpd_settings(me, the_plan.listeners[0], 0, root, table, tls_chain)
    main.update(default)
    files = {"main.cf": "".join(f"{key} = {value}\n" for key, value in main.items())}
    listeners: list[str] = []
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
    files["master.cf"] = "".join(listeners) + _SERVICES
    files["virtual_mailbox"] = "".join(f"{m.primary} {m.primary}/\n" for m in the_plan.all_mailboxes)
    files["virtual_alias"] = "".join(
        f"{address} {', '.join(targets) or 'devnull@invalid'}\n"
        for address, targets in the_plan.aliases.items()
    )
    transports = [f"{address} {_transport(hop)}\n" for address, hop in the_plan.mailbox_routes.items()]
    # ":" is Postfix's "default transport, MX look-up": written out so that a wider entry (".example")
    # does not catch a domain this server delivers itself (northwind.example).
    transports += [f"{route.domain} {_transport(route.hop)}\n" for route in the_plan.routes]
    files["transport"] = "".join(transports)
    return files


def _transport(hop: NextHop | None) -> str:
    return ":" if hop is None else f"smtp:[{hop.host}]:{hop.port}"


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
    if authenticated and vs.relay.allow_authenticated and not vs.relay.open:
        relay = f"permit_sasl_authenticated, {relay}"
    tls = vs.tls and tls_chain is not None
    return {
        "myhostname": vs.fqdn or me.fqdn,
        "smtpd_relay_restrictions": relay,
        # Anonymous access off: nothing but an authenticated client may send, refused at MAIL as
        # Exchange does (530 there; Postfix's reject is 554).
        "smtpd_sender_restrictions": "" if vs.anonymous else "permit_sasl_authenticated, reject",
        # Connection control: clients outside the list are refused when they connect (554, then only
        # QUIT, as Exchange and RFC 5321 3.1 have it), which needs the restrictions judged at once.
        "smtpd_client_restrictions": f"check_client_access cidr:{root / 'etc' / _connection_table(number)}",
        "smtpd_delay_reject": "yes" if vs.anonymous and listener.connection_open else "no",
        "message_size_limit": str(vs.max_message_kb * 1024),
        "smtpd_recipient_limit": str(vs.max_recipients),
        "disable_vrfy_command": "yes" if vs.vrfy == "disabled" else "no",
        "smtputf8_enable": "yes" if vs.smtputf8 else "no",
        "smtpd_forbid_unauth_pipelining": "yes" if vs.pipelining_sync == "enforce" else "no",
        "smtpd_sasl_auth_enable": "yes" if authenticated else "no",
        "smtpd_tls_security_level": "may" if tls else "none",
        "smtpd_tls_auth_only": "yes" if tls and vs.auth_requires_tls else "no",
    }


def _connection_table(number: int) -> str:
    return "connection_clients" if number == 0 else f"connection_clients_{number}"


def _relay_table(number: int) -> str:
    return "relay_clients" if number == 0 else f"relay_clients_{number}"


class PostfixStandIn:
    """A running Postfix for one lab server: configured, started in its namespace, read, stopped."""

    def __init__(
        self,
        config: LabConfig,
        server: str,
        table: RecipientTable,
        root: Path,
        certificates: LabCertificates | None = None,
    ) -> None:
        self.certificates = certificates
        self.sasl: DovecotAuth | None = None
        self.config = config
        self.server = server
        self.table = table
        self.root = root
        self.namespace: Namespace | None = None

    @property
    def log_path(self) -> Path:
        return self.root / "postfix.log"

    def start(self, namespace: Namespace) -> None:
        self.namespace = namespace
        etc = self.root / "etc"
        for folder in ("etc", "spool", "data", "mail"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        owner = pwd.getpwnam("postfix")
        for folder in ("data", "mail"):
            os.chown(self.root / folder, owner.pw_uid, owner.pw_gid)
        open_to_daemons(self.root)  # they run as the postfix user
        chain = None
        if self.certificates is not None:
            fqdn = self.config.organization.server(self.server).fqdn
            chain = self.certificates.write_chain(fqdn, etc / "tls-chain.pem")
        for name, text in render(self.config, self.server, self.table, self.root, chain).items():
            (etc / name).write_text(text, encoding="utf-8")
        for name in TABLES:
            self._postfix("postmap", "-c", str(etc), str(etc / name))
        virtual_servers = self.config.organization.server(self.server).virtual_servers
        if self.table.logins and any(vs.basic_auth for vs in virtual_servers):
            # Made before Postfix makes it, as Postfix would: the postfix user's, private to it.
            private = self.root / "spool" / "private"
            private.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chown(private, owner.pw_uid, 0)
            self.sasl = DovecotAuth(self.root, self.table.logins)
            self.sasl.start(namespace, self.root / "spool")
        self._postfix("postfix", "-c", str(etc), "start")
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
        vs = self.config.organization.server(self.server).default_virtual_server
        wait_until_listening(vs.address, vs.port, f"Postfix for {self.server}")


class DovecotAuth:
    """Dovecot, as nothing but the SASL server Postfix asks about AUTH (PLAIN and LOGIN), with the
    directory's accounts in a passwd-file: the way a Postfix site without Exchange's directory would
    check Basic authentication. Runs in the same namespace, from the lab folder."""

    def __init__(self, root: Path, logins: list[Login]) -> None:
        self.root = root / "dovecot"
        self.logins = logins

    def start(self, namespace: Namespace, spool: Path) -> None:
        for folder in ("run", "state"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        users = self.root / "users"
        users.write_text(
            "".join(f"{name}:{{PLAIN}}{login.password}\n" for login in self.logins for name in login.names),
            encoding="utf-8",
        )
        users.chmod(0o640)
        os.chown(users, 0, grp.getgrnam("dovecot").gr_gid)
        (self.root / "dovecot.conf").write_text(
            f"""base_dir = {self.root / "run"}
state_dir = {self.root / "state"}
log_path = {self.root / "dovecot.log"}
protocols =
ssl = no
auth_mechanisms = login plain
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
""",
            encoding="utf-8",
        )
        # The daemon keeps whatever it inherits open: its output goes to a file, not to a pipe we wait on.
        errors = self.root / "startup.log"
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

    def stop(self, namespace: Namespace) -> None:
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
