"""Postfix standing in for a server of a lab exported for docker compose (harness/lab/compose.py): the
same configuration as the stand-in's (postfix.py `render`, Dovecot for AUTH), rendered once at export at
the paths the container sees, and a start script that does what PostfixStandIn.start does at run time
(the lookup tables, the SASL socket's folder, Dovecot) before Postfix runs in the foreground."""

from __future__ import annotations

import shlex
from pathlib import Path

from harness.lab.compose import LAB_MOUNT, MtaService, claim_script
from harness.lab.config import LabConfig
from harness.lab.host_agent import chain_file
from harness.lab.recipients import RecipientTable
from harness.targets.postfix import TABLES, DovecotAuth, render

START_SCRIPT = "start.sh"
MAILBOXES = "mail/{mailbox}/new/"  # virtual_mailbox_maps: each primary address, a Maildir


def folder(server: str) -> str:
    """The Postfix folder under the lab's, as the stand-in names it."""
    return f"{server}-postfix"


def service(
    config: LabConfig, server: str, table: RecipientTable, image: str, owner: tuple[int, int]
) -> MtaService:
    """Postfix for `server`, run from `image`, whose postfix user and group are `owner`."""
    root = LAB_MOUNT / folder(server)
    me = config.organization.server(server)
    chain = chain_file(LAB_MOUNT, me.fqdn)  # a container path: never opened here
    files = {f"etc/{name}": text for name, text in render(config, server, table, root, chain, owner).items()}
    sasl = bool(table.logins) and any(vs.basic_auth for vs in me.virtual_servers)
    if sasl:
        dovecot = DovecotAuth(root, table.logins)
        files.update({f"dovecot/{name}": text for name, text in dovecot.files(root / "spool").items()})
    extra = sorted({vs.address for vs in me.virtual_servers} - {me.address})
    files[START_SCRIPT] = start_script(server, root, owner, extra, sasl)
    return MtaService(
        server=server,
        kind="postfix",
        title="Postfix",
        image=image,
        folder=folder(server),
        files=files,
        modes={START_SCRIPT: 0o755, "dovecot/users": 0o600},
        command=["sh", str(root / START_SCRIPT)],
        mailboxes=MAILBOXES,
    )


def start_script(server: str, root: Path, owner: tuple[int, int], extra: list[str], sasl: bool) -> str:
    q = shlex.quote
    etc = root / "etc"
    tables = " ".join(q(str(etc / name)) for name in TABLES)
    dovecot = root / "dovecot"
    sasl_lines = (
        f"""# Dovecot answers Postfix's AUTH questions, from the directory's accounts.
mkdir -p {q(str(dovecot / "run"))} {q(str(dovecot / "state"))} {q(str(root / "spool" / "private"))}
chown postfix:root {q(str(root / "spool" / "private"))}
chmod 700 {q(str(root / "spool" / "private"))}
chown root:dovecot {q(str(dovecot / "users"))}
chmod 640 {q(str(dovecot / "users"))}
dovecot -c {q(str(dovecot / "dovecot.conf"))}
"""
        if sasl
        else ""
    )
    return f"""#!/bin/sh
# Postfix standing in for {server}, written by `mailflow lab export --compose`: etc/ holds its
# configuration, rendered from the lab file at export for this image's postfix user ({owner[0]}:{owner[1]}).
set -eu
if [ "$(id -u postfix):$(id -g postfix)" != "{owner[0]}:{owner[1]}" ]; then
  echo "the image's postfix user is $(id -u postfix):$(id -g postfix), not {owner[0]}:{owner[1]}" \\
       "as at export: export the lab again for this image" >&2
  exit 1
fi
{claim_script(extra)}mkdir -p {q(str(root / "spool"))} {q(str(root / "data"))} {q(str(root / "mail"))}
chown postfix:postfix {q(str(root / "data"))} {q(str(root / "mail"))}
for table in {tables}; do postmap -c {q(str(etc))} "$table"; done
{sasl_lines}echo "lab host {server} started: postfix"
exec postfix -c {q(str(etc))} start-fg
"""
