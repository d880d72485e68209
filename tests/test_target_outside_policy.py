"""Off loopback a session to an outside MTA cannot come from the lab client's address: the traces whose
relay or connection rules single out their client are skipped there with the reason, the others run."""

from __future__ import annotations

from pathlib import Path

from harness.corpus.trace import load
from harness.targets import Target
from harness.targets.outside import OutsideMta

ROOT = Path(__file__).resolve().parents[1]
LISTED = ROOT / "traces/relay/relay-list-client-relays.yaml"  # relay-host is on EX1's relay list
STRANGER = ROOT / "traces/relay/relay-denied-by-default.yaml"  # internet, on no list


def outside(host: str) -> Target:
    # Made by hand, not by targets.get: nothing is asked of an address off loopback in a test.
    mta = OutsideMta("smtp", host, 25)
    return Target("smtp://" + host, frozenset({"mailbox"}), "", stands_in_for="EX1", outside=mta)


def test_off_loopback_a_client_the_relay_list_names_is_skipped() -> None:
    (reason,) = outside("192.0.2.7").missing(load(LISTED))
    assert reason.startswith("sessions from relay-host's own address, which its rules single out"), reason


def test_off_loopback_a_stranger_client_still_runs() -> None:
    assert outside("192.0.2.7").missing(load(STRANGER)) == []


def test_on_loopback_every_client_keeps_its_address() -> None:
    assert outside("127.0.0.1").missing(load(LISTED)) == []
