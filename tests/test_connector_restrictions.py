"""Connector restrictions: the priority Exchange reads from the headers, the lab file's settings (and
its errors, with file and line), and the mark of an anonymous origin as XEXCH50 carries it between the
organization's servers."""

from __future__ import annotations

from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

from harness.lab import config as lab_config
from harness.lab.gc import MockGlobalCatalog
from harness.lab.recipients import RecipientTable
from harness.targets.plan import plan
from harness.yamlsource import SourceError
from reference_mta.connector_restrictions import priority_of
from reference_mta.mailmsg import Recipient, UnreadableBlob, exch50_blob, read_exch50_blob
from tests.sourcetext import line_with, replace_once, write

ROOT = Path(__file__).resolve().parents[1]
CONTOSO = ROOT / "fixtures" / "labs" / "contoso.yaml"
LDIF = ROOT / "fixtures" / "directory" / "contoso.ldif"


@pytest.mark.parametrize(
    ("headers", "priority"),
    [
        ("Importance: High", "high"),
        ("Importance: low", "low"),
        ("X-Priority: 1 (Highest)", "high"),
        ("X-Priority: 2", "high"),
        ("X-Priority: 3", "normal"),
        ("X-Priority: 5 (Lowest)", "low"),
        ("Priority: urgent", "high"),
        ("Priority: non-urgent", "low"),
        # Importance wins over X-Priority, which wins over Priority.
        ("Importance: low\r\nX-Priority: 1", "low"),
        ("X-Priority: 4\r\nPriority: urgent", "low"),
        ("Importance: whenever", "normal"),
        ("Subject: no priority at all", "normal"),
    ],
)
def test_the_priority_is_read_as_exchange_maps_the_headers(headers: str, priority: str) -> None:
    parsed = BytesHeaderParser().parsebytes(f"{headers}\r\n\r\nbody\r\n".encode())
    assert priority_of(parsed) == priority


@pytest.mark.parametrize("anonymous", [True, False])
def test_the_origin_mark_travels_in_the_xexch50_blob(anonymous: bool) -> None:
    recipient = Recipient(address="bob@contoso.com", original="bob@contoso.com")
    blob = exch50_blob([recipient], lambda r: r.address, anonymous_origin=anonymous)
    assert read_exch50_blob(blob).anonymous_origin is anonymous


def test_a_blob_without_the_origin_mark_is_unreadable() -> None:
    # A blob that does not say whether the message's origin vouched for its sender is refused (501).
    with pytest.raises(UnreadableBlob, match="ANONYMOUS_ORIGIN"):
        read_exch50_blob(b'{"VERSION": 2, "RECIPIENTS": []}')


def _lab_text() -> str:
    return CONTOSO.read_text(encoding="utf-8").replace("../directory/contoso.ldif", str(LDIF))


def test_the_lab_file_sets_resolve_anonymous_and_content_restrictions() -> None:
    organization = lab_config.load(CONTOSO).organization
    resolving = next(
        vs for vs in organization.server("EX1").virtual_servers if vs.name == "Resolving SMTP Virtual Server"
    )
    assert resolving.resolve_anonymous
    assert not organization.server("EX1").default_virtual_server.resolve_anonymous
    urgent = next(c for c in organization.connectors if c.name == "Woodgrove Urgent SMTP Connector")
    assert urgent.restrictions.priorities == ("high",)
    assert urgent.restrictions.message_types == ("non_system",)
    liaison = next(c for c in organization.connectors if c.name == "Woodgrove Liaison SMTP Connector")
    assert liaison.restrictions.priorities == ("high", "normal", "low")


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("priorities: [high]", "priorities: [urgent]", "priorities[0]"),
        ("message_types: [non_system]", "message_types: [reports]", "message_types[0]"),
        ("resolve_anonymous: true", "resolve_anonymous: sometimes", "resolve_anonymous"),
    ],
)
def test_a_wrong_restriction_value_names_the_file_and_line(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    text = replace_once(_lab_text(), old, new)
    path = write(tmp_path / "labs" / "contoso.yaml", text)
    with pytest.raises(SourceError) as info:
        lab_config.load(path)
    assert info.value.path == str(path)
    assert info.value.line == line_with(text, new.split(": ", 1)[1])
    assert info.value.field.endswith(field), info.value


def test_a_real_mta_s_plan_routes_the_members_of_a_listed_group_by_their_addresses() -> None:
    """Postfix and the others route by the MAIL FROM text: the plan lists, for the connector restricted
    to the Woodgrove Liaisons group, its members (Bob directly, Dave through Sales Managers), not the
    group's own address, and not Alice."""
    config = lab_config.load(CONTOSO)
    catalog = MockGlobalCatalog(config.global_catalog)
    catalog.load()
    table = RecipientTable.from_directory(catalog.connect("test"), config.global_catalog.base_dn)
    routes = {route.domain: names for route, names in plan(config, "EX1", table).sender_routes}
    assert routes["woodgrove.com"] == ("bob@contoso.com", "dave@contoso.com")
    assert routes["adatum.com"] == ("alice@contoso.com",)
