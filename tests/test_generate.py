"""The generator and the oracle without a lab: determinism, what the traces say, and the rules the
oracle must get right on hand-picked scenarios (each checked by a hand-written trace of the corpus)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli.generate import generate as generate_command
from harness.corpus.claims import claims
from harness.corpus.trace import load as load_trace
from harness.generation.generator import document, generate, slug
from harness.generation.oracle import MEMO, STORE, Scenario, Unpredictable, load, predict

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "fixtures" / "labs" / "contoso.yaml"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.yaml"))}


def test_same_seed_same_files_byte_for_byte(tmp_path: Path) -> None:
    generate(LAB, 7, 30, tmp_path / "a")
    generate(LAB, 7, 30, tmp_path / "b")
    first = _files(tmp_path / "a")
    assert len(first) == 30
    assert first == _files(tmp_path / "b")
    assert first != _files(generate(LAB, 8, 30, tmp_path / "c")[0].parent)


def test_traces_load_and_name_their_scenario(tmp_path: Path) -> None:
    for path in generate(LAB, 3, 20, tmp_path):
        trace = load_trace(path)
        assert trace.id == f"generated/{path.stem}"
        # What is not expected is asserted not to happen: elsewhere, or (nothing expected) anywhere.
        assert (trace.outcome.get("nothing_else_delivered") or trace.outcome.get("nothing_delivered")) is True
        assert trace.spec


def test_traces_claim_only_what_they_assert(tmp_path: Path) -> None:
    paths = generate(LAB, 11, 40, tmp_path)
    assert len(paths) == 40
    unbacked = [
        f"{path.name}:{c.line}: {c.missing}"
        for path in paths
        for c in claims(load_trace(path))
        if not c.shown
    ]
    assert unbacked == []


def test_directory_lookups_and_mx_queries_are_asserted(tmp_path: Path) -> None:
    """The unknown recipient's look-up finds nothing, and the NDR goes by the sender's MX, as the
    hand-written inbound/unknown-recipient-ndr asserts."""
    unknown = Scenario("internet", "EX1", None, None, "ann@fabrikam.com", ("nobody@contoso.com",))
    outcome = document(load(LAB), unknown, predict(load(LAB), unknown))["outcome"]
    assert outcome["ldap"] == [
        {"filter": "(proxyAddresses=smtp:nobody@contoso.com)", "client": "EX1", "results": 0}
    ]
    assert outcome["dns"] == [{"name": "fabrikam.com", "type": "MX", "client": "EX1"}]


def test_committed_traces_are_a_fresh_generation(tmp_path: Path) -> None:
    """traces/generated is what `mailflow generate` writes with its defaults, byte for byte."""
    committed = ROOT / "traces" / "generated"
    result = CliRunner().invoke(generate_command, ["-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert _files(tmp_path) == _files(committed)


def test_a_new_run_replaces_only_generated_traces(tmp_path: Path) -> None:
    mine = tmp_path / "notes.yaml"
    mine.write_text("id: inbound/hand-written\n", encoding="utf-8")
    generate(LAB, 1, 5, tmp_path)
    generate(LAB, 2, 5, tmp_path)
    assert mine.exists()
    assert len(list(tmp_path.glob("*.yaml"))) == 6


def test_cli(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        generate_command, ["--lab", "contoso", "--seed", "5", "--count", "4", "-o", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "4 traces written" in result.output
    assert len(list(tmp_path.glob("*.yaml"))) == 4


def test_the_oracle_shares_no_code_with_the_reference_mta() -> None:
    code = (
        "import sys, harness.generation.oracle; "
        "bad = sorted(m for m in sys.modules if m.startswith(('reference_mta', 'harness.lab'))); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _predict(scenario: Scenario) -> tuple[list[tuple[int, str]], list[tuple[str, str, str]]]:
    prediction = predict(load(LAB), scenario)
    replies = [(r.code, r.text) for r in prediction.replies]
    deliveries = [(d.kind, d.where, d.server) for d in prediction.deliveries]
    deliveries += [("ndr " + n.status, n.delivery.where, n.delivery.server) for n in prediction.ndrs]
    return replies, deliveries


@pytest.mark.parametrize(
    ("scenario", "replies", "deliveries"),
    [
        # relay/relay-denied-by-default
        (
            Scenario("internet", "EX1", None, None, "ann@fabrikam.com", ("nancy@northwind.example",)),
            [(550, "5.7.1 Unable to relay for nancy@northwind.example")],
            [],
        ),
        # inbound/unknown-recipient-ndr
        (
            Scenario("internet", "EX1", None, None, "ann@fabrikam.com", ("nobody@contoso.com",)),
            [(250, "2.1.5 nobody@contoso.com")],
            [("ndr 5.1.1", "fabrikam-mx", "EX1")],
        ),
        # inbound/shared-namespace
        (
            Scenario("internet", "EX1", None, None, "ann@fabrikam.com", ("legacy-user@shared.contoso.com",)),
            [(250, "2.1.5 legacy-user@shared.contoso.com")],
            [("sink", "legacy-mx", "EX1")],
        ),
        # relay/adatum-relay-domain-authenticated-alice and ...-other-senders
        (
            Scenario("lan", "EX1", None, "alice", "alice@contoso.com", ("orders@adatum.com",)),
            [(250, "2.1.5 orders@adatum.com")],
            [("sink", "isp-smarthost", "EX4")],
        ),
        (
            Scenario("internet", "EX1", None, None, "ann@fabrikam.com", ("orders@adatum.com",)),
            [(250, "2.1.5 orders@adatum.com")],
            [("sink", "adatum-mx", "EX1")],
        ),
        # outbound/connector-down-equal-address-space
        (
            Scenario(
                "relay-host", "EX1", None, None, "ann@fabrikam.com", ("ops@tailspin.example",),
                ("Example TLD SMTP Connector",),
            ),
            [(250, "2.1.5 ops@tailspin.example")],
            [("sink", "tailspin-mx", "EX1")],
        ),
        # inbound/expansion-server
        (
            Scenario("internet", "EX1", None, None, "ann@fabrikam.com", ("executives@contoso.com",)),
            [(250, "2.1.5 executives@contoso.com")],
            [("mailbox", "alice@contoso.com", "EX1"), ("mailbox", "dave@contoso.com", "EX4")],
        ),
        # outbound/mapi-submission-to-internet: no RCPT at all, the store takes the recipient
        (
            Scenario("store", "EX1", None, None, "alice@contoso.com", ("ann@fabrikam.com",), kind=STORE),
            [],
            [("sink", "fabrikam-mx", "EX1")],
        ),
        # gateway/memo-to-local-mailbox and gateway/memo-to-another-routing-group
        (
            Scenario("notes", "EX4", None, None, "Ann Lee/Sales/Fabrikam", ("Dave Ito/Contoso",), kind=MEMO),
            [],
            [("mailbox", "dave@contoso.com", "EX4")],
        ),
        (
            Scenario("notes", "EX4", None, None, "Ann Lee/Sales/Fabrikam", ("Alice Smith/Contoso",),
                     kind=MEMO),
            [],
            [("mailbox", "alice@contoso.com", "EX1")],
        ),
        # relay/auth-after-starttls-on-ex2
        (
            Scenario("lan", "EX2", None, "alice", "alice@contoso.com", ("sales@tailspin.example",), tls=True),
            [(250, "2.1.5 sales@tailspin.example")],
            [("sink", "isp-smarthost", "EX3")],
        ),
        # relay/access-members-only-requires-auth: MAIL is refused, so RCPT is out of sequence
        (
            Scenario("internet", "EX1", "Members Only SMTP Virtual Server", None, "ann@fabrikam.com",
                     ("bob@contoso.com",)),
            [(503, "5.5.2 Need mail command")],
            [],
        ),
    ],
)  # fmt: skip
def test_oracle_agrees_with_the_hand_written_corpus(
    scenario: Scenario, replies: list[tuple[int, str]], deliveries: list[tuple[str, str, str]]
) -> None:
    assert _predict(scenario) == (replies, deliveries)


def test_least_cost_path_and_its_fallback() -> None:
    world = load(LAB)
    to_carol = Scenario("internet", "EX1", None, None, "ann@fabrikam.com", ("carol@contoso.com",))
    assert predict(world, to_carol).deliveries[0].hops == ("EX1", "EX2", "EX4", "EX3")
    rerouted = replace(to_carol, down=("Seattle-Tokyo RGC",))
    assert predict(world, rerouted).deliveries[0].hops == ("EX1", "EX3")
    cut_off = replace(to_carol, down=("Seattle-Tokyo RGC", "Seattle-London RGC"))
    assert predict(world, cut_off).waiting == [("EX1", "carol@contoso.com")]


def test_what_the_documents_do_not_decide_is_left_out() -> None:
    several_failures = Scenario(
        "internet", "EX1", None, None, "ann@fabrikam.com", ("nobody@contoso.com", "ghost@litware.com")
    )
    with pytest.raises(Unpredictable):
        predict(load(LAB), several_failures)


def test_slug_names_the_scenario() -> None:
    scenario = Scenario(
        "lan", "EX1", None, "alice", "alice@contoso.com", ("x@adatum.com",), ("Partner SMTP Connector",)
    )
    assert (
        slug(scenario)
        == "lan-ex1-default-auth-alice-from-alice-at-contoso-com-to-x-at-adatum-com-down-partner"
    )


def test_members_only_refuses_an_anonymous_sender_at_mail() -> None:
    world = load(LAB)
    anonymous = Scenario(
        "internet", "EX1", "Members Only SMTP Virtual Server", None, "ann@fabrikam.com", ("bob@contoso.com",)
    )
    script = document(world, anonymous, predict(world, anonymous))["sessions"][0]["script"]
    assert {"expect": {"code": 530, "text": "5.7.3 Client was not authenticated"}} in script
    assert not any("data" in step for step in script)


def test_tls_comes_before_authentication_and_only_where_offered() -> None:
    world = load(LAB)
    over_tls = Scenario("lan", "EX2", None, "alice", "alice@contoso.com", ("bob@contoso.com",), tls=True)
    steps = [
        next(iter(step))
        for step in document(world, over_tls, predict(world, over_tls))["sessions"][0]["script"]
    ]
    assert steps.index("starttls") < steps.index("auth")
    with pytest.raises(Unpredictable):  # EX2 offers AUTH only after STARTTLS
        predict(world, replace(over_tls, tls=False))
    with pytest.raises(Unpredictable):  # EX3 has no certificate
        predict(world, replace(over_tls, server="EX3", tls=True))


def test_tracking_events_follow_the_message() -> None:
    """1019 from the client on receive, 1030 where the NDR is made, 1034/1031 on the bridgehead that
    sends the NDR out — and for a store submission the recipient's whole sequence, 1027 first."""
    world = load(LAB)
    unknown = Scenario("internet", "EX1", None, None, "ann@fabrikam.com", ("nobody@contoso.com",))
    outcome = document(world, unknown, predict(world, unknown))["outcome"]
    assert {"server": "EX1", "event": 1019, "recipient": "nobody@contoso.com", "client": "internet",
            "sender": "ann@fabrikam.com"} in outcome["events"]  # fmt: skip
    assert {"server": "EX1", "event": 1030} in outcome["events"]
    assert {"server": "EX1", "event": 1034, "recipient": "ann@fabrikam.com",
            "queue": "Internet Mail SMTP Connector"} in outcome["events"]  # fmt: skip
    submitted = Scenario("store", "EX2", None, None, "bob@contoso.com", ("bob@contoso.com",), kind=STORE)
    outcome = document(world, submitted, predict(world, submitted))["outcome"]
    assert outcome["tracking"] == {
        "EX2": {"bob@contoso.com": [1027, 1019, 1025, 1024, 1033, 1036, 1028, 1023]}
    }


