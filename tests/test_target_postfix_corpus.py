"""The black-box relay subset of the corpus against real Postfix standing in for EX1: the CI gate for
the Postfix target. Each trace here passes on Postfix as configured from the lab (a known deviation of
Postfix, tolerated with its reason, does not fail it); a trace that starts failing is a regression of
the adapter or of Postfix. `mailflow matrix --target reference --target postfix` shows the rest.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import targets
from harness.runner import run_trace
from harness.trace import load

ROOT = Path(__file__).resolve().parents[1]
UNAVAILABLE = targets.POSTFIX.unavailable()

# One or two traces per RELAY ID, as black-box traces Postfix runs.
GATE = [
    "relay/default-virtual-server-is-not-open",  # RELAY-1, RELAY-2 boundary
    "relay/access-internal-vs-serves-lan-and-relay-host",  # RELAY-1, RELAY-5, RELAY-6
    "relay/access-internal-vs-refuses-outsiders",  # RELAY-6
    "relay/access-restricted-vs-refuses-attacker",  # RELAY-6 on Postfix itself (554 at connect, then QUIT)
    "relay/auth-after-starttls-on-ex2",  # RELAY-3 (STARTTLS, then AUTH against the directory)
    "relay/auth-login-relays-to-internet",  # RELAY-3 on Postfix itself, through Dovecot
    "relay/adatum-relay-domain-other-senders",  # RELAY-4
    "relay/partner-relay-on-bridgehead",  # RELAY-4
    "relay/relay-list-host-on-server-without-list",  # RELAY-5 boundary
]


@pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")
@pytest.mark.parametrize("trace_id", GATE)
def test_postfix_passes_the_relay_gate(trace_id: str) -> None:
    trace = load((ROOT / "traces" / f"{trace_id}.yaml").resolve())
    assert not targets.POSTFIX.missing(trace), "the gate holds only traces Postfix can run"
    result = run_trace(trace, targets.POSTFIX)
    assert result.passed, "\n".join(result.failures())
