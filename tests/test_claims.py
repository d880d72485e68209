"""The evidence rule: a trace claims only the catalogue steps its assertions show, and
`mailflow check` lists every claim that is not backed, with file, line and what is missing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from harness.cli import app
from harness.corpus import catalogue, claims, trace
from harness.yamlsource import SourceError
from reference_mta import tracking
from tests.sourcetext import line_with, replace_once, write

ROOT = Path(__file__).resolve().parents[1]

# An Internet host delivers to Alice's mailbox on EX1; the trace claims the categorizer's GC look-up.
IN5_DELIVERY_ONLY = """\
id: x/claims
title: A message for a local mailbox
spec: [IN-3, IN-5]
lab: contoso
sessions:
  - client: internet
    connect: {server: EX1}
    script:
      - expect: 220
      - send: EHLO mail-out.fabrikam.com
      - expect: 250
      - send: MAIL FROM:<ann@fabrikam.com>
      - expect: 250
      - send: RCPT TO:<alice@contoso.com>
      - expect: 250
      - data: {inline: "Subject: hi\\n\\nhello\\n"}
      - expect: 250
      - send: QUIT
      - expect: 221
outcome:
  delivered:
    - {mailbox: alice@contoso.com}
"""

LDAP = """\
  ldap:
    - {filter_regex: "alice@contoso\\\\.com"}
"""


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    # One unbacked claim per line, however long, as a file:line report is read and grepped.
    monkeypatch.setattr(app, "console", Console(width=10_000))


def check_claims(*paths: Path | str) -> tuple[int, str]:
    result = CliRunner().invoke(app.main, ["check", "--claims", *map(str, paths)])
    return result.exit_code, result.output


def test_a_delivery_alone_does_not_show_the_gc_lookup(tmp_path: Path) -> None:
    path = write(tmp_path / "t.yaml", IN5_DELIVERY_ONLY)
    found = {claim.id: claim for claim in claims.claims(trace.load(path))}
    assert found["IN-3"].shown
    in5 = found["IN-5"]
    assert not in5.shown and not in5.boundary
    assert in5.line == line_with(IN5_DELIVERY_ONLY, "spec:")
    assert "IN-5 needs an LDAP query whose filter names a recipient's address" in in5.missing
    assert "this trace asserts only outcome.delivered, reply codes 220/221/250" in in5.missing

    code, output = check_claims(path)
    assert code == 1, output
    assert f"unbacked {path}:{in5.line}: IN-5 needs an LDAP query whose filter names a recipient" in output
    assert "total: 2 claims, 1 shown, 1 unbacked" in output


def test_an_ldap_assertion_backs_the_claim(tmp_path: Path) -> None:
    path = write(tmp_path / "t.yaml", IN5_DELIVERY_ONLY + LDAP)
    assert all(claim.shown for claim in claims.claims(trace.load(path)))
    code, output = check_claims(path)
    assert code == 0, output
    assert not re.search(r"^unbacked ", output, re.M)
    assert "total: 2 claims, 2 shown, 0 unbacked" in output


RELAY_REFUSED = """\
id: x/relay
title: Relaying is refused
spec: [RELAY-1]
lab: contoso
sessions:
  - client: internet
    connect: {server: EX1}
    script:
      - expect: 220
      - send: EHLO mail-out.fabrikam.com
      - expect: 250
      - send: MAIL FROM:<ann@fabrikam.com>
      - expect: 250
      - send: RCPT TO:<x@tailspin.example>
      - expect: 550
      - send: QUIT
      - expect: 221
outcome:
  nothing_delivered: true
