"""Known deviations match failure records by their fields, are limited to named traces unless they are
wording only, are checked like every hand-written file, and are reported as stale when they waive
nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli.app import main
from harness.judge import records
from harness.judge.deviations import deviations, load
from harness.judge.records import WORDING_KINDS, Failure, Kind, Near
from harness.reports import matrix, matrix_page
from harness.yamlsource import SourceError

RCPT_OK = Failure(
    Kind.TEXT,
    "2.1.5 bob@contoso.com",
    "2.1.5 Ok",
    session=1,
    client="internet",
    step=7,
    title="S: expect {code: 250, text: ...}",
    command="RCPT TO:<bob@contoso.com>",
    reply=("250 2.1.5 Ok",),
    same_code=True,
)
REFUSED = Failure(
    Kind.CODE, "250", "550", session=1, client="internet", step=7, command="RCPT TO:<x@y>", reply=("550 no",)
)


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "target.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _failed(trace: str, *failures: Failure) -> dict[str, object]:
    return {
        "trace": trace,
        "spec": ["IN-3"],
        "outcome": "failed",
        "message": "\n".join(records.lines(failures)),
        "failures": [f.to_json() for f in failures],
    }


WORDING = """\
- kind: text
  verb: RCPT
  expected_pattern: '2\\.1\\.5 .*'
  actual: "2.1.5 Ok"
  reason: RCPT is accepted without echoing the address (wording only)
  reference: RFC 5321 4.2 (the text is free)
