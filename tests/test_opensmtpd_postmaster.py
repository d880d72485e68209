"""OpenSMTPD standing in for EX1 takes RCPT TO:<Postmaster> without a domain (RFC 5321 4.1.1.3, 4.5.1)
as the organization's postmaster, in any case, and delivers it to the mailbox holding
postmaster@contoso.com: the alias the adapter renders for the host names smtpd completes such an address
with (docs/decisions.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import targets
from harness.corpus.trace import load
from harness.run.runner import run_trace

TRACE = """\
id: protocol/opensmtpd-postmaster-alone
title: RCPT TO:<{rcpt}> alone reaches the mail administrator's mailbox
spec: [IN-3]
lab: contoso
sessions:
  - client: internet
    connect: {{server: EX1{virtual_server}}}
    script:
      - expect: 220
      - send: EHLO mail-out.fabrikam.com
      - expect: 250
      - send: MAIL FROM:<ann@fabrikam.com>
      - expect: 250
      - send: RCPT TO:<{rcpt}>
      - expect: {{code: 250, enhanced: 2.1.5}}
      - data: plain.eml
      - expect: {{code: 250, enhanced: 2.6.0}}
      - send: QUIT
      - expect: 221
outcome:
  delivered:
    - {{mailbox: mailadmin@contoso.com, server: EX1, sender: ann@fabrikam.com}}
  nothing_else_delivered: true
"""


@pytest.mark.parametrize(
    ("rcpt", "virtual_server"),
    [
        ("POSTMASTER", ""),
        ("Postmaster", ""),
        # A virtual server with an FQDN of its own: smtpd completes the address with that name.
        ("postmaster", ", virtual_server: Strict SMTP Virtual Server"),
    ],
)
def test_postmaster_without_a_domain_reaches_the_organizations_postmaster(
    tmp_path: Path, rcpt: str, virtual_server: str
) -> None:
    target = targets.OPENSMTPD
    if (why := target.unavailable()) is not None:
        pytest.skip(why)
    path = tmp_path / "postmaster.yaml"
    path.write_text(TRACE.format(rcpt=rcpt, virtual_server=virtual_server), encoding="utf-8")
    result = run_trace(load(path), target)
    assert not result.failures(), "\n".join(result.failures())