"""


def test_a_reply_counts_only_for_the_command_it_answers(tmp_path: Path) -> None:
    """RELAY-1 is a 5xx at RCPT and nothing delivered: a 550 to MAIL does not show it."""
    at_rcpt = write(tmp_path / "rcpt.yaml", RELAY_REFUSED)
    assert [claim.shown for claim in claims.claims(trace.load(at_rcpt))] == [True]
    at_mail = RELAY_REFUSED.replace(
        "      - expect: 250\n      - send: RCPT", "      - expect: 550\n      - send: RCPT"
    )
    at_mail = replace_once(
        at_mail, "      - expect: 550\n      - send: QUIT", "      - expect: 250\n      - send: QUIT"
    )
    (claim,) = claims.claims(trace.load(write(tmp_path / "mail.yaml", at_mail)))
    assert "RELAY-1 needs 5xx to RCPT (a script expect step)" in claim.missing


def test_a_boundary_claim_needs_its_negative_evidence(tmp_path: Path) -> None:
    bounded = replace_once(IN5_DELIVERY_ONLY, "spec: [IN-3, IN-5]", "spec: [IN-3, IN-5]\nboundary: [IN-5]")
    # The positive evidence (a look-up that finds Alice) does not show that the look-up does NOT happen.
    path = write(tmp_path / "t.yaml", bounded + LDAP)
    found = {claim.id: claim for claim in claims.claims(trace.load(path))}
    in5 = found["IN-5"]
    assert in5.boundary and not in5.shown
    assert in5.line == line_with(bounded, "boundary:")
    assert "boundary IN-5 needs an LDAP query that is not made or finds nothing" in in5.missing
    code, output = check_claims(path)
    assert code == 1 and f"{path}:{in5.line}: boundary IN-5 needs" in output

    absent = bounded + "  ldap:\n    - {filter_regex: 'alice@contoso', absent: true}\n"
    path = write(tmp_path / "absent.yaml", absent)
    assert all(claim.shown for claim in claims.claims(trace.load(path)))


def test_a_malformed_evidence_declaration_names_file_line_and_choices(tmp_path: Path) -> None:
    text = catalogue.CATALOGUE.read_text(encoding="utf-8")
    broken_line = "      white_box: [{ldap: recipient}, {any_of: [{delivered: mailbox}, {hops: 2}]}]"
    broken = replace_once(text, broken_line, broken_line.replace("{ldap: recipient}", "{ldap: everything}"))
    path = write(tmp_path / "catalogue.yaml", broken)
    with pytest.raises(SourceError) as raised:
        catalogue.load(path)
    message = str(raised.value)
    assert message.startswith(
        f"{path}:{line_with(broken, 'ldap: everything')}: ids.IN-5.shown_by.white_box[0].ldap"
    )
    assert "'query'" in message and "'recipient'" in message and "'absent'" in message

    unknown = replace_once(text, broken_line, broken_line.replace("{ldap: recipient}", "{tracked: 1019}"))
    path = write(tmp_path / "unknown.yaml", unknown)
    expected = r"unknown field 'tracked' \(expected one of: any_of, connection, delivered"
    with pytest.raises(SourceError, match=expected):
        catalogue.load(path)


def test_every_catalogue_id_declares_a_white_box_form() -> None:
    entries = catalogue.load(catalogue.CATALOGUE)
    assert entries.keys() == catalogue.catalogue().keys()
    assert all(entry.shown_by.white_box and entry.shown_by.boundary for entry in entries.values())


def test_plain_check_refuses_a_trace_that_claims_in5_with_only_a_delivery(tmp_path: Path) -> None:
    """`mailflow check` holds every trace to the rule: the unbacked claim is named, with its file, line
    and what is missing, instead of the trace's "ok"; the backed trace beside it is ok."""
    path = write(tmp_path / "t.yaml", IN5_DELIVERY_ONLY)
    backed = write(tmp_path / "backed.yaml", IN5_DELIVERY_ONLY.replace("x/claims", "x/backed") + LDAP)
    result = CliRunner().invoke(app.main, ["check", str(path), str(backed)])
    assert result.exit_code == 1, result.output
    refused, ok = result.output.splitlines()
    line = line_with(IN5_DELIVERY_ONLY, "spec:")
    assert refused.startswith(
        f"unbacked {path}:{line}: IN-5 needs an LDAP query whose filter names a recipient"
    )
    assert ok == f"ok {backed}"
    assert "this trace asserts only outcome.delivered" in refused


