"""The oracle (harness/generation/oracle) against the reference MTA: random scenarios from the generator's
decision space (SMTP sessions, with STARTTLS and AUTH where offered, store submissions and Notes memos;
connectors and servers down), each replayed through the real lab, must produce exactly what the oracle
predicts — the replies, every delivery (mailbox and server, Internet host and the server that handed
it over, NDRs), the tracking events it asserts, the hop chain and nothing else. Hypothesis shrinks a
disagreement to the smallest scenario it can find (fewest recipients, earliest entries of each list),
which the failure message shows.

No disagreement is excused: every scenario the oracle can decide must pass, and the generator hides
none from the corpus.

200 examples by default (about a minute on two CPUs); for a longer or shorter run:
    MAILFLOW_ORACLE_EXAMPLES=500 .venv/bin/pytest tests/test_oracle_agreement.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from harness.corpus import writer
from harness.generation import generator
from harness.generation.oracle import MEMO, STORE, Prediction, Scenario, Unpredictable, load, predict
from harness.run.runner import TraceResult, run_trace
from harness.targets import REFERENCE

LABS = Path(__file__).resolve().parents[1] / "fixtures" / "labs"
LAB = LABS / "contoso.yaml"
EXAMPLES = int(os.environ.get("MAILFLOW_ORACLE_EXAMPLES", "200"))
ADDRESSES = sorted(
    {a for kind in generator.RECIPIENTS.values() for a in kind} | set(generator.ROUTE_ACTION_RECIPIENTS)
)

# Scenarios on the contoso lab that once were known disagreements, kept as agreement cases with the
# deliveries the oracle predicts.
AGREEMENTS = [
    # Judy forwards to Carol (EX3) and keeps a copy (deliverAndRedirect); her home server is EX1, and the
    # message is categorized first on EX3, in London. EX3 applies the forwarding and sends Judy's copy
    # home with the categorizer's state in XEXCH50: EX1 does not apply it again, one copy each.
    (
        Scenario("internet", "EX3", None, None, "ann@fabrikam.com", ("judy@contoso.com",)),
        [("mailbox", "carol@contoso.com", "EX3"), ("mailbox", "judy@contoso.com", "EX1")],
    ),
    # Alice directly and through Executives, which EX3 expands: two copies reach EX1 by two paths, and
    # its store keeps one (docs/decisions.md); the oracle once expected both.
    (
        Scenario(
            "lan",
            "EX4",
            None,
            "relayuser",
            "relay.user@contoso.com",
            ("alice.smith@contoso.com", "executives@contoso.com"),
        ),
        [("mailbox", "alice@contoso.com", "EX1"), ("mailbox", "dave@contoso.com", "EX4")],
    ),
]

# Scenarios on small labs of their own, for decisions the contoso lab has no clean example of (the
# traces outbound/decision-* show the same); the oracle and the reference MTA must agree on them.
PINNED = [
    # KB 244986: `abc.*.x.com` is read as `*.x.com` (docs/decisions.md, "Recipient-policy domains match
    # literally"); the oracle once matched it as a literal domain and sent ops@mail.x.com by DNS.
    (
        "wildcard",
        Scenario("lan", "EX1", None, "alice", "alice@contoso.com", ("ops@mail.x.com",)),
        ("sink", "x-smarthost", "EX1"),
    ),
    (
        "wildcard",
        Scenario("lan", "EX1", None, "alice", "alice@contoso.com", ("ops@x.com",)),
        ("sink", "x-mx", "EX1"),
    ),
    # "Equal-cost ties are spread": two equal connectors on EX2; the first message takes the first name.
    (
        "route-choices",
        Scenario("lan", "EX1", None, "alice", "alice@contoso.com", ("ops@tie.example",)),
        ("sink", "alpha-host", "EX2"),
    ),
    # ... but a connector on this server comes first: Local Z on EX1 beats Local A on EX2.
    (
        "route-choices",
        Scenario("lan", "EX1", None, "alice", "alice@contoso.com", ("ops@local.example",)),
        ("sink", "beta-host", "EX1"),
    ),
    (
        "route-choices",
        Scenario("lan", "EX2", None, "bob", "bob@contoso.com", ("ops@local.example",)),
        ("sink", "alpha-host", "EX2"),
    ),
    # "A DNS connector's bridgehead applies its virtual server smart host (OUT-8)", and a connector's
    # own smart host wins over it.
    (
        "route-choices",
        Scenario("lan", "EX1", None, "alice", "alice@contoso.com", ("ops@own.example",)),
        ("sink", "connector-smarthost", "EX2"),
    ),
    (
        "route-choices",
        Scenario("lan", "EX1", None, "alice", "alice@contoso.com", ("ops@dns.example",)),
        ("sink", "vs-smarthost", "EX2"),
    ),
    # "`%` in an address space": one character, and closer than `*.y.com` whatever it costs.
    (
        "wildcard",
        Scenario("lan", "EX1", None, "alice", "alice@contoso.com", ("ops@abc.y.com",)),
        ("sink", "y-smarthost", "EX1"),
    ),
    (
        "wildcard",
        Scenario("lan", "EX1", None, "alice", "alice@contoso.com", ("ops@abcd.y.com",)),
        ("sink", "x-smarthost", "EX1"),
    ),
    # SMTP connectors between routing groups: Tokyo to London over one, and to Seattle over it and then
    # a routing group connector (EX2 down takes the Seattle-Tokyo connectors with it).
    (
        "contoso",
        Scenario(
            "notes", "EX4", None, None, "Ann Lee/Sales/Fabrikam", ("Grace Park/Contoso",),
            ("Tokyo-London RGC",), kind=MEMO,
        ),
        ("mailbox", "grace@contoso.com", "EX3"),
    ),
    (
        "contoso",
        Scenario(
            "store", "EX4", None, None, "dave@contoso.com", ("alice@contoso.com",),
            ("Tokyo-London RGC", "EX2"), kind=STORE,
        ),
        ("mailbox", "alice@contoso.com", "EX1"),
    ),
]  # fmt: skip


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Every way in of the generator (SMTP sessions, store submissions, memos), every sender it uses
    there, up to three recipients (one Notes name for a memo), and what may be down."""
    entry = draw(st.sampled_from(generator.ENTRIES))
    if entry.kind == STORE:
        sender = generator.MAILBOX_OWNER[entry.server]
    elif entry.kind == MEMO:
        sender = draw(st.sampled_from(generator.NOTES_SENDERS))
    else:
        sender = generator.OWN_ADDRESS[entry.auth] if entry.auth else draw(st.sampled_from(generator.SENDERS))
    if entry.kind == MEMO:
        recipients = [draw(st.sampled_from(generator.NOTES_RECIPIENTS))]
    else:
        recipients = draw(st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=3, unique=True))
    down = draw(st.sampled_from(((), *generator.DOWN)))
    return generator.scenario_of(entry, sender, tuple(recipients), down)


