"""Baselines, the regression check: `mailflow baseline save` keeps what a target did with each trace, and
`mailflow run --baseline` passes on an unchanged rerun and fails, with the difference side by side, when a
configuration change alters what the target does. The reference MTA always runs; Postfix runs where it can
(root, iproute2, Postfix), as EX1 of the same lab."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness import targets
from harness.lab import sender
from tests.mailflow_cli import ROOT, mailflow

POSTFIX_UNAVAILABLE = targets.POSTFIX.unavailable()
TARGETS = [
    "reference",
    pytest.param(
        "postfix",
        marks=pytest.mark.skipif(POSTFIX_UNAVAILABLE is not None, reason=POSTFIX_UNAVAILABLE or ""),
    ),
]

# An anonymous Internet client asks EX1 to relay to fabrikam.com: refused in the contoso lab, where
# fabrikam.com is no relay domain.
RELAY_TRACE = """\
id: baseline/relay-to-fabrikam
title: EX1 refuses to relay to fabrikam.com for an anonymous Internet client
spec: [RELAY-1]
lab: lab.yaml
sessions:
  - client: internet
    connect: {server: EX1}
    script:
      - expect: 220
      - send: EHLO mail-out.example.net
      - expect: 250
      - send: MAIL FROM:<ann@example.net>
      - expect: 250
      - send: RCPT TO:<dan@fabrikam.com>
      - expect: {code: 550, enhanced: 5.7.1}
      - send: QUIT
      - expect: 221
outcome:
  nothing_delivered: true
"""

# The configuration change: an SMTP connector that allows relaying to fabrikam.com.
RELAY_CONNECTOR = """\
    - type: smtp
      name: Fabrikam Relay SMTP Connector
      routing_group: Seattle
      bridgeheads: [EX1]
      address_spaces: [{type: SMTP, pattern: fabrikam.com, cost: 1}]
      delivery: {dns: true}
      allow_relay: true