def test_an_invalid_file_wins_over_unbacked_claims(tmp_path: Path) -> None:
    write(tmp_path / "t.yaml", IN5_DELIVERY_ONLY)
    write(tmp_path / "broken.yaml", IN5_DELIVERY_ONLY.replace("spec: [IN-3, IN-5]", "spec: [IN-99]"))
    code, output = check_claims(tmp_path / "t.yaml", tmp_path / "broken.yaml")
    assert code == 2, output
    assert "unknown catalogue ID 'IN-99'" in output and "IN-5 needs an LDAP query" in output


def test_every_trace_of_the_corpus_shows_what_it_claims() -> None:
    """The corpus's gate: a claim without its evidence fails CI, naming the file, line and what is missing."""
    code, output = check_claims(ROOT / "traces")
    assert code == 0, "\n".join(line for line in output.splitlines() if line.startswith("unbacked"))
    totals = re.search(r"^total: (\d+) claims, (\d+) shown, (\d+) unbacked$", output, re.M)
    assert totals, output[-2000:]
    total, shown, unbacked = map(int, totals.groups())
    assert total == shown + unbacked and total > 0
    assert len(re.findall(r"^unbacked \S+\.yaml:\d+: ", output, re.M)) == unbacked
    assert (code == 1) == (unbacked > 0)
    flows = re.findall(r"^(?!total)(\w+): (\d+) claims, (\d+) shown, (\d+) unbacked$", output, re.M)
    assert {flow for flow, *_ in flows} >= {"Core", "Inbound", "Outbound", "Relay", "Protocol"}
    assert sum(int(count) for _, count, _, _ in flows) == total


def test_every_event_the_catalogue_names_is_one_the_reference_mta_logs() -> None:
    def events(requirement: Mapping[str, Any]) -> list[int]:
        ((kind, value),) = requirement.items()
        if kind == "any_of":
            return [event for choice in value for event in events(choice)]
        return [int(event) for event in catalogue.listed(value["id"])] if kind == "event" else []

    for entry in catalogue.catalogue().values():
        shown = entry.shown_by
        for requirement in (*shown.white_box, *shown.black_box, *shown.boundary):
            unknown = set(events(requirement)) - set(tracking.CATALOGUE)
            assert not unknown, (
                f"{entry.id}: tracking events {sorted(unknown)} are not in reference_mta/tracking.py"
            )


def judged(path: Path) -> dict[tuple[str, bool], claims.Claim]:
    """The trace's claims by (ID, boundary)."""
    return {(claim.id, claim.boundary): claim for claim in claims.claims(trace.load(path))}


def corpus(name: str) -> Path:
    return ROOT / "traces" / name


# A refused recipient beside an accepted one: the accepted copy is listed, and nothing else arrives.
PARTLY_REFUSED = """\
id: x/partly-refused
title: One recipient accepted, one refused relaying
spec: [RELAY-1, IN-7b, SEC-1]
lab: contoso
sessions:
  - client: internet
    connect: {server: EX1}
    script:
      - expect: 220
      - send: EHLO mail-out.fabrikam.com
      - expect: 250
      - send: MAIL FROM:<ann@fabrikam.com>
      - expect: 250
      - send: RCPT TO:<alice@contoso.com>
      - expect: 250
      - send: RCPT TO:<ops@tailspin.example>
      - expect: 550
      - data: plain.eml
      - expect: 250
      - send: QUIT
      - expect: 221
outcome:
  delivered:
    - {mailbox: alice@contoso.com, server: EX1, sender: ann@fabrikam.com}
  nothing_else_delivered: true
"""


def test_nothing_else_delivered_shows_the_unlisted_recipient_undelivered(tmp_path: Path) -> None:
    found = judged(write(tmp_path / "t.yaml", PARTLY_REFUSED))
    assert [found[(i, False)].shown for i in ("RELAY-1", "IN-7b", "SEC-1")] == [True, True, True]

    # Without nothing_else_delivered the refused copy could have gone anywhere.
    open_ended = replace_once(PARTLY_REFUSED, "  nothing_else_delivered: true\n", "")
    relay1 = judged(write(tmp_path / "open.yaml", open_ended))[("RELAY-1", False)]
    assert not relay1.shown
    assert (
        "RELAY-1 needs a message not delivered (outcome.not_delivered, nothing_delivered, or"
        in relay1.missing
    )

    # A recipient written as another proxy address of a listed mailbox got its copy: nothing is missing.
    alias = PARTLY_REFUSED.replace("RCPT TO:<ops@tailspin.example>", "RCPT TO:<alice.smith@contoso.com>")
    sec1 = judged(write(tmp_path / "alias.yaml", alias))[("SEC-1", False)]
    assert not sec1.shown and "SEC-1 needs a message not delivered" in sec1.missing


