"""An MTA the harness does not start, as a target: a Postfix this test starts itself outside any lab
(tests/outside_postfix.py), on 127.0.0.1 and a port of its own, reached by `--target smtp://...` and by
a target profile file that says where its Maildirs are and where its next hop points (a lab sink).
`mailflow run` runs as a user runs it, in a process of its own."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from labprocess import MAILFLOW, environment
from outside_postfix import Tls, running, skip_unless_possible

from harness.lab import config as lab_config
from harness.lab.placement import relocation

ROOT = Path(__file__).resolve().parents[1]
DELIVERS = "traces/protocol/mail-from-without-colon.yaml"  # to alice@contoso.com's mailbox
REFUSED = "traces/relay/relay-denied-by-default.yaml"  # 550 5.7.1 for northwind.example
LDAP_AND_TRACKING = "traces/inbound/case-insensitive-proxy.yaml"  # asserts the LDAP and tracking logs
AUTH = "traces/relay/adatum-relay-domain-authenticated-alice.yaml"  # AUTH: this Postfix offers none
STORE = "traces/outbound/mapi-submission-to-internet.yaml"  # an Outlook submission through the store
STARTTLS = "traces/protocol/starttls-restarts-session.yaml"  # STARTTLS, then MAIL before EHLO


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Outside:
    url: str
    mail: Path
    sink: str
    base: str  # the lab's address base for the runs (the Postfix's relay lists are for it)
    tls: Tls


@pytest.fixture(scope="module")
def outside() -> Iterator[Outside]:
    skip_unless_possible()
    base, _ = relocation()
    base = base or "127.170.0.0"
    port = _free_port()
    sink = (base.rsplit(".", 2)[0] + ".60.2", _free_port())
    # Not under pytest's own temporary folder: a pytest started meanwhile (by anyone on this machine)
    # takes its search permission away again, and Postfix's daemons, not root, write the Maildirs.
    root = Path(tempfile.mkdtemp(prefix="mailflow-outside-postfix-"))
    tls = Tls(_free_port(), _free_port(), root / "pki")
    try:
        with running(root, "127.0.0.1", port, base, sink, tls) as mail:
            yield Outside(f"smtp://127.0.0.1:{port}", mail, f"{sink[0]}:{sink[1]}", base, tls)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def mailflow_run(outside: Outside, reports: Path, target: str, *traces: str) -> tuple[int, str, list[Any]]:
    env = environment(MAILFLOW_LAB_BASE=outside.base)
    command = [MAILFLOW, "run", "--verbose", "--target", target, "--reports", str(reports), *traces]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    results = reports / "last-run.json"
    ran = json.loads(results.read_text()) if results.exists() else []
    return done.returncode, done.stdout + done.stderr, ran


def profile(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def by_trace(ran: list[Any]) -> dict[str, Any]:
    return {outcome["trace"]: outcome for outcome in ran}


def test_profile_run_observes_the_delivery_the_refusal_and_says_what_it_cannot_see(
    outside: Outside, tmp_path: Path
) -> None:
    target = profile(
        tmp_path / "staging.yaml",
        f"url: {outside.url}\n"
        "stands_in_for: EX1\n"
        "deviations: postfix\n"
        "deliveries:\n"
        f"  maildir: {outside.mail}/{{address}}/\n"
        f"  sink: {outside.sink}\n",
    )
    code, out, ran = mailflow_run(outside, tmp_path / "reports", target, DELIVERS, REFUSED, LDAP_AND_TRACKING)
    assert code == 0, out
    outcomes = by_trace(ran)
    assert {o["outcome"] for o in outcomes.values()} == {"passed"}, out
    # The refusal came from Postfix's rule for the lab client's own address: the session kept it.
    internet = lab_config.load(lab_config.lab_path("contoso"), base=outside.base).host("internet").address
    log = (outside.mail.parent / "postfix.log").read_text(errors="replace")
    assert f"RCPT from unknown[{internet}]: 550 5.7.1 <" in log, log[-3000:]
    # What a black box cannot show is said, not passed.
    proxy = outcomes["inbound/case-insensitive-proxy"]
    assert proxy["unobserved"] == ["ldap", "tracking"], proxy
    assert "not observable here: ldap, tracking" in " ".join(out.split()), out
    # Alice's mailbox got exactly the message of the trace (the delivery check read this Maildir).
    assert len(list((outside.mail / "alice@contoso.com" / "new").iterdir())) >= 2


def test_a_delivery_the_maildir_does_not_show_fails(outside: Outside, tmp_path: Path) -> None:
    empty = tmp_path / "elsewhere"
    target = profile(
        tmp_path / "wrong-maildir.yaml",
        f"url: {outside.url}\ndeviations: postfix\nsettle_quiet: 0.5\n"
        f"deliveries:\n  maildir: {empty}/{{address}}/\n  sink: {outside.sink}\n",
    )
    code, out, ran = mailflow_run(outside, tmp_path / "reports", target, DELIVERS)
    assert code == 1, out
    (outcome,) = ran
    assert outcome["outcome"] == "failed"
    assert "alice@contoso.com" in outcome["message"], outcome["message"]


def test_a_url_alone_probes_the_server_and_skips_what_it_lacks(outside: Outside, tmp_path: Path) -> None:
    no_subdomains = "traces/relay/relay-domain-does-not-cover-subdomains.yaml"
    code, out, ran = mailflow_run(outside, tmp_path / "reports", outside.url, no_subdomains, AUTH, STORE)
    assert code == 0, out
    outcomes = by_trace(ran)
    passed = outcomes["relay/relay-domain-does-not-cover-subdomains"]
    assert passed["outcome"] == "passed", out
    # Without a profile its mailboxes and next hop are nowhere the harness looks.
    assert passed["unobserved"] == ["nothing_delivered"], passed
    auth = outcomes["relay/adatum-relay-domain-authenticated-alice"]
    assert auth["outcome"] == "skipped" and "lacks auth" in auth["message"], auth
    store = outcomes["outbound/mapi-submission-to-internet"]
    assert store["outcome"] == "skipped" and "lacks reference" in store["message"], store


def test_smtps_wraps_the_session_in_tls_before_the_greeting(outside: Outside, tmp_path: Path) -> None:
    no_subdomains = "traces/relay/relay-domain-does-not-cover-subdomains.yaml"
    url = f"smtps://127.0.0.1:{outside.tls.smtps}"
    # Its certificate is signed by a CA of its own: checked against that CA's file, or not at all.
    for name, tls in (("ca", f"{{ca_file: {outside.tls.ca_file}}}"), ("unverified", "{verify: false}")):
        target = profile(tmp_path / f"{name}.yaml", f"url: {url}\ntls: {tls}\n")
        code, out, ran = mailflow_run(outside, tmp_path / name, target, no_subdomains, STARTTLS)
        assert code == 0, out
        outcomes = by_trace(ran)
        # The server speaks only TLS there: the trace passes only if the replay spoke it first.
        assert outcomes["relay/relay-domain-does-not-cover-subdomains"]["outcome"] == "passed", out
        # Over implicit TLS no STARTTLS is offered: a trace that sends it is skipped.
        skipped = outcomes["protocol/starttls-restarts-session"]
        assert skipped["outcome"] == "skipped" and "lacks starttls" in skipped["message"], skipped
    # Checked against the system's CAs, its certificate is refused before any trace runs.
    code, out, _ = mailflow_run(outside, tmp_path / "system", url, no_subdomains)
    assert code == 3, out
    assert f"{url} answered, but the TLS handshake failed (CERTIFICATE_VERIFY_FAILED)" in " ".join(
        out.split()
    )


def test_submission_runs_starttls_with_the_profile_ca(outside: Outside, tmp_path: Path) -> None:
    url = f"submission://127.0.0.1:{outside.tls.submission}"
    target = profile(tmp_path / "submission.yaml", f"url: {url}\ntls: {{ca_file: {outside.tls.ca_file}}}\n")
    code, out, ran = mailflow_run(outside, tmp_path / "reports", target, STARTTLS)
    (outcome,) = ran
    # The STARTTLS step verifies the certificate against the profile's CA and the URL's host; the
    # session then goes on inside TLS to the end.
    assert code == 0 and outcome["outcome"] == "passed", out
    # Without a profile that names the CA, the system's CAs refuse the same certificate.
    code, out, ran = mailflow_run(outside, tmp_path / "system", url, STARTTLS)
    (outcome,) = ran
    assert code == 1 and "TLS handshake failed" in outcome["message"], out