def replay(lab: Path, scenario: Scenario, prediction: Prediction) -> TraceResult:
    """The scenario's trace, with the oracle's expectations, run on the reference MTA in `lab`."""
    world = load(lab)
    document = generator.document(world, scenario, prediction)
    document["lab"] = lab.stem
    with tempfile.TemporaryDirectory() as folder:
        trace = writer.write(document, Path(folder) / "traces" / "scenario.yaml")
        return run_trace(trace, REFERENCE)


def disagreement(scenario: Scenario, prediction: Prediction, result: TraceResult) -> str:
    reasoning = "\n  ".join(prediction.notes)
    failures = "\n  ".join(result.failures())
    return (
        f"the reference MTA and the oracle disagree on\n  {scenario}\n"
        f"the oracle's reasoning:\n  {reasoning}\nwhat differed:\n  {failures}"
    )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_reference_mta_does_what_the_oracle_predicts(scenario: Scenario) -> None:
    try:
        prediction = predict(load(LAB), scenario)
    except Unpredictable:
        assume(False)  # the documents do not decide it: nothing to compare
        return
    result = replay(LAB, scenario, prediction)
    assert result.passed, disagreement(scenario, prediction, result)


@pytest.mark.parametrize(
    ("scenario", "deliveries"), AGREEMENTS, ids=[generator.slug(s) for s, _ in AGREEMENTS]
)
def test_reference_mta_and_oracle_agree_on_former_disagreements(
    scenario: Scenario, deliveries: list[tuple[str, str, str]]
) -> None:
    prediction = predict(load(LAB), scenario)
    assert sorted((d.kind, d.where, d.server) for d in prediction.deliveries if not d.repeat) == deliveries
    result = replay(LAB, scenario, prediction)
    assert result.passed, disagreement(scenario, prediction, result)


@pytest.mark.parametrize(
    ("lab", "scenario", "delivery"), PINNED, ids=[f"{lab}-{generator.slug(s)}" for lab, s, _ in PINNED]
)
def test_reference_mta_and_oracle_agree_on_pinned_scenarios(
    lab: str, scenario: Scenario, delivery: tuple[str, str, str]
) -> None:
    lab_file = LABS / f"{lab}.yaml"
    prediction = predict(load(lab_file), scenario)
    assert [(d.kind, d.where, d.server) for d in prediction.deliveries] == [delivery]
    result = replay(lab_file, scenario, prediction)
    assert result.passed, disagreement(scenario, prediction, result)