def test_nothing_else_delivered_backs_the_boundary_of_routing_steps(tmp_path: Path) -> None:
    """no-route-ndr: the contact's X.400 copy has no route; only Alice's NDR is listed."""
    path = corpus("outbound/no-route-ndr.yaml")
    found = judged(path)
    assert found[("OUT-4", True)].shown and found[("C-RE", True)].shown
    text = path.read_text(encoding="utf-8")
    text = replace_once(text, "spec: [OUT-4, C-RE, DSN-1]", "spec: [OUT-4, C-RE, IN-7a, DSN-1]")
    text = replace_once(text, "boundary: [OUT-4, C-RE]", "boundary: [OUT-4, C-RE, IN-7a]")
    assert judged(write(tmp_path / "in7a.yaml", text))[("IN-7a", True)].shown
    listed_only = replace_once(text, "  nothing_else_delivered: true\n", "")
    in7a = judged(write(tmp_path / "listed-only.yaml", listed_only))[("IN-7a", True)]
    assert not in7a.shown
    assert "boundary IN-7a needs (a message not delivered (outcome.not_delivered" in in7a.missing


def test_nothing_else_delivered_needs_every_copy_to_name_its_recipient(tmp_path: Path) -> None:
    text = corpus("outbound/no-route-ndr.yaml").read_text(encoding="utf-8")
    # A copy to a sink that does not say for whom could be the contact's: no longer evidence.
    unnamed = replace_once(text, "  delivered:\n", "  delivered:\n    - {sink: fabrikam-mx}\n")
    found = judged(write(tmp_path / "t.yaml", unnamed))
    assert not found[("OUT-4", True)].shown
    assert "boundary OUT-4 needs (a message not delivered" in found[("OUT-4", True)].missing


def test_sec2_accepts_250_after_bdat(tmp_path: Path) -> None:
    path = corpus("protocol/bdat-smuggling-bare-lf.yaml")
    assert judged(path)[("SEC-2", False)].shown
    text = path.read_text(encoding="utf-8")
    # The same chunks, each refused: no end of data was accepted.
    refused = text.replace("expect: {code: 250, text:", "expect: {code: 554, text:").replace(
        "expect: {code: 250, enhanced: 2.6.0,", "expect: {code: 554, enhanced: 2.6.0,"
    )
    sec2 = judged(write(tmp_path / "t.yaml", refused))[("SEC-2", False)]
    assert not sec2.shown
    assert "SEC-2 needs 250 to DATA or BDAT or OTHER (a script expect step)" in sec2.missing


def test_proto3_accepts_504_and_555(tmp_path: Path) -> None:
    help_504 = corpus("protocol/help-lists-commands.yaml")  # HELP with a topic it does not know: 504
    unknown_555 = corpus("protocol/unknown-mail-rcpt-parameters.yaml")  # MAIL FOO=BAR: 555
    assert judged(help_504)[("PROTO-3", False)].shown and judged(unknown_555)[("PROTO-3", False)].shown
    text = unknown_555.read_text(encoding="utf-8").replace("code: 555", "code: 550")
    proto3 = judged(write(tmp_path / "t.yaml", text))[("PROTO-3", False)]
    assert not proto3.shown
    assert "PROTO-3 needs 500 or 501 or 502 or 504 or 555 (a script expect step)" in proto3.missing


ACCEPT_SIDE = ("PROTO-2", "PROTO-3", "PROTO-6", "PROTO-12", "PROTO-14", "PROTO-15")


