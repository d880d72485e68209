"""The tracking event catalogue: every event ID the reference MTA logs is named there, with the
description its records carry and where the ID comes from (Exchange's documentation or ours)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness import targets
from harness.corpus.trace import load
from harness.run.runner import run_trace
from reference_mta import tracking
from reference_mta.tracking import CATALOGUE, Source

TRACES = Path(__file__).resolve().parents[1] / "traces"
# KB 821905's ranges: MTA events 0-52, gateway and legacy IMS 1000-1018, SMTP transport 1019-1042.
DOCUMENTED = set(range(53)) | set(range(1000, 1043))


def test_every_event_id_has_a_description_and_a_source() -> None:
    for event_id, kind in CATALOGUE.items():
        assert kind.event_id == event_id
        assert kind.description.strip(), event_id
        assert isinstance(kind.source, Source), event_id


def test_an_extension_never_takes_an_id_exchange_documents() -> None:
    # A trace recorded against Exchange must never see one of our events under an ID of Exchange's.
    for event_id, kind in CATALOGUE.items():
        assert (event_id in DOCUMENTED) is (kind.source is Source.EXCHANGE), event_id


def test_the_named_constants_are_the_catalogue() -> None:
    named = {value for name, value in vars(tracking).items() if name.isupper() and isinstance(value, int)}
    assert named == set(CATALOGUE)


@pytest.fixture(scope="module")
def logged() -> list[dict[str, Any]]:
    """Every tracking record of a gateway round trip, an unmappable memo and a delay notice, as the lab
    wrote them."""
    records: list[dict[str, Any]] = []
    for name in (
        "gateway/ndr-back-through-the-gateway",
        "gateway/unmappable-recipient",
        "outbound/delay-notice-then-delivery",
    ):
        result = run_trace(load(TRACES / f"{name}.yaml"), targets.REFERENCE)
        assert result.passed, "\n".join(result.failures())
        assert result.evidence is not None
        records += [record for events in result.evidence.tracking.values() for record in events]
    return records


def test_every_event_a_lab_logs_carries_its_catalogued_description(logged: list[dict[str, Any]]) -> None:
    for record in logged:
        kind = CATALOGUE.get(record["event-id"])
        assert kind is not None, record
        assert record["event"] == kind.description != "", record


def test_the_gateway_and_extension_events_are_among_them(logged: list[dict[str, Any]]) -> None:
    # The events that once carried an empty description, and the MTA's.
    seen = {record["event-id"] for record in logged}
    assert {
        tracking.GATEWAY_TRANSFER_IN,
        tracking.GATEWAY_TRANSFER_OUT,
        tracking.GATEWAY_REPORT,
        tracking.MTA_TRANSFER_IN,
        tracking.MTA_TRANSFER_OUT,
        tracking.MTA_SUBMISSION,
    } <= seen
