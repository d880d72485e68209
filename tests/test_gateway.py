"""The Notes gateway's memo format: what the foreign system hands over and what it receives."""

from __future__ import annotations

import pytest

from reference_mta.gateway import Memo, MemoError, parse_memo, render_memo


def test_a_memo_round_trips() -> None:
    memo = Memo(
        "Ann Lee/Sales/Fabrikam",
        ["Dave Ito/Contoso", "Alice Smith/Contoso"],
        "Forecast",
        "line one\nBody: is just text here\n",
        ["Bob Jones/Contoso"],
        "Mon, 23 Nov 2026 10:00:00 +0000",
    )
    assert parse_memo(render_memo(memo)) == memo


def test_recipients_may_be_separated_by_commas_or_semicolons_and_lines_may_end_in_crlf() -> None:
    memo = parse_memo(b"From: A/X\r\nSendTo: B/X; C/X, D/X\r\nBody:\r\nhi\r\n")
    assert memo.send_to == ["B/X", "C/X", "D/X"]
    assert memo.body == "hi\n"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (b"From: A/X\nSendTo B/X\nBody:\nx\n", 2, "expected 'Field: value' or 'Body:'"),
        (b"From: A/X\nSendTo: B/X\n", 3, "no 'Body:' line"),
        (b"SendTo: B/X\nBody:\nx\n", 1, "the memo has no From"),
        (b"From: A/X\nBody:\nx\n", 1, "the memo has no SendTo"),
    ],
)
def test_a_memo_the_gateway_cannot_read_names_the_line(text: bytes, line: int, message: str) -> None:
    with pytest.raises(MemoError) as error:
        parse_memo(text)
    assert error.value.line == line and message in str(error.value)