def test_the_boundary_of_an_accept_side_rule_is_the_accept(tmp_path: Path) -> None:
    accepted = replace_once(
        IN5_DELIVERY_ONLY,
        "spec: [IN-3, IN-5]",
        f"spec: [IN-3, {', '.join(ACCEPT_SIDE)}]\nboundary: [{', '.join(ACCEPT_SIDE)}]",
    )
    found = judged(write(tmp_path / "accepted.yaml", accepted))
    assert all(found[(spec_id, True)].shown for spec_id in ACCEPT_SIDE), found

    # Everything the limits could refuse is refused: that is no accept.
    refused = accepted.replace("- expect: 250\n      - send: MAIL", "- expect: 500\n      - send: MAIL")
    refused = refused.replace("- expect: 250\n      - send: RCPT", "- expect: 501\n      - send: RCPT")
    refused = refused.replace("- expect: 250\n      - data:", "- expect: 550\n      - data:")
    refused = refused.replace("- expect: 250\n      - send: QUIT", "- expect: 554\n      - send: QUIT")
    found = judged(write(tmp_path / "refused.yaml", refused))
    proto2 = found[("PROTO-2", True)]
    assert not proto2.shown
    assert (
        "boundary PROTO-2 needs 2xx to MAIL or RCPT or DATA or BDAT (a script expect step)" in proto2.missing
    )
    assert not any(found[(spec_id, True)].shown for spec_id in ACCEPT_SIDE)


GATEWAY_MEMO = """\
id: x/memo
title: A memo the gateway cannot map
spec: [GW-1, GW-2, GW-4, GW-5, GW-8]
boundary: [GW-2, GW-4, GW-5, GW-8]
lab: contoso
sessions:
  - foreign:
      gateway: Notes Connector
      data: {inline: "From: Ann Lee/Sales/Fabrikam\\nSendTo: Nobody Here/Contoso\\nBody:\\nhello\\n"}
outcome:
  delivered:
    - {foreign: Ann Lee/Sales/Fabrikam, sender: Mail Router/Contoso, body_contains: "no such recipient"}
  tracking:
    EX4: [1004, 1007]
  nothing_else_delivered: true
"""


def test_a_tracking_list_that_stops_before_the_step_is_its_boundary(tmp_path: Path) -> None:
    found = judged(write(tmp_path / "stops.yaml", GATEWAY_MEMO))
    assert all(found[(spec_id, True)].shown for spec_id in ("GW-2", "GW-4", "GW-5", "GW-8")), found

    # The whole way to the mailbox: every step happened, none of the boundaries is shown.
    whole = GATEWAY_MEMO.replace("[1004, 1007]", "[1004, 0, 7, 1027, 1019, 1025, 1024, 1033, 1034]")
    found = judged(write(tmp_path / "whole.yaml", whole))
    gw2, gw8 = found[("GW-2", True)], found[("GW-8", True)]
    assert not gw2.shown and not found[("GW-4", True)].shown and not found[("GW-5", True)].shown
    assert "boundary GW-2 needs (tracking event 0 asserted absent" in gw2.missing
    assert "boundary GW-8 needs (tracking event 1034 or 1038 asserted absent" in gw8.missing


def test_an_absent_event_is_the_gw8_boundary(tmp_path: Path) -> None:
    """memo-to-local-mailbox: Dave's memo is delivered on EX4 itself; its tracking list has no 1034/1038."""
    assert judged(corpus("gateway/memo-to-local-mailbox.yaml"))[("GW-8", True)].shown
    events = GATEWAY_MEMO.replace(
        "  tracking:\n    EX4: [1004, 1007]\n", "  events:\n    - {server: EX4, event: 1034, absent: true}\n"
    )
    assert judged(write(tmp_path / "events.yaml", events))[("GW-8", True)].shown
    present = events.replace("event: 1034, absent: true", "event: 1034")
    assert not judged(write(tmp_path / "present.yaml", present))[("GW-8", True)].shown


