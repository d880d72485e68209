"""`mailflow coverage` over a real run's results: per catalogue ID the traces that show it (by the
evidence rule, not by their `spec:` alone) and show its boundary, how many of them passed on each
target (on a real MTA, by the claims' black-box form only), a JSON form, the `--black-box` and
`--seed-ids` selections, and the `--min` and `--min-boundary` gates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import targets
from harness.corpus.claims import WHITE_BOX
from harness.exit_codes import ExitCode
from harness.judge.expectations import NEEDS
from tests.mailflow_cli import GOOD, ROOT, failing_trace, mailflow


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The results of one real run: GOOD (RELAY-1, and IN-3 and IN-7b as boundaries) passes, and a copy
    of it that expects 250 where EX1 refuses the relay fails."""
    folder = tmp_path_factory.mktemp("coverage")
    failing, _ = failing_trace(folder)
    done = mailflow("run", "--reports", str(folder / "reports"), str(GOOD), str(failing), cwd=folder)
    assert done.returncode == ExitCode.FAILED, done.stdout + done.stderr
    return folder


def _coverage(folder: Path, *args: str, results: str = "last-run.json") -> tuple[int, str, str]:
    done = mailflow(
        "coverage", "--results", str(folder / "reports" / results), *args, cwd=folder, columns=200
    )
    return done.returncode, done.stdout, done.stderr


def test_json_counts_showing_boundary_and_passing_traces(ran: Path) -> None:
    code, out, err = _coverage(ran, "--json", str(GOOD), str(ran / "failing.yaml"))
    assert code == ExitCode.OK, out + err
    report = json.loads(out)
    assert report["targets"] == ["reference"]
    ids = {entry["id"]: entry for entry in report["ids"]}
    relay = ids["RELAY-1"]
    # The copy that expects 250 at RCPT no longer asserts the refusal that shows RELAY-1.
    assert relay["showing"] == ["relay/relay-denied-by-default"]
    assert relay["unshown"] == ["try/relay-expected-wrongly"]
    assert relay["targets"]["reference"]["showing_passed"] == 1
    assert relay["targets"]["reference"]["outcomes"] == {
        "relay/relay-denied-by-default": "passed",
        "try/relay-expected-wrongly": "failed",
    }
    # A boundary claim counts under "bounding", not "showing".
    assert ids["IN-3"]["showing"] == [] and ids["IN-3"]["bounding"] == ["relay/relay-denied-by-default"]
    assert ids["IN-3"]["targets"]["reference"]["bounding_passed"] == 1
    assert ids["OUT-1"]["claimed_by"] == []


def test_min_gate_names_the_ids_short_of_passing_traces(ran: Path) -> None:
    code, _, err = _coverage(ran, "--min", "1", "--flow", "Relay", str(GOOD), str(ran / "failing.yaml"))
    assert code == ExitCode.FAILED
    # RELAY-1 has one passing showing trace; the other Relay IDs have none.
    assert "RELAY-1:" not in err
    assert "RELAY-2: shown by 0 trace(s) that passed on reference, fewer than 1" in err
    code, _, err = _coverage(ran, "--min", "2", "--flow", "relay", str(GOOD), str(ran / "failing.yaml"))
    assert "RELAY-1: shown by 1 trace(s) that passed on reference, fewer than 2" in err


def test_table_shows_passed_of_showing_per_target(ran: Path) -> None:
    code, out, _ = _coverage(ran, str(GOOD), str(ran / "failing.yaml"))
    assert code == ExitCode.OK
    row = next(line for line in out.splitlines() if "RELAY-1 " in line)
    assert "1/1 passed, 1 failed" in row


def test_wrong_target_and_flow_are_input_errors(ran: Path) -> None:
    code, _, err = _coverage(ran, "--min", "1", "--target", "postfix", str(GOOD))
    assert code == ExitCode.INPUT
    assert "--target: the results have no run on 'postfix'; targets run: reference" in " ".join(err.split())
    code, _, err = _coverage(ran, "--min", "1", "--flow", "Outbund", str(GOOD))
    assert code == ExitCode.INPUT
    assert "--flow: no flow 'Outbund'; flows: " in " ".join(err.split())


def _json(folder: Path, *args: str, results: str = "last-run.json") -> dict[str, Any]:
    done = mailflow(
        "coverage", "--json", "--results", str(folder / "reports" / results), *args, cwd=folder, columns=200
    )
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_min_boundary_gate_names_the_ids_short_of_passing_bounding_traces(ran: Path) -> None:
    code, _, err = _coverage(
        ran, "--min-boundary", "1", "--flow", "Inbound", str(GOOD), str(ran / "failing.yaml")
    )
    assert code == ExitCode.FAILED
    # GOOD shows the boundary of IN-3 and IN-7b (a 550 at RCPT, nothing leaves) and passed.
    assert "IN-3:" not in err and "IN-7b:" not in err
    assert "IN-1: bounded by 0 trace(s) that passed on reference, fewer than 1" in err
    code, _, err = _coverage(ran, "--min-boundary", "2", "--flow", "Inbound", str(GOOD))
    assert code == ExitCode.FAILED
    assert "IN-3: bounded by 1 trace(s) that passed on reference, fewer than 2" in err
    # Showing traces do not count as bounding ones, nor the reverse: RELAY-1 is shown, never bounded.
    code, _, err = _coverage(ran, "--min", "1", "--min-boundary", "1", "--flow", "Relay", str(GOOD))
    assert "RELAY-1: shown by" not in err
    assert "RELAY-1: bounded by 0 trace(s) that passed on reference, fewer than 1" in err


