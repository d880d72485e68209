"""A Postfix the tests start themselves, outside any lab: the Debian binaries with a private
configuration and queue directory, listening on one loopback address and port, delivering into
Maildirs under its folder and handing everything else to one next hop (a lab sink the harness runs). It
is configured as the EX1 stand-in is (harness/targets/postfix.py: render), then moved off the lab's
addresses: to the harness it is an MTA it neither starts nor configures."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.lab import config as lab_config
from harness.lab.certificates import CA_FILE, LabCertificates
from harness.lab.gc import MockGlobalCatalog
from harness.lab.processes import open_to_daemons
from harness.lab.recipients import RecipientTable
from harness.targets import postfix
from harness.targets.daemon import wait_until_listening


def skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("starting Postfix needs root")
    if (why := postfix.installed()) is not None:
        pytest.skip(why)


def _settings(address: str, root: Path, next_hop: tuple[str, int]) -> dict[str, str]:
    hop = f"smtp:[{next_hop[0]}]:{next_hop[1]}"
    return {
        # Postfix listens only on an address an interface carries: 127.0.0.1 is one, the rest of
        # 127.0.0.0/8 only a route. master.cf's listener names the address itself.
        "inet_interfaces": "loopback-only",
        "smtp_bind_address": address,
        # Everything that is not one of its mailboxes goes to the one next hop (bounces included),
        # and no name is looked up: the test's Postfix talks to nothing but loopback.
        "transport_maps": "",
        "sender_dependent_relayhost_maps": "",
        "default_transport": hop,
        "relay_transport": hop,
        "smtp_dns_support_level": "disabled",
        "smtpd_peername_lookup": "no",
        # No Dovecot here: AUTH is not offered.
        "smtpd_sasl_auth_enable": "no",
        "virtual_mailbox_base": str(root / "mail"),
    }


@dataclass(frozen=True)
class Tls:
    """Where the Postfix also listens with TLS: `smtps` from the first byte (RFC 8314), `submission`
    with STARTTLS. Its certificate names its address, signed by a CA written into `folder`."""

    smtps: int
    submission: int
    folder: Path

    @property
    def ca_file(self) -> Path:
        return self.folder / CA_FILE


@contextlib.contextmanager
def running(
    root: Path,
    address: str,
    port: int,
    lab_base: str,
    next_hop: tuple[str, int],
    tls: Tls | None = None,
) -> Iterator[Path]:
    """Postfix at address:port for as long as the block runs; yields its Maildir base (a folder per
    mailbox, named by its address). Its relay lists are the contoso lab's, placed at `lab_base`."""
    config = lab_config.load(lab_config.lab_path("contoso"), base=lab_base)
    catalog = MockGlobalCatalog(config.global_catalog)
    catalog.load()
    table = RecipientTable.from_directory(catalog.connect("test Postfix"), config.global_catalog.base_dn)
    files = postfix.render(config, "EX1", table, root, None)
    main = dict(line.split(" = ", 1) for line in files["main.cf"].splitlines() if " = " in line) | _settings(
        address, root, next_hop
    )
    files["main.cf"] = "".join(f"{key} = {value}\n" for key, value in main.items())
    # One smtpd, on the address and port given, with main.cf's (the default virtual server's) rules.
    services = [line for line in files["master.cf"].splitlines(keepends=True) if " inet " not in line]
    listeners = f"{address}:{port} inet n - n - - smtpd\n"
    if tls is not None:
        tls.folder.mkdir(parents=True, exist_ok=True)
        chain = LabCertificates(tls.folder, "outside").write_chain(address, tls.folder / "chain.pem")
        with_tls = f"-o smtpd_tls_chain_files={chain}"
        listeners += (
            f"{address}:{tls.smtps} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes "
            f"-o smtpd_tls_security_level=encrypt {with_tls}\n"
            f"{address}:{tls.submission} inet n - n - - smtpd -o smtpd_tls_security_level=may {with_tls}\n"
        )
    files["master.cf"] = listeners + "".join(services)
    etc = root / "etc"
    for folder in ("etc", "spool", "data", "mail"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    owner = pwd.getpwnam("postfix")
    for folder in ("data", "mail"):
        os.chown(root / folder, owner.pw_uid, owner.pw_gid)
    open_to_daemons(root)
    for name, text in files.items():
        (etc / name).write_text(text, encoding="utf-8")
    for name in postfix.TABLES:
        subprocess.run(["postmap", "-c", str(etc), str(etc / name)], check=True, capture_output=True)
    started = subprocess.run(["postfix", "-c", str(etc), "start"], capture_output=True, text=True)
    if started.returncode != 0:
        log = (root / "postfix.log").read_text(errors="replace") if (root / "postfix.log").exists() else ""
        pytest.fail(f"postfix start failed: {started.stderr}{log[-2000:]}")
    try:
        wait_until_listening(address, port, "the test's Postfix")
        yield root / "mail"
    finally:
        subprocess.run(["postfix", "-c", str(etc), "abort"], capture_output=True, check=False, timeout=60)
        shutil.rmtree(root / "spool", ignore_errors=True)