def test_a_failed_dns_query_is_the_out9a_boundary(tmp_path: Path) -> None:
    path = corpus("outbound/dns-failure-keeps-retrying.yaml")  # SERVFAIL for broken.net
    assert judged(path)[("OUT-9a", True)].shown
    text = path.read_text(encoding="utf-8")
    no_answer = replace_once(text, "rcode: SERVFAIL", "answers: 0")
    assert judged(write(tmp_path / "empty.yaml", no_answer))[("OUT-9a", True)].shown
    answered = replace_once(text, "rcode: SERVFAIL", "rcode: NOERROR")
    out9a = judged(write(tmp_path / "answered.yaml", answered))[("OUT-9a", True)]
    assert not out9a.shown
    assert (
        "a DNS query answered with a failure (outcome.dns rcode: NXDOMAIN/SERVFAIL/REFUSED, or answers: 0)"
        in out9a.missing
    )


# Alice on EX1 (Seattle) writes to an Internet address; which server hands the copy to the sink?
TO_A_SINK = """\
id: x/sink
title: A submission for an Internet host
spec: [C-RE]
lab: contoso
sessions:
  - submit:
      server: EX1
      mailbox: alice@contoso.com
      to: barista@fourthcoffee.com
      data: plain.eml
outcome:
  delivered:
    - {sink: fourthcoffee-mx, peer: EX3, rcpt: barista@fourthcoffee.com}
"""


def test_cre_black_box_reads_a_sink_deliverys_peer_across_routing_groups(tmp_path: Path) -> None:
    cre = judged(write(tmp_path / "london.yaml", TO_A_SINK))[("C-RE", False)]
    assert cre.shown, cre.missing
    inside = judged(write(tmp_path / "seattle.yaml", TO_A_SINK.replace("peer: EX3", "peer: EX2")))
    cre = inside[("C-RE", False)]
    assert not cre.shown
    assert "servers in at least 2 routing groups" in cre.missing
    no_peer = judged(write(tmp_path / "nopeer.yaml", TO_A_SINK.replace("peer: EX3, ", "")))
    assert "a delivery naming its server (server:, or a sink's peer:)" in no_peer[("C-RE", False)].missing


def test_cre_refuses_a_hop_chain_inside_one_routing_group(tmp_path: Path) -> None:
    """mailbox-on-other-server: EX1 to EX2, both Seattle: the routing engine chose no path between groups."""
    text = corpus("inbound/mailbox-on-other-server.yaml").read_text(encoding="utf-8")
    claimed = replace_once(text, "spec: [", "spec: [C-RE, ")
    cre = judged(write(tmp_path / "seattle.yaml", claimed))[("C-RE", False)]
    assert not cre.shown and "servers in at least 2 routing groups" in cre.missing
    assert judged(corpus("outbound/cheaper-path-down-reroutes.yaml"))[("C-RE", False)].shown  # EX1 → EX3


def test_the_gc_lookup_must_be_for_the_recipient(tmp_path: Path) -> None:
    def in5(ldap: str, name: str) -> claims.Claim:
        return judged(write(tmp_path / name, IN5_DELIVERY_ONLY + "  ldap:\n" + ldap))[("IN-5", False)]

    assert in5("    - {filter: '(proxyAddresses=smtp:alice@contoso.com)'}\n", "rcpt.yaml").shown
    # Another proxy address of Alice's mailbox is the same look-up.
    assert in5("    - {filter: '(proxyAddresses=smtp:alice.smith@contoso.com)'}\n", "proxy.yaml").shown
    # The sender's look-up, another user's, or a pattern that matches any filter: not the recipient's.
    sender = in5("    - {filter: '(proxyAddresses=smtp:ann@fabrikam.com)'}\n", "sender.yaml")
    assert not sender.shown
    assert "IN-5 needs an LDAP query whose filter names a recipient's address" in sender.missing
    assert not in5("    - {filter: '(proxyAddresses=smtp:bob@contoso.com)'}\n", "bob.yaml").shown
    assert not in5("    - {filter_regex: 'proxyAddresses'}\n", "any.yaml").shown
    assert in5("    - {filter_regex: 'smtp:alice@contoso\\.com'}\n", "regex.yaml").shown