"""


def test_an_entry_matches_the_record_fields_not_the_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = load(_file(tmp_path, WORDING))
    outcome = _failed("relay/x", RCPT_OK)
    assert matrix.verdict(outcome, known).status == "deviation"
    # Reword the sentence the failure is told in: the verdict does not change, because no entry reads it.
    monkeypatch.setitem(
        records._SENTENCES, Kind.TEXT, lambda f: f"the words were {f.actual}, not {f.expected}"
    )
    reworded = _failed("relay/x", RCPT_OK)
    assert reworded["message"] != outcome["message"]
    assert matrix.verdict(reworded, known).status == "deviation"
    # Another verb, another value, or the same words under another code: a failure.
    assert (
        matrix.verdict(
            _failed("relay/x", Failure(**{**RCPT_OK.__dict__, "command": "MAIL FROM:<>"})), known
        ).status
        == "fail"
    )
    assert (
        matrix.verdict(
            _failed("relay/x", Failure(**{**RCPT_OK.__dict__, "actual": "2.1.5 Hi"})), known
        ).status
        == "fail"
    )
    other_code = Failure(**{**RCPT_OK.__dict__, "same_code": False})
    assert matrix.verdict(_failed("relay/x", other_code), known).status == "fail"
    # A behaviour difference beside it is not covered by it.
    assert matrix.verdict(_failed("relay/x", RCPT_OK, REFUSED), known).status == "fail"


def test_a_scoped_entry_waives_only_in_its_traces(tmp_path: Path) -> None:
    known = load(
        _file(
            tmp_path,
            "- kind: code\n  verb: RCPT\n  expected: 250\n  actual: [550, 501]\n  traces: [relay/trick-]\n"
            "  reason: refused at RCPT\n  reference: RFC 5321 3.3\n",
        )
    )
    assert matrix.verdict(_failed("relay/trick-bang-path", REFUSED), known).status == "deviation"
    assert matrix.verdict(_failed("inbound/forwarding", REFUSED), known).status == "fail"


def test_a_missing_delivery_is_a_deviation_only_if_every_difference_of_a_near_one_is_known(
    tmp_path: Path,
) -> None:
    known = load(
        _file(
            tmp_path,
            "- kind: dsn\n  field: block\n  actual_pattern: '.* failed 5\\.0\\.0'\n  traces: [inbound/]\n"
            "  reason: NDRs say 5.0.0\n  reference: RFC 3463 3.1\n",
        )
    )
    status = Failure(Kind.DSN, "{'status': '5.1.1'}", "rfc822;a@b failed 5.0.0", "block")
    subject = Failure(Kind.HEADER, "^Delivery", "Mail delivery failed", "Subject")
    near = Near("sink fabrikam-mx from EX1: <> → ann@fabrikam.com", (status,))
    missing = Failure(Kind.DELIVERY, "sink=fabrikam-mx", near=(near,))
    assert matrix.verdict(_failed("inbound/x", missing), known).status == "deviation"
    unexpected = Failure(Kind.UNEXPECTED_DELIVERY, actual=near.delivery)
    assert matrix.verdict(_failed("inbound/x", missing, unexpected), known).status == "deviation"
    both = Failure(Kind.DELIVERY, "sink=fabrikam-mx", near=(Near(near.delivery, (subject, status)),))
    assert matrix.verdict(_failed("inbound/x", both), known).status == "fail"
    assert (
        matrix.verdict(_failed("inbound/x", Failure(Kind.DELIVERY, "sink=fabrikam-mx")), known).status
        == "fail"
    )


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        # A behaviour difference for every trace: refused.
        (
            "- kind: code\n  verb: DATA\n  expected: 354\n  actual: 554\n  reason: r\n  reference: RFC\n",
            1,
            "may waive wording only",
        ),
        ("- kind: text\n  actual: x\n  reason: r\n  reference: RFC\n", 1, "must name the verb"),
        ("- kind: text\n  verb: RCPT\n  reason: r\n", 1, "'reference' is a required property"),
        (
            "- kind: text\n  verb: RCPT\n  failure: 'x'\n  reason: r\n  reference: RFC\n",
            3,
            "unknown field 'failure'",
        ),
        ("- kind: txt\n  verb: RCPT\n  reason: r\n  reference: RFC\n", 1, "kind"),
        (
            "- kind: text\n  verb: RCPT\n  traces: [a/]\n  actual_pattern: '(x'\n"
            "  reason: r\n  reference: R\n",
            4,
            "not a regular expression",
        ),
        ("- kind: text\n  catalogue: [NOPE-1]\n  reason: r\n  reference: R\n", 2, "unknown catalogue ID"),
        ("- kind: text\n  verb: RCPT: x\n  reason: r\n", 2, "YAML syntax error"),
    ],
)
def test_a_malformed_or_broad_entry_is_refused_with_file_and_line(
    tmp_path: Path, text: str, line: int, says: str
) -> None:
    path = _file(tmp_path, text)
    with pytest.raises(SourceError) as caught:
        load(path)
    assert caught.value.path == str(path)
    assert caught.value.line == line, str(caught.value)
    assert says in str(caught.value)


def test_every_shipped_entry_is_scoped_behaviour_with_a_reference() -> None:
    # None of these targets is judged on wording, so an entry about wording would waive nothing.
    for target in ("postfix", "exim", "opensmtpd"):
        known = deviations(target)
        assert known, target
        assert all(d.reason and d.reference for d in known)
        assert all(d.scoped for d in known)
        assert not [d.entry for d in known if d.kinds & WORDING_KINDS]


def test_an_entry_that_waived_nothing_is_reported_stale() -> None:
    scoped = next(d for d in deviations("postfix") if d.traces)
    trace = scoped.traces[0].rstrip("-/")
    runs = {
        "postfix": [
            {"trace": trace, "spec": ["RELAY-1"], "outcome": "passed", "deviations": [], "waived": []}
        ]
    }
    unused = matrix.stale(runs)
    assert scoped in unused["postfix"]
    warning = next(line for line in matrix.stale_lines(unused) if scoped.entry in line)
    assert warning.startswith(f"postfix: stale deviation {scoped.entry} matched nothing")
    table = matrix.build(runs)
    assert "## Stale deviations" in matrix.to_markdown(table, ["postfix"], unused)
    assert "Stale deviations" in matrix_page.page(table, ["postfix"], unused)
    # Once it waives a failure of that trace, it is not stale.
    waived = [{"failure": REFUSED.to_json(), "reason": scoped.reason, "entry": scoped.entry}]
    runs["postfix"][0]["waived"] = waived
    assert scoped not in matrix.stale(runs).get("postfix", [])


def test_a_missing_delivery_with_nothing_near_it_needs_an_entry_for_that_delivery(tmp_path: Path) -> None:
    known = load(
        _file(
            tmp_path,
            "- kind: delivery\n  expected: 'sink=fabrikam-mx, sender=<>'\n"
            "  traces: [inbound/unknown-recipient-ndr]\n"
            "  reason: refused at RCPT, so no NDR\n  reference: RFC 5321 3.3\n",
        )
    )
    missing = Failure(Kind.DELIVERY, "sink=fabrikam-mx, sender=<>", knock_on=True)
    assert matrix.verdict(_failed("inbound/unknown-recipient-ndr", missing), known).status == "deviation"
    assert matrix.verdict(_failed("inbound/forwarding", missing), known).status == "fail"
    other = Failure(Kind.DELIVERY, "sink=fabrikam-mx, sender=<ann@fabrikam.com>")
    assert matrix.verdict(_failed("inbound/unknown-recipient-ndr", other), known).status == "fail"


def test_mailflow_matrix_refuses_a_malformed_deviations_file_before_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "deviations"
    folder.mkdir()
    (folder / "postfix.yaml").write_text(
        "- kind: text\n  verb: RCPT\n  reason: r\n  reference: RFC 5321 4.2\n"
        "- kind: code\n  verb: DATA\n  expected: 354\n  actual: 554\n"
        "  reason: r\n  reference: RFC 5321 3.3\n",
        encoding="utf-8",
    )
    monkeypatch.setattr("harness.judge.deviations.folder", lambda: folder)
    trace = Path(__file__).resolve().parents[1] / "traces" / "relay" / "relay-denied-by-default.yaml"
    result = CliRunner().invoke(
        main, ["matrix", "--target", "postfix", "--reports", str(tmp_path), str(trace)]
    )
    assert result.exit_code == 2, result.output
    assert f"{folder / 'postfix.yaml'}:5: [1].kind: an entry without traces or catalogue" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "matrix.md").exists()