def test_black_box_and_seed_ids_select_ids_by_their_catalogue_entry(ran: Path) -> None:
    everything = {entry["id"]: entry for entry in _json(ran, str(GOOD))["ids"]}
    observable = {entry["id"] for entry in _json(ran, "--black-box", str(GOOD))["ids"]}
    assert observable == {i for i, entry in everything.items() if entry["black_box"]}
    # C-CAT and IN-5 are shown only by the categorizer's LDAP queries; a reply or a delivery shows RELAY-1.
    assert "RELAY-1" in observable and "IN-3" in observable
    assert not {"C-CAT", "IN-5", "C-AQ"} & observable
    seeds = {entry["id"] for entry in _json(ran, "--seed-ids", str(GOOD))["ids"]}
    assert {"C-RE", "IN-1", "OUT-9b", "GW-9", "RELAY-5"} <= seeds
    assert not {i for i in seeds if i.startswith(("PROTO-", "DSN-", "SEC-"))}
    assert not {"RELAY-6", "RELAY-7"} & seeds


def test_white_box_assertions_are_those_a_black_box_target_cannot_observe() -> None:
    # The evidence rule and the outcome checks must agree on what a real MTA does not show.
    assert frozenset(NEEDS) == WHITE_BOX


# A few relay and inbound traces that pass on Postfix: between them every black-box Relay ID is shown
# once, and inbound/case-insensitive-proxy claims C-CAT and IN-5, which only the LDAP log shows.
ON_POSTFIX = [
    "relay/access-internal-vs-serves-lan-and-relay-host",
    "relay/adatum-relay-domain-authenticated-alice",
    "relay/decision-filtering-anonymous-authoritative-only",
    "relay/relay-list-client-relays",
    "relay/open-relay-helo-several-recipients",
    "relay/denied-lookalike-domains",
    "inbound/case-insensitive-proxy",
]


@pytest.fixture(scope="module")
def ran_on_postfix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same traces run on the reference MTA and on Postfix standing in for EX1, one results file
    each."""
    if (why := targets.POSTFIX.unavailable()) is not None:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("coverage-postfix")
    paths = [str(ROOT / "traces" / f"{trace}.yaml") for trace in ON_POSTFIX]
    for target in ("reference", "postfix"):
        reports = folder / "reports" / target
        done = mailflow("run", "--target", target, "--reports", str(reports), *paths, cwd=folder)
        assert done.returncode == ExitCode.OK, done.stdout + done.stderr
        (folder / "reports" / f"{target}.json").write_text((reports / "last-run.json").read_text())
    return folder


def test_on_a_real_mta_a_claim_counts_only_by_its_black_box_form(ran_on_postfix: Path) -> None:
    paths = [str(ROOT / "traces" / f"{trace}.yaml") for trace in ON_POSTFIX]
    on_reference = {e["id"]: e for e in _json(ran_on_postfix, *paths, results="reference.json")["ids"]}
    on_postfix = {e["id"]: e for e in _json(ran_on_postfix, *paths, results="postfix.json")["ids"]}
    proxy = "inbound/case-insensitive-proxy"
    for spec_id in ("C-CAT", "IN-5"):
        # The trace passed on both; its LDAP assertions show the step only where there is an LDAP log.
        assert on_postfix[spec_id]["targets"]["postfix"]["outcomes"] == {proxy: "passed"}
        assert on_postfix[spec_id]["targets"]["postfix"] == {
            "black_box": True, "showing_passed": 0, "bounding_passed": 0, "outcomes": {proxy: "passed"}
        }  # fmt: skip
        assert on_reference[spec_id]["targets"]["reference"]["showing_passed"] == 1
        assert on_reference[spec_id]["targets"]["reference"]["black_box"] is False
    # IN-6a's black-box form is the mailbox delivery, which Postfix shows.
    assert proxy in on_postfix["IN-6a"]["showing_black_box"]
    assert on_postfix["IN-6a"]["targets"]["postfix"]["showing_passed"] >= 1
    code, _, err = _coverage(ran_on_postfix, "--min", "1", "--flow", "Core", *paths, results="postfix.json")
    assert code == ExitCode.FAILED
    assert "C-CAT: shown by 0 trace(s) that passed on postfix, fewer than 1" in err
    code, _, err = _coverage(ran_on_postfix, "--min", "1", "--flow", "Core", *paths, results="reference.json")
    assert "C-CAT:" not in err


def test_postfix_gate_on_the_black_box_relay_ids(ran_on_postfix: Path) -> None:
    paths = [str(ROOT / "traces" / f"{trace}.yaml") for trace in ON_POSTFIX]
    gate = ("--target", "postfix", "--black-box", "--flow", "Relay", *paths)
    code, out, err = _coverage(ran_on_postfix, "--min", "1", *gate, results="postfix.json")
    assert code == ExitCode.OK, out + err
    assert "postfix (black box)" in out
    code, _, err = _coverage(ran_on_postfix, "--min", "2", *gate, results="postfix.json")
    assert code == ExitCode.FAILED
    assert "RELAY-2: shown by 1 trace(s) that passed on postfix, fewer than 2" in err
    assert "RELAY-1:" not in err  # two of the traces show it