def test_a_broken_directory_behind_a_trace_is_an_input_error(tmp_path: Path) -> None:
    labs = ROOT / "fixtures" / "labs"
    lab = (labs / "contoso.yaml").read_text(encoding="utf-8")
    directory = tmp_path / "directory.ldif"
    directory.write_text("dn: CN=x,DC=contoso,DC=com\nthis line is broken\n", encoding="utf-8")
    write(
        tmp_path / "lab.yaml", lab.replace("directory: ../directory/contoso.ldif", f"directory: {directory}")
    )
    path = write(tmp_path / "t.yaml", IN5_DELIVERY_ONLY.replace("lab: contoso", "lab: lab.yaml"))
    code, output = check_claims(path)
    assert code == 2, output
    assert f"{directory}:2" in output and "Traceback" not in output
    coverage = CliRunner().invoke(app.main, ["coverage", str(path)])
    assert coverage.exit_code == 2, coverage.output
    assert f"invalid trace: {directory}:2: expected 'attribute: value'" in coverage.output


# The MTA hands the memo on (event 0), and that is all the trace asserts.
GW3_EVENT_ONLY = """\
id: x/gw3
title: A memo passes the MTA
spec: [GW-3]
lab: contoso
sessions:
  - foreign:
      gateway: Notes Connector
      data: {inline: "From: Ann Lee/Sales/Fabrikam\\nSendTo: Dave Ito/Contoso\\nSubject: x\\nBody:\\nx\\n"}
outcome:
  events:
    - {server: EX4, event: 0}
"""

HELD_IN_MTA = """\
  - lab: {freeze: {server: EX4, queue: "X.400: MTA queue"}}
  - foreign:
"""


def test_an_mta_event_alone_does_not_show_gw3(tmp_path: Path) -> None:
    path = write(tmp_path / "t.yaml", GW3_EVENT_ONLY)
    (claim,) = claims.claims(trace.load(path))
    assert "GW-3 needs a message waiting in X.400: MTA queue (outcome.queues, or a settle's queues)" in (
        claim.missing
    )
    code, output = check_claims(path)
    assert code == 1 and f"unbacked {path}:{line_with(GW3_EVENT_ONLY, 'spec:')}: GW-3 needs" in output


def test_the_message_seen_in_the_frozen_mta_queue_shows_gw3(tmp_path: Path) -> None:
    frozen = replace_once(GW3_EVENT_ONLY, "  - foreign:\n", HELD_IN_MTA)
    settled = frozen.replace(
        "outcome:",
        '  - lab: {settle: {queues: [{server: EX4, queue: "X.400: MTA queue", count: 1, state: Frozen}]}}\n'
        '  - lab: {unfreeze: {server: EX4, queue: "X.400: MTA queue"}}\noutcome:',
    )
    assert [c.shown for c in claims.claims(trace.load(write(tmp_path / "settle.yaml", settled)))] == [True]
    at_the_end = frozen + '  queues:\n    - {server: EX4, queue: "x.400: mta queue", count: 1}\n'
    assert [c.shown for c in claims.claims(trace.load(write(tmp_path / "end.yaml", at_the_end)))] == [True]
    # A queue asserted empty, or another queue, shows nothing of the MTA queue.
    empty = frozen + '  queues:\n    - {server: EX4, queue: "X.400: MTA queue", count: 0}\n'
    assert [c.shown for c in claims.claims(trace.load(write(tmp_path / "empty.yaml", empty)))] == [False]
    other = frozen + '  queues:\n    - {server: EX4, queue: "X.400: MTS-OUT", count: 1}\n'
    assert [c.shown for c in claims.claims(trace.load(write(tmp_path / "other.yaml", other)))] == [False]


def test_gw4_needs_mts_out_held_as_well_as_its_event(tmp_path: Path) -> None:
    text = GW3_EVENT_ONLY.replace("spec: [GW-3]", "spec: [GW-4]")
    held = text + '  queues:\n    - {server: EX4, queue: "X.400: MTS-OUT", count: 1}\n'
    (claim,) = claims.claims(trace.load(write(tmp_path / "no-event.yaml", held)))
    assert "GW-4 needs tracking event 7" in claim.missing and "X.400: MTS-OUT" not in claim.missing
    both = held.replace("{server: EX4, event: 0}", "{server: EX4, event: 7}")
    assert [c.shown for c in claims.claims(trace.load(write(tmp_path / "both.yaml", both)))] == [True]
