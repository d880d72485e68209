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
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
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
class Rule:
    accepted: frozenset[State]
    refusals: Mapping[State, str] = field(default_factory=dict)
    sync_point: bool = False
    needs_authentication: bool = False  # on a virtual server without anonymous access
    ehlo_only: str | None = None  # the refusal in a session greeted with HELO: an ESMTP extension's command
    reads_payload: bool = False  # its data follows the command line and is read even when it is refused
    syntax: str = ""  # what HELP <command> shows

    def refusal(self, state: State, extended: bool = True) -> str | None:
        if state in self.accepted:
            return self.ehlo_only if self.ehlo_only is not None and not extended else None
        return self.refusals.get(state, replies.BAD_SEQUENCE)


_BEFORE_HELLO = {State.CONNECTED: replies.SEND_HELLO_FIRST}

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
    ),
    "AUTH": Rule(
        frozenset({State.GREETED}),
        {**_BEFORE_HELLO, **{state: replies.AUTH_IN_TRANSACTION for state in TRANSACTION}},
        sync_point=True,
        syntax="AUTH <mechanism> [<initial-response>]",
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