def test_a_server_down_holds_what_is_for_it_and_reroutes_around_it() -> None:
    world = load(LAB)
    to_bob = Scenario("relay-host", "EX1", None, None, "ann@fabrikam.com", ("bob@contoso.com",), ("EX2",))
    assert predict(world, to_bob).waiting == [("EX1", "bob@contoso.com")]
    assert document(world, to_bob, predict(world, to_bob))["sessions"][0] == {"lab": {"server_down": "EX2"}}
    # EX4 down takes both Tokyo connectors with it: carol goes the direct, expensive way.
    to_carol = replace(to_bob, recipients=("carol@contoso.com",), down=("EX4",))
    assert predict(world, to_carol).deliveries[0].hops == ("EX1", "EX3")
    with pytest.raises(Unpredictable):  # the session itself would be refused
        predict(world, replace(to_bob, down=("EX1",)))
    # Only Seattle knows EX1 is down: a memo for Alice crosses into Seattle and waits on EX2.
    memo = Scenario(
        "notes", "EX4", None, None, "Ann Lee/Sales/Fabrikam", ("Alice Smith/Contoso",), ("EX1",), kind=MEMO
    )
    assert predict(world, memo).waiting == [("EX2", "alice@contoso.com")]


def test_memo_sender_is_encapsulated_and_names_are_looked_up() -> None:
    world = load(LAB)
    memo = Scenario("notes", "EX4", None, None, "Ann Lee/Sales/Fabrikam", ("Dave Ito/Contoso",), kind=MEMO)
    outcome = document(world, memo, predict(world, memo))["outcome"]
    assert outcome["delivered"][0]["sender"] == "IMCEANOTES-Ann+20Lee+2FSales+2FFabrikam@contoso.com"
    assert {"filter": "(proxyAddresses=notes:Dave Ito/Contoso)", "client": "EX4", "results": 1} in outcome[
        "ldap"
    ]
    assert slug(memo) == "notes-ex4-from-ann-lee-sales-fabrikam-to-dave-ito-contoso"
