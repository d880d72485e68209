"""Masking volatile values, and `mailflow diff` on two runs of the same target (nothing may differ once
masked) and on a trace whose outcome depends on the run (it must be reported)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from harness.cli.app import main
from harness.reports.differential import Side, TraceDiff
from harness.smtp.masking import Masker, mask

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"127.77.0.200": "internet", "198.18.10.200": "internet", "127.77.0.11": "EX1"}


def test_masking_removes_times_dates_ports_and_addresses_but_keeps_identity() -> None:
    first = mask(
        "+0.001 -- connected from 127.77.0.200:34561 to 127.77.0.11:10025\n"
        "+0.004 S: 250 2.6.0 <EX1F64ED19C956C4D21@ex1.contoso.com> Queued mail for delivery\n"
        "+0.005 S: 220 ready at  Mon, 23 Nov 2026 15:38:59 -0000",
        NAMES,
    )
    assert first.splitlines() == [
        "-- connected from <internet>:<port> to <EX1>:<port>",
        "S: 250 2.6.0 <<queue-id-1>@ex1.contoso.com> Queued mail for delivery",
        "S: 220 ready at  <date>",
    ]
    # The lab moved (another base): the same text after masking.
    assert mask("-- connected from 198.18.10.200:1", NAMES) == "-- connected from <internet>:<port>"


def test_the_same_queue_id_keeps_its_placeholder_and_another_gets_a_new_one() -> None:
    masker = Masker({})
    text = masker.text("queued as 25E982168B1; queued as 25E982168B1; queued as 9A1B2C3D4E")
    assert text == "queued as <queue-id-1>; queued as <queue-id-1>; queued as <queue-id-2>"
    # An address that is no lab host stays as it is.
    assert masker.text("from 192.0.2.7") == "from 192.0.2.7"


def test_hunks_name_where_two_sides_differ() -> None:
    same = ["-- connected", "S: 220 hi", "C: QUIT"]
    diff = TraceDiff(
        "t",
        Side("a", [same], ["passed"]),
        Side("b", [[*same[:2], "C: NOOP"]], ["session 1: expected 250, got 500"]),
    )
    assert diff.differs
    hunks = diff.hunks()
    # Two lines of context around the differing one.
    assert ("session 1", same, [*same[:2], "C: NOOP"]) in hunks
    assert hunks[-1] == ("outcome", ["passed"], ["session 1: expected 250, got 500"])
    assert not TraceDiff("t", Side("a", [same], ["passed"]), Side("b", [same], ["passed"])).differs


def test_a_target_against_itself_differs_in_nothing() -> None:
    trace = str(ROOT / "traces" / "relay" / "relay-denied-by-default.yaml")
    result = CliRunner().invoke(main, ["diff", "--target", "reference", "--target", "reference", trace])
    assert result.exit_code == 0, result.output
    assert "relay/relay-denied-by-default: same" in result.output


def test_diff_needs_two_targets() -> None:
    result = CliRunner().invoke(main, ["diff", "--target", "reference", "traces/relay"])
    assert result.exit_code == 2 and "exactly two targets" in result.output


def test_a_sending_mtas_log_line_is_masked_to_what_it_did() -> None:
    line = (
        "   Dec 07 06:21:25 mail postfix/smtp[2460]: E272C2BCE7B: to=<bob@contoso.com>, "
        "relay=ex2.contoso.com[198.18.10.12]:25, delay=0.04, delays=0.02/0.01/0.01/0, dsn=2.6.0, status=sent "
        "(250 2.6.0 <EX2F64ED19C956C4D21@ex2.contoso.com> Queued mail for delivery)"
    )
    assert mask(line, {"198.18.10.12": "EX2"}) == (
        "   <time> mail postfix/smtp[<pid>]: <queue-id-2>: to=<bob@contoso.com>, "
        "relay=ex2.contoso.com[<EX2>]:25, delay=<time>, delays=<time>, dsn=2.6.0, status=sent "
        "(250 2.6.0 <<queue-id-1>@ex2.contoso.com> Queued mail for delivery)"
    )


def test_ids_quoted_from_a_delivered_messages_headers_are_masked() -> None:
    text = mask(
        "header Received: 'from a (a [127.77.0.200])\tby ex1.contoso.com (Postfix) "
        "with ESMTP id CB87A24D609' "
        "does not match; header Message-ID: '<EX2A91E2C87A58D4697@ex2.contoso.com>' does not match; "
        "Exim's id 1tXyZa-000123-AB; the id card",
        NAMES,
    )
    assert text == (
        "header Received: 'from a (a [<internet>])\tby ex1.contoso.com (Postfix) with ESMTP id <queue-id-1>' "
        "does not match; header Message-ID: '<message-id-1>' does not match; "
        "Exim's id <queue-id-2>; the id card"
    )