"""


def write_lab(folder: Path, relay_fabrikam: bool) -> None:
    """The contoso lab as lab.yaml in `folder`, with or without fabrikam.com as a relay domain."""
    text = (ROOT / "fixtures" / "labs" / "contoso.yaml").read_text()
    directory = ROOT / "fixtures" / "directory" / "contoso.ldif"
    text = text.replace("directory: ../directory/contoso.ldif", f"directory: {directory}")
    if relay_fabrikam:
        anchor = "    - type: smtp\n      name: Partner SMTP Connector\n"
        assert anchor in text
        text = text.replace(anchor, RELAY_CONNECTOR + anchor)
    (folder / "lab.yaml").write_text(text)


@pytest.fixture
def relay_trace(tmp_path: Path) -> Path:
    write_lab(tmp_path, relay_fabrikam=False)
    path = tmp_path / "relay.yaml"
    path.write_text(RELAY_TRACE)
    return path


@pytest.mark.parametrize("target", TARGETS)
def test_an_unchanged_rerun_passes_and_a_new_relay_domain_fails_with_the_diff(
    relay_trace: Path, target: str
) -> None:
    folder = relay_trace.parent
    saved = mailflow(
        "baseline", "save", "--target", target, str(relay_trace), "-o", "baseline.yaml", cwd=folder
    )
    assert saved.returncode == 0, saved.stdout + saved.stderr
    data = yaml.safe_load((folder / "baseline.yaml").read_text())
    assert data["version"] == 1 and data["target"] == target
    entry = data["traces"]["baseline/relay-to-fabrikam"]
    assert entry["file"] == "relay.yaml"
    assert entry["outcome"] == ["passed"]
    assert any(line.startswith("S: 550 5.7.1") for line in entry["sessions"][0])

    # Twice unchanged: queue ids, ports, dates and addresses are masked, so nothing differs.
    for _ in range(2):
        rerun = mailflow("run", "--target", target, "--baseline", "baseline.yaml", "relay.yaml", cwd=folder)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "baseline/relay-to-fabrikam: same" in rerun.stdout
        assert "1 same, 0 differ" in rerun.stdout

    write_lab(folder, relay_fabrikam=True)
    changed = mailflow(
        "run", "--target", target, "--baseline", "baseline.yaml", "relay.yaml", cwd=folder, columns=240
    )
    assert changed.returncode == 1, changed.stdout + changed.stderr
    out = changed.stdout
    assert "0 same, 1 differ" in out
    # Side by side: the baseline's refusal and this run's acceptance on one row, then the outcomes.
    row = next(line for line in out.splitlines() if "S: 550 5.7.1" in line)
    assert "S: 250" in row and row.index("S: 550") < row.index("S: 250")
    header = next(line for line in out.splitlines() if "where" in line)
    assert header.index("baseline") < header.index(target)
    outcome = next(line for line in out.splitlines() if "│ outcome" in line)
    assert "passed" in outcome and "expected code 550, got 250" in outcome

    # Accepting the change: save again, and the changed configuration is the baseline.
    resaved = mailflow(
        "baseline", "save", "--target", target, "relay.yaml", "-o", "baseline.yaml", cwd=folder
    )
    assert resaved.returncode == 0, resaved.stdout + resaved.stderr
    accepted = mailflow("run", "--target", target, "--baseline", "baseline.yaml", "relay.yaml", cwd=folder)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


def test_traces_missing_from_the_baseline_or_not_run_are_named(relay_trace: Path) -> None:
    folder = relay_trace.parent
    other = ROOT / "traces" / "relay" / "relay-denied-by-default.yaml"
    saved = mailflow("baseline", "save", "relay.yaml", "-o", "baseline.yaml", cwd=folder)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    result = mailflow("run", "--baseline", "baseline.yaml", str(other), cwd=folder, columns=240)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"not in the baseline: relay/relay-denied-by-default ({other})" in result.stdout
    assert "in the baseline, not run: baseline/relay-to-fabrikam (relay.yaml)" in result.stdout
    assert "0 same, 0 differ, 1 not in the baseline, 1 in the baseline but not run" in result.stdout


def test_an_ndr_is_kept_with_its_recipients_and_status(tmp_path: Path) -> None:
    trace = ROOT / "traces" / "relay" / "filter-unfiltered-vs-accepts-then-ndrs.yaml"
    saved = mailflow("baseline", "save", str(trace), "-o", "baseline.yaml", cwd=tmp_path)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    outcome = yaml.safe_load((tmp_path / "baseline.yaml").read_text())["traces"][
        "relay/filter-unfiltered-vs-accepts-then-ndrs"
    ]["outcome"]
    assert outcome == [
        "passed",
        "delivered: sink fabrikam-mx from EX1: <> → ann@fabrikam.com",
        "dsn: bulk-news@contoso.com failed 5.1.1",
        "dsn: ghost@contoso.com failed 5.1.1",
    ]


SENDER_UNAVAILABLE = sender.available()


@pytest.mark.skipif(SENDER_UNAVAILABLE is not None, reason=SENDER_UNAVAILABLE or "")
def test_a_real_sending_mtas_log_reruns_equal(tmp_path: Path) -> None:
    """A `via:` trace's transcript is Postfix's log: its times, pids, queue ids and delays are masked."""
    trace = ROOT / "traces" / "inbound" / "mx-preferred-down.yaml"
    saved = mailflow("baseline", "save", str(trace), "-o", "baseline.yaml", cwd=tmp_path)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    sessions = yaml.safe_load((tmp_path / "baseline.yaml").read_text())["traces"][
        "inbound/mx-preferred-down"
    ]["sessions"]
    assert any("relay=ex2.contoso.com[<EX2>]:25" in line and "status=sent" in line for line in sessions[1])
    rerun = mailflow("run", "--baseline", "baseline.yaml", str(trace), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr


BROKEN_BASELINES = {
    "syntax": ("version: 1\ntarget: reference\ntraces:\n\tt: {}\n", "baseline.yaml:4: YAML syntax error"),
    "version": (
        "version: 2\ntarget: reference\ntraces: {}\n",
        "baseline.yaml:1: version: 2 is not a baseline",
    ),
    "no version": ("target: reference\ntraces: {}\n", "version: missing"),
    "field": (
        "version: 1\ntarget: reference\ntraces:\n  t:\n    file: t.yaml\n    sessions: []\n",
        "baseline.yaml:5: traces.t",
    ),
    "unknown field": (
        "version: 1\ntarget: reference\ntraces: {}\ncolour: red\n",
        "baseline.yaml:4: colour: unknown field 'colour'",
    ),
    "target": ("version: 1\ntarget: postfix\ntraces: {}\n", "saved on target postfix, not reference"),
}


@pytest.mark.parametrize("case", BROKEN_BASELINES)
def test_a_malformed_baseline_is_refused_with_its_file_and_line(relay_trace: Path, case: str) -> None:
    text, message = BROKEN_BASELINES[case]
    (relay_trace.parent / "baseline.yaml").write_text(text)
    result = mailflow("run", "--baseline", "baseline.yaml", "relay.yaml", cwd=relay_trace.parent, columns=240)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "mailflow:" not in result.stdout  # refused before any trace ran


def test_save_writes_nothing_when_a_trace_is_invalid(relay_trace: Path) -> None:
    folder = relay_trace.parent
    (folder / "baseline.yaml").write_text("kept\n")
    (folder / "bad.yaml").write_text(RELAY_TRACE.replace("- send: QUIT", "- sned: QUIT"))
    result = mailflow("baseline", "save", "relay.yaml", "bad.yaml", "-o", "baseline.yaml", cwd=folder)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "bad.yaml:16" in result.stdout and "not written" in result.stdout
    assert (folder / "baseline.yaml").read_text() == "kept\n"


def test_save_to_a_place_it_cannot_write_says_so(relay_trace: Path) -> None:
    folder = relay_trace.parent
    (folder / "plain-file").write_text("")
    result = mailflow("baseline", "save", "relay.yaml", "-o", "plain-file/baseline.yaml", cwd=folder)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot write plain-file/baseline.yaml: plain-file is not a folder" in result.stderr
    assert "mailflow:" not in result.stdout  # said before any trace ran
    assert "Traceback" not in result.stdout + result.stderr


def test_pytest_only_options_are_refused_with_a_baseline(relay_trace: Path) -> None:
    folder = relay_trace.parent
    result = mailflow("run", "--baseline", "baseline.yaml", "-k", "relay", "relay.yaml", cwd=folder)
    assert result.returncode == 2
    assert "-k does not go with --baseline" in result.stderr
