"""A trace's DNS expectation can name the answer (`rcode:`, `answers:`), so a query that fails is
asserted as such (the boundary of OUT-9a): checked against a real lab's DNS server with `mailflow run`."""

from __future__ import annotations

from pathlib import Path

from tests.mailflow_cli import mailflow
from tests.sourcetext import replace_once, write

ROOT = Path(__file__).resolve().parents[1]
SERVFAIL = ROOT / "traces" / "outbound" / "dns-failure-keeps-retrying.yaml"


def test_the_answer_a_query_got_is_checked(tmp_path: Path) -> None:
    text = SERVFAIL.read_text(encoding="utf-8").replace(
        "data: plain.eml", "data: {inline: 'Subject: x\\n\\nx\\n'}"
    )
    servfail = write(tmp_path / "servfail.yaml", text)
    nxdomain = write(tmp_path / "nxdomain.yaml", replace_once(text, "rcode: SERVFAIL", "rcode: NXDOMAIN"))
    answered = write(tmp_path / "answered.yaml", replace_once(text, "rcode: SERVFAIL", "answers: 1"))

    done = mailflow("run", str(servfail), str(nxdomain), str(answered), cwd=tmp_path, columns=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "3 traces: 1 passed, 2 failed" in done.stdout, done.stdout
    made = (
        "DNS query broken.net MX from EX1 answered {} was not made: it was answered SERVFAIL with 0 records"
    )
    assert made.format("NXDOMAIN") in done.stdout, done.stdout
    assert made.format("with 1 records") in done.stdout, done.stdout
