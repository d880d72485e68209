"""The SMTP session rules table and the access policy, checked as tables: every cell, not samples."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness.lab import config as lab_config
from reference_mta import replies
from reference_mta.access_policy import RELAY_RULES, Client, filtering_applies, may_connect, relay_grant
from reference_mta.session_rules import (
    ANY,
    CALL_LIMITS,
    RULES,
    Facts,
    State,
    Verdict,
    is_sync_point,
    judge,
    over_error_budget,
    state_of,
)
from reference_mta.topology import Organization, VirtualServer

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"


@pytest.fixture(scope="module")
def organization() -> Organization:
    return lab_config.load(LAB, base="127.77.0.0", port_offset=0).organization


def vs(organization: Organization, server: str, name: str) -> VirtualServer:
    (found,) = (v for v in organization.server(server).virtual_servers if v.name == name)
    return found


CLIENTS = {
    "internet": "127.77.0.200",
    "lan": "127.77.0.201",
    "relay-host": "127.77.0.202",
    "attacker": "127.77.0.203",
}


def address(organization: Organization, host: str) -> str:
    return CLIENTS[host]


# --- states ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("greeted", "sender", "recipients", "chunking", "state"),
    [
        (False, False, 0, False, State.CONNECTED),
        (True, False, 0, False, State.GREETED),
        (True, True, 0, False, State.MAIL),
        (True, True, 2, False, State.RCPT),
        (True, True, 2, True, State.CHUNKING),
    ],
)
def test_state_follows_the_session(
    greeted: bool, sender: bool, recipients: int, chunking: bool, state: State
) -> None:
    assert state_of(greeted, sender, recipients, chunking) is state


def test_every_refusal_is_a_well_formed_4xx_or_5xx_reply() -> None:
    for command, rule in RULES.items():
        for state in State:
            refusal = rule.refusal(state)
            if state in rule.accepted:
                assert refusal is None, (command, state)
            else:
                assert refusal is not None and refusal[:1] in "45" and refusal[3] == " ", (command, state)


@pytest.mark.parametrize(
    ("command", "state", "reply"),
    [
        ("MAIL", State.CONNECTED, replies.SEND_HELLO_FIRST),
        ("MAIL", State.RCPT, replies.NESTED_MAIL),
        ("RCPT", State.GREETED, replies.NEED_MAIL),
        ("DATA", State.MAIL, replies.NEED_RCPT),
        ("DATA", State.CHUNKING, replies.DATA_AFTER_BDAT),
        ("BDAT", State.MAIL, replies.NEED_RCPT),
        ("AUTH", State.MAIL, replies.AUTH_IN_TRANSACTION),
        ("STARTTLS", State.RCPT, replies.STARTTLS_IN_TRANSACTION),
        ("XEXCH50", State.GREETED, replies.NEED_MAIL),
        ("XEXCH50", State.MAIL, replies.NEED_RCPT),
    ],
)
def test_bad_sequences_get_their_own_reply(command: str, state: State, reply: str) -> None:
    assert RULES[command].refusal(state) == reply


def test_commands_that_reset_or_inform_are_accepted_everywhere() -> None:
    for command in ("HELO", "EHLO", "RSET", "NOOP", "QUIT", "HELP", "VRFY", "EXPN"):
        assert RULES[command].accepted == ANY


def test_sync_points_are_rfc_2920s_list_plus_starttls_and_auth() -> None:
    with_pipelining = {command for command in RULES if is_sync_point(command, None, pipelining=True)}
    # XEXCH50 too: its blob follows the 354, as DATA's content does.
    assert with_pipelining == {"HELO", "EHLO", "DATA", "VRFY", "EXPN", "NOOP", "STARTTLS", "AUTH", "XEXCH50"}


@pytest.mark.parametrize(
    ("arg", "sync_point"),
    [("PLAIN AGFsaWNlAHg=", False), ("plain AGFsaWNlAHg=", False), ("PLAIN", True), ("LOGIN YWxpY2U=", True)],
)
def test_auth_with_a_one_step_initial_response_may_be_pipelined(arg: str, sync_point: bool) -> None:
    # RFC 4954 4: AUTH PLAIN with its initial response completes at once; LOGIN always asks again.
    assert is_sync_point("AUTH", arg, pipelining=True) is sync_point


def test_without_pipelining_every_command_but_quit_and_bdat_is_a_sync_point() -> None:
    unsynced = {command for command in RULES if not is_sync_point(command, "PLAIN x", pipelining=False)}
    assert unsynced == {"QUIT", "BDAT"}


def test_bdat_is_refused_in_a_helo_session_even_in_a_transaction() -> None:
    assert RULES["BDAT"].refusal(State.RCPT, extended=False) == replies.BDAT_NEEDS_EHLO
    assert RULES["BDAT"].refusal(State.RCPT, extended=True) is None


def test_call_limits_leave_transactions_alone() -> None:
    assert CALL_LIMITS["*"] >= 64_000  # a message may have Exchange's maximum of recipients
    assert all(CALL_LIMITS[command] <= 100 for command in ("NOOP", "RSET", "AUTH", "HELO", "EHLO"))


def test_a_refused_session_serves_only_quit_whatever_the_state() -> None:
    refused = Facts(State.RCPT, fqdn="ex1.contoso.com", refused=True, enforce_sync=True, input_waiting=True)
    assert judge("DATA", None, refused) == Verdict(replies.REFUSED_SESSION)
    assert judge("QUIT", None, refused) == Verdict(replies.closing("ex1.contoso.com"), closes=True)


def test_a_sync_error_ends_the_session_only_where_sync_points_are_enforced() -> None:
    early = Facts(State.GREETED, input_waiting=True)
    assert judge("NOOP", None, early) is None
    assert judge("NOOP", None, Facts(State.GREETED, input_waiting=True, enforce_sync=True)) == Verdict(
        replies.SYNC_ERROR, closes=True
    )
    assert judge("RSET", None, Facts(State.GREETED, input_waiting=True, enforce_sync=True)) is None


def test_a_commands_guards_come_after_its_state() -> None:
    assert judge("DATA", None, Facts(State.MAIL, binarymime=True)) == Verdict(replies.NEED_RCPT)
    assert judge("DATA", None, Facts(State.RCPT, binarymime=True)) == Verdict(replies.BINARYMIME_NEEDS_BDAT)
    assert judge("STARTTLS", None, Facts(State.RCPT, encrypted=True)) == Verdict(
        replies.STARTTLS_IN_TRANSACTION
    )
    assert judge("STARTTLS", None, Facts(State.GREETED, encrypted=True)) == Verdict(
        replies.TLS_ALREADY_ACTIVE
    )


def test_messages_per_connection_end_the_session_at_the_next_mail() -> None:
    assert judge("MAIL", None, Facts(State.GREETED, messages=2, message_limit=3)) is None
    assert judge("MAIL", None, Facts(State.GREETED, messages=3, message_limit=3)) == Verdict(
        replies.TOO_MANY_MESSAGES, closes=True
    )
    assert judge("MAIL", None, Facts(State.GREETED, messages=1000)) is None


def test_authentication_comes_after_the_state_and_before_the_guards() -> None:
    members_only = Facts(State.GREETED, anonymous_allowed=False, messages=5, message_limit=1)
    assert judge("MAIL", None, members_only) == Verdict(replies.NOT_AUTHENTICATED)
    assert judge("RCPT", None, members_only) == Verdict(replies.NEED_MAIL)


def test_the_error_budget_ends_the_session_when_spent() -> None:
    assert over_error_budget(4, 5) is None
    assert over_error_budget(5, 5) == Verdict(replies.TOO_MANY_ERRORS, closes=True)


# --- access ----------------------------------------------------------------------------------------


def test_relay_rules_are_in_the_documented_order() -> None:
    assert [name for name, _ in RELAY_RULES] == [
        "open relay",
        "authenticated",
        "organization server",
        "relay list",
        "inbound domain",
        "relay connector",
    ]


@pytest.mark.parametrize(
    ("virtual_server", "client", "authenticated", "recipient", "grant"),
    [
        ("Default SMTP Virtual Server", "attacker", False, "x@evil.example", None),
        ("Default SMTP Virtual Server", "attacker", False, "alice@contoso.com", "inbound domain"),
        ("Default SMTP Virtual Server", "attacker", False, "x@partner.example", "relay connector"),
        ("Default SMTP Virtual Server", "attacker", True, "x@evil.example", "authenticated"),
        ("Default SMTP Virtual Server", "relay-host", False, "x@evil.example", "relay list"),
        ("Open Relay SMTP Virtual Server", "attacker", False, "x@evil.example", "open relay"),
        ("Restricted SMTP Virtual Server", "lan", False, "x@evil.example", "relay list"),
        ("Restricted SMTP Virtual Server", "internet", False, "x@evil.example", None),
        ("Directory SMTP Virtual Server", "internet", False, "x@evil.example", "relay list"),
        ("Directory SMTP Virtual Server", "relay-host", True, "x@evil.example", None),
    ],
)
def test_relay_grant(
    organization: Organization,
    virtual_server: str,
    client: str,
    authenticated: bool,
    recipient: str,
    grant: str | None,
) -> None:
    server = vs(organization, "EX1", virtual_server)
    who = Client(address(organization, client), authenticated)
    assert relay_grant(organization, server, who, recipient) == grant


def test_organization_servers_relay_through_any_virtual_server(organization: Organization) -> None:
    server = vs(organization, "EX1", "Default SMTP Virtual Server")
    ex3 = organization.server("EX3").address
    assert relay_grant(organization, server, Client(ex3, False), "x@evil.example") == "organization server"


def test_connection_control(organization: Organization) -> None:
    restricted = vs(organization, "EX1", "Restricted SMTP Virtual Server")
    internal = vs(organization, "EX2", "Internal SMTP Virtual Server")
    assert may_connect(restricted, address(organization, "internet"))
    assert not may_connect(restricted, address(organization, "attacker"))
    assert may_connect(internal, address(organization, "lan"))
    assert not may_connect(internal, address(organization, "internet"))
    assert may_connect(vs(organization, "EX1", "Default SMTP Virtual Server"), "127.0.0.1")


def test_recipient_filtering_applies_to_anonymous_sessions_in_authoritative_domains(
    organization: Organization,
) -> None:
    filtered = vs(organization, "EX1", "Filtered SMTP Virtual Server")
    anonymous = Client(address(organization, "internet"), False)
    assert filtering_applies(organization, filtered, anonymous, "nobody@contoso.com")
    assert not filtering_applies(organization, filtered, anonymous, "nobody@shared.contoso.com")
    assert not filtering_applies(
        organization, filtered, Client(anonymous.address, True), "nobody@contoso.com"
    )
    ex2 = Client(organization.server("EX2").address, False)
    assert not filtering_applies(organization, filtered, ex2, "nobody@contoso.com")
    default = vs(organization, "EX1", "Default SMTP Virtual Server")
    assert not filtering_applies(organization, default, anonymous, "nobody@contoso.com")
    assert filtered.recipient_filtering is not None
    assert filtered.recipient_filtering.listed("Bulk-News@Contoso.com")
    assert not filtered.recipient_filtering.listed("alice@contoso.com")


def test_xexch50_is_taken_from_a_server_of_the_organization_only() -> None:
    facts = Facts(State.RCPT)
    assert judge("XEXCH50", "10 2", facts) == Verdict(replies.XEXCH50_NOT_AUTHORIZED)
    assert judge("XEXCH50", "10 2", replace(facts, organization_server=True)) is None
    # The sequence first, as for every command: before a recipient, 503 whoever asks.
    assert judge("XEXCH50", "10 2", Facts(State.MAIL)) == Verdict(replies.NEED_RCPT)
