"""A real sending MTA on the lab's Internet (harness/lab/sender.py): Postfix as mail.fabrikam.com in its
own network namespace, handed a message by a trace's `via:` item, looks up the MX of the destination
through the lab's DNS, then the exchanger's A record, and connects to port 25 of the right virtual
server. Run for real: a namespace lab, Postfix, the reference servers, the `mailflow` command."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from mailflow_cli import mailflow

from harness import targets
from harness.corpus.trace import load
from harness.lab import sender
from harness.run.runner import TraceResult, run_trace

ROOT = Path(__file__).resolve().parents[1]
PREFERRED = ROOT / "traces" / "inbound" / "mx-preference.yaml"
PREFERRED_DOWN = ROOT / "traces" / "inbound" / "mx-preferred-down.yaml"
UNAVAILABLE = sender.available()
live = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


def _run(path: Path) -> TraceResult:
    result = run_trace(load(path), targets.get("reference"))
    assert result.evidence is not None
    return result


def _transcript(result: TraceResult) -> str:
    return "\n".join(run.result.transcript for run in result.sessions)


@live
def test_the_real_mta_asks_mx_then_a_from_its_own_address_and_connects_to_ex1() -> None:
    result = _run(PREFERRED)
    assert result.passed, result.failures()
    evidence = result.evidence
    assert evidence is not None
    fabrikam = next(address for address, name in evidence.hosts.items() if name == "fabrikam-mx")
    assert fabrikam.startswith("198.18.")  # its own namespace on the lab's bridge, not loopback
    asked = [(q.client_ip, q.name, q.type) for q in evidence.dns]
    # Every query is the MTA's (the harness resolves nothing in this trace), MX first.
    assert asked[:2] == [(fabrikam, "contoso.com", "MX"), (fabrikam, "mail.contoso.com", "A")]
    assert {ip for ip, _, _ in asked} == {fabrikam}
    ex1 = [c for c in evidence.connections if c.server == "EX1"]
    assert [(c.client_ip, c.virtual_server) for c in ex1] == [(fabrikam, "Default SMTP Virtual Server")]
    assert not [c for c in evidence.connections if c.server == "EX2"]
    # Postfix's own log: it handed the message to mail.contoso.com on port 25, at EX1's address.
    assert re.search(
        rf"to=<erin@contoso\.com>, relay=mail\.contoso\.com\[{re.escape(ex1[0].address)}\]:25, .*status=sent",
        _transcript(result),
    )


@live
def test_with_the_preferred_mx_down_the_real_mta_uses_the_next_one() -> None:
    result = _run(PREFERRED_DOWN)
    assert result.passed, result.failures()
    evidence = result.evidence
    assert evidence is not None
    assert [(q.name, q.type) for q in evidence.dns][:3] == [
        ("contoso.com", "MX"),
        ("mail.contoso.com", "A"),
        ("ex2.contoso.com", "A"),
    ]
    assert [(c.client, c.server) for c in evidence.connections] == [("fabrikam-mx", "EX2")]
    assert re.search(r"relay=ex2\.contoso\.com\[[0-9.]+\]:25, .*status=sent", _transcript(result))
    assert [(d.where, d.server) for d in evidence.deliveries] == [("bob@contoso.com", "EX2")]


@live
def test_dns_in_order_fails_when_the_trace_lists_a_before_mx(tmp_path: Path) -> None:
    text = PREFERRED.read_text(encoding="utf-8")
    mx = "    - {name: contoso.com, type: MX, client: fabrikam-mx}\n"
    a = "    - {name: mail.contoso.com, type: A, client: fabrikam-mx}\n"
    swapped = tmp_path / "swapped.yaml"
    swapped.write_text(text.replace(mx + a, a + mx).replace("inbound/mx-preference", "try/swapped"))
    result = _run(swapped)
    assert not result.passed
    assert result.failures() == [
        "DNS query contoso.com MX from fabrikam-mx was asked before DNS query mail.contoso.com A from "
        "fabrikam-mx, which the trace lists first"
    ]


@live
def test_a_session_the_protocol_logs_do_not_show_fails_the_trace(tmp_path: Path) -> None:
    """The real MTA chose EX1: a trace that expects its session on EX2 fails, saying what was logged."""
    text = PREFERRED.read_text(encoding="utf-8").replace(
        "{client: fabrikam-mx, server: EX2, absent: true}", "{client: fabrikam-mx, server: EX2}"
    )
    path = tmp_path / "ex2.yaml"
    path.write_text(text.replace("inbound/mx-preference", "try/ex2"), encoding="utf-8")
    result = _run(path)
    assert result.failures() == ["SMTP session from fabrikam-mx to EX2 was not logged"]
    (check,) = [c for c in result.checks if not c.passed]
    logged = r"fabrikam-mx \(198\.18\.[0-9.]+\) → EX1 Default SMTP Virtual Server \(198\.18\.[0-9.]+\)"
    assert re.fullmatch(logged, check.actual)


@live
def test_mailflow_run_passes_the_real_mta_traces(tmp_path: Path) -> None:
    done = mailflow("run", str(PREFERRED), str(PREFERRED_DOWN), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = json.loads((tmp_path / "reports" / "last-run.json").read_text())
    assert [(run["trace"], run["outcome"]) for run in runs] == [
        ("inbound/mx-preference", "passed"),
        ("inbound/mx-preferred-down", "passed"),
    ]


def test_without_postfix_the_real_mta_traces_are_skipped_with_the_reason(tmp_path: Path) -> None:
    """A machine without Postfix (here: not on PATH) skips them, saying why; it is not a failure."""
    venv = Path(sys.executable).parent
    done = mailflow("run", str(PREFERRED), cwd=tmp_path, env={"PATH": f"{venv}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = json.loads((tmp_path / "reports" / "last-run.json").read_text())
    assert run["outcome"] == "skipped"
    assert run["reason"]["message"].startswith(
        "target reference cannot run here: the trace sends through a real MTA on fabrikam-mx: "
    )
    assert "Postfix" in run["reason"]["message"] or "iproute2" in run["reason"]["message"]
    assert "skipped  inbound/mx-preference: target reference cannot run here" in done.stdout


def _with_via_host(tmp_path: Path, host: str) -> tuple[Path, int]:
    text = PREFERRED.read_text(encoding="utf-8").replace("host: fabrikam-mx", f"host: {host}")
    path = tmp_path / "via.yaml"
    path.write_text(text, encoding="utf-8")
    line = next(n for n, row in enumerate(text.splitlines(), 1) if f"host: {host}" in row)
    return path, line


def test_a_via_host_that_is_not_in_the_lab_is_refused_with_the_hosts_there_are(tmp_path: Path) -> None:
    path, line = _with_via_host(tmp_path, "fabrikam-mta")
    done = mailflow("check", str(path), cwd=tmp_path)
    assert done.returncode == 2
    out = done.stdout + done.stderr
    assert f"{path}:{line}: sessions[0].via.host: no Internet host or client named 'fabrikam-mta'" in out
    assert "fabrikam-mx" in out and "isp-smarthost" in out and "internet" in out
    assert "Traceback" not in out


def test_a_server_is_no_via_host(tmp_path: Path) -> None:
    path, line = _with_via_host(tmp_path, "EX2")
    done = mailflow("check", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert f"{path}:{line}: sessions[0].via.host: no Internet host or client named 'EX2'" in done.stdout


def test_a_sending_host_cannot_also_receive_in_the_same_trace(tmp_path: Path) -> None:
    text = PREFERRED.read_text(encoding="utf-8").replace(
        "  nothing_else_delivered: true\n",
        "  not_delivered:\n    - {sink: fabrikam-mx}\n  nothing_else_delivered: true\n",
    )
    path = tmp_path / "receives.yaml"
    path.write_text(text, encoding="utf-8")
    done = mailflow("check", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert "outcome.not_delivered[0].sink: fabrikam-mx is a real sending MTA in this trace" in done.stdout
    assert "nothing else can send from it or reach it; name another lab host" in done.stdout


def test_the_harness_cannot_also_send_from_a_sending_host(tmp_path: Path) -> None:
    text = PREFERRED.read_text(encoding="utf-8").replace(
        "sessions:\n",
        "sessions:\n  - client: fabrikam-mx\n    connect: {server: EX1}\n    script:\n      - expect: 220\n",
    )
    path = tmp_path / "both.yaml"
    path.write_text(text, encoding="utf-8")
    done = mailflow("check", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert (
        "sessions[0].client: fabrikam-mx is a real sending MTA in this trace (sessions[1].via)" in done.stdout
    )


def test_a_connection_to_a_virtual_server_without_a_protocol_log_is_refused(tmp_path: Path) -> None:
    text = PREFERRED.read_text(encoding="utf-8").replace(
        "server: EX2, absent: true}", "server: EX3, absent: true}"
    )
    path = tmp_path / "unlogged.yaml"
    path.write_text(text, encoding="utf-8")
    done = mailflow("check", str(path), cwd=tmp_path)
    assert done.returncode == 2
    unlogged = "outcome.connections[1].server: EX3's Default SMTP Virtual Server keeps no protocol log"
    assert unlogged in done.stdout
    assert "set logging: w3c on it in lab contoso" in done.stdout


def test_the_claims_of_in_1_and_in_2_need_the_real_mta(tmp_path: Path) -> None:
    """The same outcome asserted of a session the harness resolves itself backs neither ID."""
    text = PREFERRED.read_text(encoding="utf-8")
    session = text[text.index("  - via:") : text.index("outcome:")]
    harness_session = (
        "  - client: internet\n    connect: {mx: contoso.com}\n    script:\n      - expect: 220\n"
        "      - send: QUIT\n      - expect: 221\n"
    )
    path = tmp_path / "harness.yaml"
    path.write_text(text.replace(session, harness_session).replace("fabrikam-mx", "internet"))
    done = mailflow("check", "--claims", str(path), cwd=tmp_path)
    assert done.returncode != 0
    assert "IN-1 needs a DNS MX query from a real sending MTA" in done.stdout
    assert "IN-2 needs an SMTP session from a real sending MTA" in done.stdout
