"""Each real MTA's declared capabilities against what it offers: the MTA stands in for EX1, a lab client
says EHLO to EX1's default virtual server over a real session, and every extension that decides whether
a trace can run (harness/targets: EHLO_CAPABILITIES) is offered exactly when the target declares it.
A capability declared but not offered would run traces unfairly; one offered but not declared would
skip traces the MTA can run.
"""

from __future__ import annotations

import smtplib

import pytest
import standin

from harness import targets
from harness.targets import EHLO_CAPABILITIES, Target

BAND = 220  # this module's band of the namespace network (tests/standin.py)
REAL_MTAS = [targets.POSTFIX, targets.EXIM, targets.OPENSMTPD]


def offered(target: Target) -> set[str]:
    """The EHLO keywords the MTA standing in for EX1 offers to the lab's Internet client."""
    with target.lab(standin.netns_config(BAND)) as lab:
        ex1 = lab.config.organization.server("EX1").default_virtual_server
        client = (lab.config.host("internet").address, 0)
        with smtplib.SMTP(ex1.address, ex1.port, source_address=client, timeout=10) as smtp:
            code, _ = smtp.ehlo("mail-out.fabrikam.com")
            assert code == 250
            return {keyword.upper() for keyword in smtp.esmtp_features}


@pytest.mark.parametrize("target", REAL_MTAS, ids=[t.name for t in REAL_MTAS])
def test_a_real_mta_offers_what_its_target_declares(target: Target) -> None:
    if (why := target.unavailable()) is not None:
        pytest.skip(why)
    keywords = offered(target)
    shown = {capability for keyword, capability in EHLO_CAPABILITIES.items() if keyword in keywords}
    declared = target.capabilities & set(EHLO_CAPABILITIES.values())
    assert shown == declared, (
        f"{target.name} offers {sorted(keywords)}: declared but not offered {sorted(declared - shown)}, "
        f"offered but not declared {sorted(shown - declared)}"
    )
