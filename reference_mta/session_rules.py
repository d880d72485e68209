"""SMTP session rules of a virtual server: which command is accepted in which state, which commands
must end a pipelined group, and which need an authenticated client.

Theory of operation
-------------------
A session is always in one of five states. The state is worked out from what the protocol engine
already holds (the session and the envelope), never kept separately, so the table and the engine
cannot disagree:

    CONNECTED  the greeting is sent; no HELO or EHLO yet
    GREETED    HELO or EHLO accepted; no transaction
    MAIL       MAIL accepted; no recipient yet
    RCPT       at least one recipient accepted
    CHUNKING   a BDAT transfer has begun and its LAST chunk has not come (RFC 3030)

Every command has one rule: the states in which it is accepted and, for each other state, the reply
that refuses it (RFC 5321 4.1.4 and 4.3.2: 503 for a bad sequence). Accepted commands move the state
the obvious way (HELO/EHLO/RSET and a completed message back to GREETED, MAIL to MAIL, a recipient to
RCPT, BDAT to CHUNKING); the protocol engine does that as it fills or clears the envelope.

Pipelining (RFC 2920 3.1): EHLO, DATA, VRFY, EXPN, NOOP and QUIT, and STARTTLS (RFC 3207) and AUTH
(RFC 4954; not AUTH PLAIN with its initial response, which completes at once), may only be the last
command of a group: a client must wait for their reply. In a session
that did not start with EHLO, PIPELINING was never offered, so every command is such a sync point. Input
that is already waiting when a sync point is read was sent without waiting: a synchronization error
(the session is refused and closed when the virtual server enforces sync points). QUIT is exempt: the
session ends anyway. BDAT may be pipelined (RFC 3030 4.2).

A virtual server without anonymous access refuses transaction commands until the client authenticates.

Beyond the state, some rules look at the session itself (`Facts`): a session that connection control
refused serves only QUIT (RFC 5321 3.1), and a synchronization error ends the session; these come
before any command's own rule (`SESSION_GUARDS`). A command's rule may add guards of its own, checked
once the state allows it: no STARTTLS inside TLS (RFC 3207 4.2), no MAIL beyond the virtual server's
messages per connection, no DATA for a BODY=BINARYMIME transaction (RFC 3030 3), no XEXCH50 from a
client that is not a server of the organization (504, as Exchange answers an unauthenticated one).
`judge` applies them all, in that order; the protocol engine asks it before every command and answers
with its verdict.
Every 5xx a client earns counts against the virtual server's error budget (`counts_as_error`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reference_mta import replies


class State(enum.Enum):
    CONNECTED = "connected"
    GREETED = "greeted"
    MAIL = "mail"
    RCPT = "rcpt"
    CHUNKING = "chunking"


ANY = frozenset(State)
TRANSACTION = frozenset({State.MAIL, State.RCPT, State.CHUNKING})


@dataclass(frozen=True)
class Facts:
    """What the rules look at: the state, and what the protocol engine knows of the session."""

    state: State
    fqdn: str = ""
    extended: bool = True  # greeted with EHLO
    authenticated: bool = False
    anonymous_allowed: bool = True  # the virtual server's anonymous access
    refused: bool = False  # connection control answered the greeting with 554
    enforce_sync: bool = False  # the virtual server enforces pipelining sync points
    input_waiting: bool = False  # the client sent more than the current command line
    encrypted: bool = False  # STARTTLS has been done
    messages: int = 0  # messages accepted in this session
    message_limit: int | None = None  # the virtual server's messages per connection
    binarymime: bool = False  # this transaction's MAIL said BODY=BINARYMIME
    organization_server: bool = False  # the client's address is a server of the organization


@dataclass(frozen=True)
class Verdict:
    """The reply that refuses a command, and whether the session ends with it."""

    reply: str
    closes: bool = False


@dataclass(frozen=True)
class Guard:
    """A refusal that depends on the session rather than on the state alone."""

    name: str
    applies: Callable[[str, str | None, Facts], bool]  # (command, argument, facts)
    reply: str | Callable[[Facts], str]
    closes: bool = False

    def verdict(self, facts: Facts) -> Verdict:
        return Verdict(self.reply if isinstance(self.reply, str) else self.reply(facts), self.closes)


@dataclass(frozen=True)
class Rule:
    accepted: frozenset[State]
    refusals: Mapping[State, str] = field(default_factory=dict)
    sync_point: bool = False
    needs_authentication: bool = False  # on a virtual server without anonymous access
    ehlo_only: str | None = None  # the refusal in a session greeted with HELO: an ESMTP extension's command
    reads_payload: bool = False  # its data follows the command line and is read even when it is refused
    syntax: str = ""  # what HELP <command> shows
    guards: tuple[Guard, ...] = ()  # checked once the state and authentication allow the command

    def refusal(self, state: State, extended: bool = True) -> str | None:
        if state in self.accepted:
            return self.ehlo_only if self.ehlo_only is not None and not extended else None
        return self.refusals.get(state, replies.BAD_SEQUENCE)

    def judge(self, command: str, arg: str | None, facts: Facts) -> Verdict | None:
        """The state's refusal, then authentication, then this command's guards; None: it runs."""
        refusal = self.refusal(facts.state, facts.extended)
        if refusal is not None:
            return Verdict(refusal)
        if self.needs_authentication and not facts.anonymous_allowed and not facts.authenticated:
            return Verdict(replies.NOT_AUTHENTICATED)
        return next((g.verdict(facts) for g in self.guards if g.applies(command, arg, facts)), None)


_BEFORE_HELLO = {State.CONNECTED: replies.SEND_HELLO_FIRST}

TOO_MANY_MESSAGES = Guard(
    "messages per connection",
    lambda command, arg, facts: facts.message_limit is not None and facts.messages >= facts.message_limit,
    replies.TOO_MANY_MESSAGES,
    closes=True,
)
BINARYMIME_NEEDS_BDAT = Guard(
    "BODY=BINARYMIME needs BDAT", lambda command, arg, facts: facts.binarymime, replies.BINARYMIME_NEEDS_BDAT
)
TLS_INSIDE_TLS = Guard(
    "no TLS inside TLS", lambda command, arg, facts: facts.encrypted, replies.TLS_ALREADY_ACTIVE
)

XEXCH50_OUTSIDER = Guard(
    "XEXCH50 from a server of the organization only",
    lambda command, arg, facts: not facts.organization_server,
    replies.XEXCH50_NOT_AUTHORIZED,
)

RULES: Mapping[str, Rule] = {
    "HELO": Rule(ANY, sync_point=True, syntax="HELO <domain>"),
    "EHLO": Rule(ANY, sync_point=True, syntax="EHLO <domain>"),
    "MAIL": Rule(
        frozenset({State.GREETED}),
        {
            **_BEFORE_HELLO,
            State.MAIL: replies.NESTED_MAIL,
            State.RCPT: replies.NESTED_MAIL,
            State.CHUNKING: replies.NESTED_MAIL,
        },
        needs_authentication=True,
        syntax="MAIL FROM:<reverse-path> [SIZE=<n>] [BODY=7BIT|8BITMIME|BINARYMIME] "
        "[RET=FULL|HDRS] [ENVID=<id>]",
        guards=(TOO_MANY_MESSAGES,),
    ),
    "RCPT": Rule(
        frozenset({State.MAIL, State.RCPT}),
        {
            State.CONNECTED: replies.NEED_MAIL,
            State.GREETED: replies.NEED_MAIL,
            State.CHUNKING: replies.BAD_SEQUENCE,
        },
        needs_authentication=True,
        syntax="RCPT TO:<forward-path> [NOTIFY=NEVER|SUCCESS,FAILURE,DELAY] [ORCPT=<type>;<address>]",
    ),
    "DATA": Rule(
        frozenset({State.RCPT}),
        {
            State.CONNECTED: replies.NEED_MAIL,
            State.GREETED: replies.NEED_MAIL,
            State.MAIL: replies.NEED_RCPT,
            State.CHUNKING: replies.DATA_AFTER_BDAT,
        },
        sync_point=True,
        needs_authentication=True,
        syntax="DATA",
        guards=(BINARYMIME_NEEDS_BDAT,),
    ),
    "BDAT": Rule(
        frozenset({State.RCPT, State.CHUNKING}),
        {**_BEFORE_HELLO, State.GREETED: replies.NEED_MAIL, State.MAIL: replies.NEED_RCPT},
        needs_authentication=True,
        ehlo_only=replies.BDAT_NEEDS_EHLO,
        reads_payload=True,
        syntax="BDAT <chunk-size> [LAST]",
    ),
    "RSET": Rule(ANY, syntax="RSET"),
    "NOOP": Rule(ANY, sync_point=True, syntax="NOOP [<string>]"),
    "QUIT": Rule(ANY, syntax="QUIT"),
    "HELP": Rule(ANY, syntax="HELP [<command>]"),
    "VRFY": Rule(ANY, sync_point=True, needs_authentication=True, syntax="VRFY <address>"),
    "EXPN": Rule(ANY, sync_point=True, needs_authentication=True, syntax="EXPN <list>"),
    "STARTTLS": Rule(
        frozenset({State.CONNECTED, State.GREETED}),
        {state: replies.STARTTLS_IN_TRANSACTION for state in TRANSACTION},
        sync_point=True,
        syntax="STARTTLS",
        guards=(TLS_INSIDE_TLS,),
    ),
    # The categorizer's state from the server that sent the message (docs/decisions.md): after the
    # recipients, before the content; its blob follows the 354, so the client waits for that.
    "XEXCH50": Rule(
        frozenset({State.RCPT}),
        {
            **_BEFORE_HELLO,
            State.GREETED: replies.NEED_MAIL,
            State.MAIL: replies.NEED_RCPT,
            State.CHUNKING: replies.BAD_SEQUENCE,
        },
        sync_point=True,
        syntax="XEXCH50 <blob-size> <version>",
        guards=(XEXCH50_OUTSIDER,),
    ),
    "AUTH": Rule(
        frozenset({State.GREETED}),
        {**_BEFORE_HELLO, **{state: replies.AUTH_IN_TRANSACTION for state in TRANSACTION}},
        sync_point=True,
        syntax="AUTH <mechanism> [<initial-response>]",
    ),
    # RFC 1985: outside a transaction; it starts the queue and returns at once, so it may be pipelined.
    "ETRN": Rule(
        frozenset({State.GREETED}),
        _BEFORE_HELLO,
        needs_authentication=True,
        syntax="ETRN <domain>",
    ),
}


# How often a command may be given in one session (aiosmtpd's command_call_limit answers 421 beyond it):
# a client looping on NOOP, RSET or AUTH attempts, or re-greeting forever, is cut off. Transaction
# commands are bounded by the message and recipient limits instead, so their budget is generous.
CALL_LIMITS: Mapping[str, int] = {
    "NOOP": 50,
    "RSET": 100,
    "HELO": 20,
    "EHLO": 20,
    "AUTH": 10,
    "STARTTLS": 5,
    "VRFY": 50,
    "EXPN": 50,
    "HELP": 20,
    "ETRN": 20,
    "*": 1_000_000,
}


def state_of(greeted: bool, has_sender: bool, recipients: int, chunking: bool) -> State:
    if chunking:
        return State.CHUNKING
    if recipients:
        return State.RCPT
    if has_sender:
        return State.MAIL
    return State.GREETED if greeted else State.CONNECTED


# RFC 4954 4: AUTH with an initial response for a mechanism that completes in one exchange may be
# followed by pipelined commands; every other AUTH is a conversation and must end its group.
ONE_STEP_MECHANISMS = frozenset({"PLAIN", "EXTERNAL"})


def is_sync_point(command: str, arg: str | None, pipelining: bool) -> bool:
    """Whether input may not follow `command` before its reply: without PIPELINING every command is
    a sync point, except QUIT (the session is over) and BDAT (its chunk follows by definition)."""
    if command in ("QUIT", "BDAT"):
        return False
    if not pipelining:
        return True
    if command == "AUTH":
        words = (arg or "").split()
        return not (len(words) == 2 and words[0].upper() in ONE_STEP_MECHANISMS)
    rule = RULES.get(command)
    return rule is not None and rule.sync_point


def _sync_violated(command: str, arg: str | None, facts: Facts) -> bool:
    # Input that is already waiting when a sync point is read was sent without waiting for its reply.
    return (
        facts.enforce_sync and facts.input_waiting and is_sync_point(command, arg, pipelining=facts.extended)
    )


# Checked before any command's own rule, in this order.
SESSION_GUARDS: tuple[Guard, ...] = (
    # RFC 5321 3.1: after a 554 greeting the server waits for QUIT, answering 503 to anything else.
    Guard(
        "refused session: QUIT",
        lambda command, arg, facts: facts.refused and command == "QUIT",
        lambda facts: replies.closing(facts.fqdn),
        closes=True,
    ),
    Guard("refused session", lambda command, arg, facts: facts.refused, replies.REFUSED_SESSION),
    Guard("synchronization error", _sync_violated, replies.SYNC_ERROR, closes=True),
)


def judge(command: str, arg: str | None, facts: Facts) -> Verdict | None:
    """How the virtual server answers `command` instead of running it, or None: it runs. A command
    whose payload follows it (BDAT) is judged by its own rule only once the payload is read."""
    for guard in SESSION_GUARDS:
        if guard.applies(command, arg, facts):
            return guard.verdict(facts)
    rule = RULES.get(command)
    if rule is None or rule.reads_payload:
        return None
    return rule.judge(command, arg, facts)


def counts_as_error(reply: str) -> bool:
    """Whether a reply counts against the virtual server's error budget (max_errors). Only the client's
    mistakes count, 5xx: a 4xx is the server's state or a limit the client is told about (452 too many
    recipients), and aiosmtpd's 502 for too many unknown commands closes the session anyway."""
    return reply[:1] == "5" and reply[3:4] == " " and not reply.startswith(replies.CALL_LIMIT_EXCEEDED_PREFIX)


ERROR_BUDGET_SPENT = Verdict(replies.TOO_MANY_ERRORS, closes=True)


def over_error_budget(errors: int, budget: int) -> Verdict | None:
    """After the reply that used up the budget, the session ends."""
    return ERROR_BUDGET_SPENT if errors >= budget else None
