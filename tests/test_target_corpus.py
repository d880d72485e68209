"""The black-box subset of the corpus (the relay and inbound flows) against real MTAs standing in for
EX1: the CI gate for the real-MTA targets.

Every trace a target can run must pass there, or differ from Exchange only by that target's known
deviations (harness/targets/deviations/<target>.yaml), judged exactly as the conformance matrix judges
it. What an MTA does against the RFCs, whatever its configuration, and what Exchange does that the lab
file's rendering cannot give it, is listed below as a strict xfail with the reason: the matrix reports it
as a failure, and the gate notices when it changes either way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import targets
from harness.corpus.trace import load
from harness.judge.deviations import deviations
from harness.reports import matrix
from harness.run.runner import run_trace
from harness.targets import Target

ROOT = Path(__file__).resolve().parents[1]
TRACES = sorted(
    path.relative_to(ROOT / "traces").with_suffix("").as_posix()
    for flow in ("relay", "inbound", "protocol", "outbound")
    for path in (ROOT / "traces" / flow).glob("*.yaml")
)
GATED = [targets.POSTFIX, targets.EXIM, targets.OPENSMTPD]

_EXIM_CONNECTION_CONTROL = (
    "Exim closes the connection right after refusing it with 554 (connect ACL); RFC 5321 3.1 says the "
    "server MUST then wait for QUIT, answering 503 to other commands, as Exchange does"
)
# Exchange behaviour the lab file's rendering gives a real MTA no way to copy (docs/decisions.md, "Group
# restrictions apply before expansion" and "One copy per mailbox"): real differences, kept as failures.
_GROUP_RESTRICTIONS = (
    "{mta} as configured from the lab file expands a distribution group without its delivery restrictions "
    "(who may send to it), so every member gets the message; Exchange refuses the sender before expansion "
    "and returns an NDR with 5.7.1"
)
_ONE_COPY = (
    "{mta} delivers a second copy to a mailbox the message reaches both directly and through a group; "
    "Exchange delivers one copy per mailbox"
)
# docs/decisions.md, "Connector restrictions judge the resolved sender": a real MTA routes by the MAIL
# FROM text and the domain alone.
_CONNECTOR_RESTRICTIONS = (
    "{mta} as configured from the lab file routes by the MAIL FROM text: it cannot tell a sender resolved "
    "in the directory from an anonymous client claiming the address (no counterpart of 'Resolve anonymous "
    "e-mail'), nor choose a connector by priority or leave one out for reports, as Exchange's connector "
    "restrictions do"
)
_RESTRICTION_TRACES = (
    "outbound/connector-restriction-priority",
    "outbound/connector-restriction-spoofed-sender",
    "outbound/decision-resolve-anonymous-email",
)
# OpenSMTPD 6.8 as the lab file renders it (harness/targets/opensmtpd.py): extensions it does not have,
# settings it holds for the whole server where Exchange has them per virtual server, and RFC clauses it
# does not follow.
_OSMTPD_NO_PIPELINING = (
    "OpenSMTPD 6.8 does not offer PIPELINING (RFC 2920 is optional) and ends the session with 500 "
    "'Pipelining not supported' when commands arrive early; the virtual server offers it and no "
    "smtpd.conf setting does"
)
_OSMTPD_NO_CHUNKING = "OpenSMTPD 6.8 has no CHUNKING/BDAT (RFC 3030); the virtual server offers it"
_OSMTPD_NO_SMTPUTF8 = "OpenSMTPD 6.8 has no SMTPUTF8 (RFC 6531); the Directory virtual server offers it"
_OSMTPD_NO_TLS = (
    "no STARTTLS: the Debian build's server-side TLS fails every handshake against OpenSSL 3, so the "
    "adapter renders no certificate (harness/targets/opensmtpd.py); the virtual server offers STARTTLS"
)
_OSMTPD_NO_VRFY = (
    "smtpd does not implement VRFY and answers it 500 'Command unrecognized'; RFC 5321 4.5.1 lists VRFY "
    "in the minimum every receiver MUST provide (3.5.3: 252 when it will not verify)"
)
_OSMTPD_SECOND_HELLO = (
    "smtpd answers a second EHLO or HELO with 503 'Already identified'; RFC 5321 4.1.4 lets a client "
    "send EHLO again (the server resets as for RSET) and allows only 501, 500, 502 or 550 to refuse it"
)
_OSMTPD_PARAMETER_555 = (
    "smtpd refuses a MAIL or RCPT parameter it does not know with 503 5.5.4; RFC 5321 4.1.1.11 says a "
    "server that does not recognize or implement a parameter returns 555"
)
_OSMTPD_DATA_END = (
    "smtpd ends the mail data at a '.' line ended by a bare LF, or at a '.' followed by a NUL, then "
    "answers the rest 500 'Pipelining not supported' and closes; RFC 5321 2.3.8 and 4.1.1.4 end it only "
    "at <CRLF>.<CRLF> (nothing is delivered, so nothing is smuggled either)"
)
_OSMTPD_NOOP_ARGUMENT = (
    "smtpd refuses NOOP with an argument (500 5.5.4 'command does not accept arguments'); RFC 5321 4.1.1.9 "
    "says a server SHOULD ignore NOOP's parameter string"
)
_OSMTPD_GLOBAL_LIMIT = (
    "smtpd's {what} is one setting for the whole server, rendered from the default virtual server; the "
    "Strict virtual server's own {what} cannot be given to its listener"
)
_OPENSMTPD_PROTOCOL = {
    "auth-unknown-mechanism": (
        "smtpd offers AUTH only inside TLS, which this build cannot do (see STARTTLS), so EHLO offers no "
        "AUTH; the virtual server offers Basic authentication in clear"
    ),
    "bdat-size-with-leading-zeros": _OSMTPD_NO_CHUNKING,
    "bdat-syntax-errors": _OSMTPD_NO_CHUNKING,
    "bound-10000-octet-lines": (
        "smtpd closes the connection after '500 5.0.0 Command line too long'; RFC 5321 3.8 lets a server "
        "close only after QUIT or with a 421 reply"
    ),
    "bound-error-limit-closes-session": (
        "a refused relay is '550 Invalid recipient' with no enhanced status code although smtpd offers "
        "ENHANCEDSTATUSCODES (RFC 2034 3), and the Strict virtual server's error limit (5) has no smtpd "
        "setting"
    ),
    "bound-idle-timeout": (
        "the Strict virtual server's 2-second connection time-out has no smtpd.conf setting (smtpd's "
        "session time-out is fixed at 5 minutes)"
    ),
    "bound-messages-per-connection": _OSMTPD_GLOBAL_LIMIT.format(what="limit of messages per connection"),
    "bound-noop-flood": (
        "harness: the NOOP budget is the reference MTA's own rule, in no lab setting and no RFC; smtpd "
        "answers every NOOP 250, as RFC 5321 4.1.1.9 asks"
    ),
    "bound-unknown-commands": (
        "harness: the budget of five unknown commands is the reference MTA's own rule (docs/decisions.md), "
        "in no lab setting and no RFC; smtpd goes on answering 500"
    ),
    "command-line-too-long": _OSMTPD_NOOP_ARGUMENT,
    "delay-notice-to-relayed-sender": (
        "smtpd's delay warning is multipart/mixed, not the RFC 3464 multipart/report delivery status "
        "notification RFC 3461 6 asks for; and the lab settles while the deferred message waits for its "
        "next retry, so its delivery after the fourth 451 is not seen (Postfix and Exim show the same)"
    ),
    "dsn-invalid-parameter-values": (
        "smtpd accepts MAIL with RET=BOGUS (250); RFC 3461 4.3 allows only FULL and HDRS, and RFC 5321 "
        "4.2.2 answers a syntax error in parameters with 501"
    ),
    "ehlo-directory-vs-lists-smtputf8": _OSMTPD_NO_SMTPUTF8,
    "ehlo-mid-transaction-resets": _OSMTPD_SECOND_HELLO,
    "ehlo-refused-keeps-the-transaction": _OSMTPD_SECOND_HELLO,
    "expn-directory-vs-group-members": (
        "smtpd does not implement EXPN (RFC 5321 makes it optional); the Directory virtual server answers "
        "it from the directory and no smtpd.conf setting does"
    ),
    "helo-twice": _OSMTPD_SECOND_HELLO,
    "help-lists-commands": (
        "smtpd refuses HELP with an argument (500 5.5.4); RFC 5321 4.1.1.8 gives HELP an optional argument"
    ),
    "limit-command-line-512-octets": _OSMTPD_NOOP_ARGUMENT,
    "limit-domain-255-octets": (
        "smtpd refuses a sender whose domain is exactly 255 octets (553 5.1.0); RFC 5321 4.5.3.1 says every "
        "implementation MUST receive objects of at least these sizes"
    ),
    "limit-local-part-64-octets": (
        "smtpd accepts a 65-octet local part (RFC 5321 4.5.3.1 lets it), where Exchange refuses it with 501 "
        "5.1.3; the trace's session then diverges (its later MAIL gets 503), so no deviation can carry it"
    ),
    "limit-rcpt-line-with-dsn-parameters": (
        "smtpd refuses an ORCPT it cannot parse with '553 ORCPT address syntax error', no enhanced status "
        "code although it offers ENHANCEDSTATUSCODES (RFC 2034 3); the unknown recipient gets 550 at RCPT"
    ),
    "lowercase-commands": _OSMTPD_NO_PIPELINING,
    "mail-from-without-brackets": (
        "smtpd refuses 'MAIL FROM:address' without angle brackets (553 5.1.0), as RFC 5321 4.1.2's syntax "
        "says; Exchange accepts it, and the trace's session depends on that"
    ),
    "members-only-internet-sender-never-queues": _OSMTPD_NO_VRFY,
    "postmaster-without-domain": _ONE_COPY.format(mta="OpenSMTPD"),
    "rcpt-without-address": (
        "smtpd completes a recipient without a domain with its host name and refuses it as '550 Invalid "
        "recipient' with no enhanced status code although it offers ENHANCEDSTATUSCODES (RFC 2034 3)"
    ),
    "size-declared-too-big": _OSMTPD_GLOBAL_LIMIT.format(what="maximum message size"),
    "size-garbage-value": (
        "smtpd accepts MAIL with SIZE=big (250); RFC 1870 6 defines size-value as 1*20DIGIT, and RFC 5321 "
        "4.2.2 answers a syntax error in parameters with 501"
    ),
    "size-limit-boundary": _OSMTPD_GLOBAL_LIMIT.format(what="maximum message size"),
    "size-undeclared-too-big": _OSMTPD_GLOBAL_LIMIT.format(what="maximum message size"),
    "smuggling-bare-lf": _OSMTPD_DATA_END,
    "smuggling-crlf-dot-lf": _OSMTPD_DATA_END,
    "smuggling-lf-dot-crlf": _OSMTPD_DATA_END,
    "smuggling-nul-dot": _OSMTPD_DATA_END,
    "starttls-in-transaction-refused": _OSMTPD_NO_TLS,
    "starttls-injected-rset-refused": _OSMTPD_NO_TLS,
    "starttls-with-argument": _OSMTPD_NO_TLS,
    "sync-lenient-directory-vs-accepts": _OSMTPD_NO_PIPELINING,
    "sync-pipelined-after-expn": _OSMTPD_NO_PIPELINING,
    "sync-pipelined-after-noop": _OSMTPD_NO_PIPELINING,
    "sync-pipelined-after-vrfy": _OSMTPD_NO_VRFY,
    "unknown-mail-rcpt-parameters": _OSMTPD_PARAMETER_555,
    "utf8-default-vs-refuses": _OSMTPD_PARAMETER_555,
    "utf8-directory-vs-utf8-sender-delivered": _OSMTPD_NO_SMTPUTF8,
    "utf8-relay-to-non-smtputf8-host-ndr": _OSMTPD_NO_SMTPUTF8,
    "utf8-relay-to-smtputf8-host-delivered": _OSMTPD_NO_SMTPUTF8,
    "utf8-sender-to-mailbox-on-ex2": _OSMTPD_NO_SMTPUTF8,
    "vrfy-default-vs-cannot-verify": _OSMTPD_NO_VRFY,
    "vrfy-directory-ldap-metacharacters": _OSMTPD_NO_VRFY,
    "vrfy-directory-vs-known-and-unknown": _OSMTPD_NO_VRFY,
    "vrfy-mid-transaction-leaves-envelope-alone": _OSMTPD_NO_VRFY,
    "vrfy-strict-vs-disabled": f"{_OSMTPD_NO_PIPELINING}; and {_OSMTPD_NO_VRFY}",
}
_EXIM_NO_BINARYMIME = (
    "Exim implements CHUNKING but not BINARYMIME (RFC 3030 3, an optional extension), which "
    "Exchange offers and the trace uses throughout; no Exim setting adds it"
)
_EXIM_ORCPT = (
    "Exim's NDR gives the ORCPT back as it came, still xtext-encoded (j+2Bsmith+3Dsales@...); RFC "
    "3461 6.3 (a) asks for the original recipient address, decoded"
)
_EXIM_PER_COMMAND_LIMIT = (
    "Exchange limits each command a session may send (50 NOOPs, 100 RSETs) and closes with 421 "
    "past the limit; Exim has one limit for all commands that carry no mail "
    "(smtp_accept_max_nonmail, rendered as 100), which lets this flood through, and it would "
    "close with 554 where RFC 5321 3.8 allows only 421"
)
_EXIM_PROTOCOL = {
    "control-character-in-address": (
        "Exim takes a TAB inside a quoted local part ('\"bob<TAB>smith\"@contoso.com') as an address and "
        "accepts the recipient, where RFC 5321 4.1.2 allows no control character even quoted (qtextSMTP "
        "and quoted-pairSMTP are %d32-126); Exchange refuses it with 501 5.1.3"
    ),
    "bdat-chunking-per-virtual-server": (
        "Exim's smtp_accept_max_per_connection counts MAIL commands, refused ones too, where Exchange counts "
        "messages, so the third MAIL of this session on the Strict virtual server (limit 2) gets 421, "
        "and Exim does not close after it (RFC 5321 3.8); no Exim setting counts messages"
    ),
    "limit-domain-255-octets": (
        "Exim refuses a reverse-path with a 255-octet domain (the path is then longer than the 256 octets of "
        "RFC 5321 4.5.3.1.3), which Exchange accepts; every later step of the transaction follows from it"
    ),
    "limit-local-part-64-octets": (
        "Exim takes local parts longer than 64 octets (RFC 5321 4.5.3.1: servers should impose no "
        "limits where they can), which Exchange refuses; every later step and the delivery follow from it"
    ),
    "bdat-binarymime-accepted": _EXIM_NO_BINARYMIME,
    "bdat-binarymime-size-declared-too-big": _EXIM_NO_BINARYMIME,
    "bdat-binarymime-then-data-refused": _EXIM_NO_BINARYMIME,
    "bdat-chunk-larger-than-any-message": (
        "harness: the trace announces a 5,000,000-octet chunk, sends none of it and waits for the "
        "refusal; Exim reads the chunk before it replies, as RFC 3030 2 has BDAT answered after "
        "its data, so the reply never comes"
    ),
    "bdat-in-helo-session": (
        "Exim refuses BDAT after HELO without reading its chunk (CHUNKING was not offered, RFC "
        "3030 2), so the chunk's lines arrive as commands sent without waiting and Exim ends the "
        "session with 554 (synchronization error); Exchange reads and discards the chunk, and the "
        "message sent with DATA is lost"
    ),
    "bdat-mail-mid-chunking": (
        "after MAIL in the middle of a BDAT sequence Exim accepts only RSET and refuses even QUIT "
        "with 503; RFC 5321 4.1.1.10: the receiver MUST send 221 to QUIT"
    ),
    "bdat-syntax-errors": (
        "Exim reads 'BDAT -1' as a chunk of 4294967295 octets and waits for it instead of "
        "refusing the syntax; RFC 3030 2: chunk-size is 1*DIGIT"
    ),
    "bound-10000-octet-lines": (
        "Exim echoes a 10,000-octet address in its 501 reply line; RFC 5321 4.5.3.1.5: a reply "
        "line is at most 512 octets"
    ),
    "bound-auth-brute-force": (
        "Exchange answers the eleventh AUTH of a session with 421 and closes; Exim has no limit "
        "on AUTH commands, and an ACL can answer 421 (defer) without closing or close only after "
        "a 5xx (drop), neither of which RFC 5321 3.8 allows"
    ),
    "bound-messages-per-connection": (
        "Exim answers the MAIL past smtp_accept_max_per_connection with 421 but keeps the "
        "connection open until its time-out; RFC 5321 3.8 and 4.2.2: 421 announces that the "
        "server closes the channel"
    ),
    "bound-noop-flood": _EXIM_PER_COMMAND_LIMIT,
    "bound-rset-flood-pipelined": _EXIM_PER_COMMAND_LIMIT,
    "delay-notice-only-for-notify-delay": (
        "not yet diagnosed: the message deferred four times by nomx-host is neither delivered nor "
        "announced with a delay DSN (RFC 3464) before the lab settles"
    ),
    "delay-notice-to-relayed-sender": (
        "not yet diagnosed: the message deferred four times by nomx-host is neither delivered nor "
        "announced with a delay DSN (RFC 3464) before the lab settles"
    ),
    "dsn-orcpt-and-envid-echoed": (
        "Exim keeps a recipient's ORCPT only when NOTIFY is given too, so this NDR has no "
        "Original-Recipient fields; RFC 3461 6.3 (a): it MUST be given when ORCPT was"
    ),
    "dsn-xtext-orcpt-decoded": _EXIM_ORCPT,
    "ehlo-refused-keeps-the-transaction": (
        "Exim keeps the transaction after refusing a second EHLO but forgets the first EHLO's "
        "name (the Received line has none); RFC 5321 4.1.4: after refusing EHLO the server MUST "
        "stay in the state it was in"
    ),
    "limit-rcpt-line-with-dsn-parameters": _EXIM_ORCPT,
    "starttls-in-transaction-refused": (
        "Exim accepts STARTTLS in the middle of a transaction (220) and drops the transaction, "
        "where Exchange refuses it with 503 and the client goes on in clear; RFC 3207 4 does not "
        "forbid it, but the trace cannot go on once TLS is agreed"
    ),
    "sync-pipelined-after-auth": (
        "Exim does not treat AUTH as a synchronization point (RFC 2920 3.1 does not list it), so "
        "the commands written behind AUTH are read as its dialogue; Exchange refuses them with "
        "554 and the session differs from there"
    ),
    "sync-pipelined-after-ehlo-over-tls": (
        "the session breaks at the TLS layer (wrong version number) when EHLO and a transaction "
        "are written together inside TLS, where Exchange answers 554 (RFC 2920 3.1); not "
        "diagnosed further"
    ),
    "unknown-mail-rcpt-parameters": (
        "Exim refuses an unknown MAIL parameter with 501; RFC 5321 4.1.1.11: a server that does "
        "not recognise a MAIL or RCPT parameter returns 555"
    ),
    "utf8-default-vs-refuses": (
        "Exim refuses MAIL ... SMTPUTF8 where SMTPUTF8 is not offered with 501; RFC 5321 "
        "4.1.1.11: a parameter the server does not implement gets 555"
    ),
    "utf8-directory-vs-utf8-sender-delivered": (
        "Exim takes a non-ASCII sender address in a transaction without SMTPUTF8 (250); RFC 6531 "
        "3.4 allows such addresses only with the SMTPUTF8 parameter, and Exchange refuses it with "
        "553 5.6.7"
    ),
}
# Postfix: what the lab file gives no way to render, what the RFCs do not allow, and where the trace or the
# harness asks what a Maildir-delivering MTA cannot show ("harness:").
_POSTFIX_BINARYMIME = (
    "Postfix does not implement BINARYMIME (RFC 3030 3 makes it optional) and refuses BODY=BINARYMIME with "
    "555 5.5.4; Exchange offers it wherever it offers CHUNKING, and the lab file has no switch for it"
)
_POSTFIX_DSN_LAYOUT = (
    "harness: body_contains asserts Exchange's text of the DSN fields (Original-Recipient before "
    "Final-Recipient, 'rfc822;' without a space), which RFC 3464 2.3 does not fix (its fields are header "
    "fields, read in any order); Postfix writes 'Final-Recipient: rfc822; ADDRESS' first"
)
_POSTFIX_NO_BOUND = (
    "Postfix bounds NOOP, RSET and VRFY together (smtpd_junk_command_limit, then the error limit), not by "
    "Exchange's {count} {verb}s a session, so the next {verb} gets 250, not 421 and the close; the lab file "
    "has no setting for it"
)
_POSTFIX_STARTTLS_INJECTED = (
    "Postfix answers STARTTLS with 220 and discards what was pipelined behind it (RFC 3207 4.2), where "
    "Exchange refuses the group with 554 5.5.0; the step reads the 220 itself, so no deviation can carry the "
    "replay on"
)
_POSTFIX_DELAY = (
    "harness: the lab counts a real MTA settled while a message waits in its deferred queue for a retry due "
    "within the settle time (StandIn.idle has no retry horizon, unlike the reference servers' idle), so the "
    "trace ends after Postfix's first 451 and neither the later delivery nor the delay notice is waited for"
)
_POSTFIX_VRFY_DIRECTORY = (
    "Postfix cannot answer VRFY from the directory (vrfy: directory): it answers 252 2.0.0 for any address, "
    "as RFC 5321 3.5.3 allows, never 250 with the display name or 550 for an unknown one"
)
_POSTFIX_PROTOCOL = {
    "control-character-in-address": (
        "Postfix refuses a NUL in MAIL FROM but accepts an ESC (250 2.1.0), where RFC 5321 4.1.2 allows no "
        "control character in a mailbox; strict_rfc821_envelopes would refuse it, but also the address "
        "without angle brackets that Exchange accepts (protocol/mail-from-without-brackets)"
    ),
    "bdat-binarymime-accepted": _POSTFIX_BINARYMIME,
    "bdat-binarymime-size-declared-too-big": _POSTFIX_BINARYMIME,
    "bdat-binarymime-then-data-refused": _POSTFIX_BINARYMIME,
    "bdat-chunking-per-virtual-server": _POSTFIX_BINARYMIME,
    "bdat-chunk-larger-than-any-message": (
        "Postfix reads the whole 5,000,000-octet chunk before it answers, as RFC 3030 2 asks of a refused "
        "chunk; Exchange answers 552 5.3.4 at once and closes (docs/decisions.md), a bound Postfix has no "
        "setting for"
    ),
    "bdat-in-helo-session": (
        "Postfix takes the chunk sent with BDAT in a HELO session (no PIPELINING offered) for commands sent "
        "ahead and drops the session with 554 5.5.0 (smtpd_forbid_unauth_pipelining), where Exchange refuses "
        "BDAT with 503 5.5.1, discards the chunk and serves the session on; RFC 5321 3.8 lets a server close "
        "only after QUIT or with 421"
    ),
    "bdat-smuggling-bare-cr": (
        "the first message's body as stored differs from the chunk's octets at its bare CRs (Postfix or the "
        "reading of its Maildir, not analysed further); no second transaction is smuggled (SEC-2 holds)"
    ),
    "bdat-smuggling-bare-lf": (
        "harness: a Maildir keeps every line end as LF (maildir(5)) and the harness makes each one CRLF "
        "again, so a bare LF the stored message kept cannot be told from a CRLF and body_contains with a "
        "bare LF cannot hold on an MTA delivering to a Maildir; no second transaction is smuggled (SEC-2 "
        "holds)"
    ),
    "bdat-syntax-errors": (
        "Postfix answers a BDAT line it cannot parse with 521 5.5.4 and closes the connection, where "
        "Exchange answers 501 5.5.4 and goes on; RFC 5321 3.8 lets a server close only after QUIT or with "
        "421, and 521 is the reply of a host that takes no mail (RFC 7504)"
    ),
    "helo-8bit-name-refused": (
        "Postfix refuses the EHLO name that is not UTF-8 with 500 5.5.2 and takes the HELO with a UTF-8 "
        "name, where Exchange refuses both with 501 5.5.4 and the session stays ungreeted (RFC 5321 4.1.1.1 "
        "and 2.3.5: an ASCII domain)"
    ),
    "ehlo-refused-keeps-the-transaction": (
        "Postfix takes an EHLO name with a non-ASCII UTF-8 character and resets the open transaction, where "
        "Exchange refuses the name with 501 5.5.4 and keeps the transaction (RFC 5321 4.1.4); RFC 5321 "
        "4.1.1.1 makes the name an ASCII domain"
    ),
    "bound-auth-brute-force": (
        "Postfix bounds failed AUTH commands only by the session's error limit (smtpd_hard_error_limit, 20), "
        "not by Exchange's bound of 10 attempts, so the session is not closed after the tenth failure; RFC "
        "4954 leaves the bound to the server, and the lab file has no setting for it"
    ),
    "bound-messages-per-connection": (
        "Postfix has no limit of messages per connection (smtpd_client_message_rate_limit counts per client "
        "and time unit across connections), so the Strict virtual server's max_messages_per_connection "
        "cannot be rendered: the third MAIL gets 250, not 421"
    ),
    "bound-noop-flood": _POSTFIX_NO_BOUND.format(count=50, verb="NOOP"),
    "bound-rset-flood-pipelined": _POSTFIX_NO_BOUND.format(count=100, verb="RSET"),
    "bound-unknown-commands": (
        "Postfix has no bound on unknown commands apart from the error limit (20 on this virtual server), so "
        "the fifth unknown verb gets 500 like the others, not Exchange's 502 and the close; the lab file has "
        "no setting for it"
    ),
    "unknown-verbs-and-empty-line": (
        "Postfix takes 'MAILFROM:<...>' for a message header sent as a command and answers 221 2.7.0 'I can "
        "break rules, too' and closes (not configurable), where Exchange answers 500 and serves the session "
        "on; RFC 5321 3.8 lets a server close only after QUIT or with 421"
    ),
    "delay-notice-only-for-notify-delay": _POSTFIX_DELAY,
    "delay-notice-to-relayed-sender": _POSTFIX_DELAY,
    "dsn-orcpt-and-envid-echoed": _POSTFIX_DSN_LAYOUT
    + "; its NDRs also carry no In-Reply-To (a known deviation)",
    "dsn-xtext-orcpt-decoded": _POSTFIX_DSN_LAYOUT,
    "ldap-injection-backslash": _POSTFIX_DSN_LAYOUT,
    "ldap-injection-filter-break": _POSTFIX_DSN_LAYOUT,
    "limit-rcpt-line-with-dsn-parameters": (
        "Postfix takes a RCPT line of 1013 octets (line_length_limit 2048; RFC 5321 4.5.3.1 lets a server "
        "take longer lines), so wraith.long is a recipient and named in the NDR; " + _POSTFIX_DSN_LAYOUT
    ),
    "dsn-ret-returns-headers-only": (
        "Postfix honours RET=FULL and returns the whole message, as RFC 3461 4.3 asks, where Exchange "
        "returns the headers only (docs/decisions.md, 'RET returns headers'); its NDRs also carry no "
        "In-Reply-To, which the outcome uses to tell the two NDRs apart"
    ),
    "expn-directory-vs-group-members": (
        "Postfix does not implement EXPN (500 5.5.2), so the Directory virtual server's expn: directory "
        "cannot be rendered; RFC 5321 3.5.2 makes EXPN optional"
    ),
    "sync-pipelined-after-expn": (
        "Postfix does not implement EXPN, so EXPN is an unknown command (500 5.5.2), not the synchronization "
        "point after which Exchange refuses the commands sent ahead with 554 5.5.0"
    ),
    "sync-pipelined-after-auth": (
        "Postfix reads the command sent behind AUTH PLAIN's empty initial response as the SASL response "
        "(535, RFC 4954 4 makes AUTH the last command of a group) and serves the rest of the group with 503, "
        "where Exchange refuses the group with 554 5.5.0 and closes"
    ),
    "limit-local-part-64-octets": (
        "Postfix takes a local part longer than 64 octets (RFC 5321 4.5.3.1 lets a server take longer "
        "objects) where Exchange refuses it with 501 5.1.3, so the trace's later replies, which follow from "
        "the refusal, differ too"
    ),
    "postmaster-without-domain": _ONE_COPY.format(mta="Postfix"),
    "starttls-in-transaction-refused": (
        "Postfix accepts STARTTLS in an open transaction (220) and resets it, as RFC 3207 4.2 allows, where "
        "Exchange refuses it with 503; the step reads the 220 itself, so no deviation can carry the replay "
        "on"
    ),
    "starttls-injected-rset-refused": _POSTFIX_STARTTLS_INJECTED,
    "starttls-injected-transaction-not-delivered": _POSTFIX_STARTTLS_INJECTED,
    "vrfy-directory-ldap-metacharacters": _POSTFIX_VRFY_DIRECTORY,
    "vrfy-directory-vs-known-and-unknown": _POSTFIX_VRFY_DIRECTORY,
    "vrfy-mid-transaction-leaves-envelope-alone": _POSTFIX_VRFY_DIRECTORY,
}
KNOWN_FAILURES = {
    ("postfix", "inbound/decision-group-restrictions-before-expansion"): _GROUP_RESTRICTIONS.format(
        mta="Postfix"
    ),
    ("exim", "inbound/decision-group-restrictions-before-expansion"): _GROUP_RESTRICTIONS.format(mta="Exim"),
    ("opensmtpd", "inbound/decision-group-restrictions-before-expansion"): _GROUP_RESTRICTIONS.format(
        mta="OpenSMTPD"
    ),
    ("postfix", "inbound/decision-one-copy-per-mailbox"): _ONE_COPY.format(mta="Postfix"),
    ("opensmtpd", "inbound/decision-one-copy-per-mailbox"): _ONE_COPY.format(mta="OpenSMTPD"),
    ("exim", "relay/access-restricted-vs-refuses-attacker"): _EXIM_CONNECTION_CONTROL,
    ("exim", "relay/access-refused-client-pipelined-transaction-ignored"): _EXIM_CONNECTION_CONTROL,
    ("opensmtpd", "relay/access-refused-client-pipelined-transaction-ignored"): (
        "smtpd answers commands sent before its greeting with 500, not the 503 RFC 5321 3.1 asks for after "
        "a 554 greeting (nothing is queued either way)"
    ),
    ("opensmtpd", "inbound/notify-never-no-ndr"): (
        "smtpd carries NOTIFY=NEVER from one RCPT over to the next and refuses the next recipient's "
        "NOTIFY=FAILURE with 553 'NOTIFY option NEVER cannot be combined with other options' (RFC 3461 4.1: "
        "NOTIFY is per recipient)"
    ),
    **{("postfix", trace): _CONNECTOR_RESTRICTIONS.format(mta="Postfix") for trace in _RESTRICTION_TRACES},
    **{("exim", trace): _CONNECTOR_RESTRICTIONS.format(mta="Exim") for trace in _RESTRICTION_TRACES},
    ("opensmtpd", "outbound/decision-resolve-anonymous-email"): _CONNECTOR_RESTRICTIONS.format(
        mta="OpenSMTPD"
    ),
    # OpenSMTPD: protocol and outbound
    **{("opensmtpd", f"protocol/{trace}"): reason for trace, reason in _OPENSMTPD_PROTOCOL.items()},
    # Exim: protocol and outbound
    **{("exim", f"protocol/{trace}"): reason for trace, reason in _EXIM_PROTOCOL.items()},
    # Postfix: protocol and outbound
    **{("postfix", f"protocol/{name}"): reason for name, reason in _POSTFIX_PROTOCOL.items()},
}


def cases() -> list[object]:
    params: list[object] = []
    for target in GATED:
        for trace_id in TRACES:
            reason = KNOWN_FAILURES.get((target.name, trace_id))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(target, trace_id, marks=marks, id=f"{target.name}:{trace_id}"))
    return params


@pytest.mark.parametrize(("target", "trace_id"), cases())
def test_a_real_mta_conforms_or_deviates_only_as_documented(target: Target, trace_id: str) -> None:
    if (why := target.unavailable()) is not None:
        pytest.skip(why)
    trace = load(ROOT / "traces" / f"{trace_id}.yaml")
    if missing := target.missing(trace):
        pytest.skip(f"target {target.name} lacks {', '.join(missing)}")
    result = run_trace(trace, target)
    found = matrix.verdict(result.as_outcome(), deviations(target.name))
    assert found.status != "fail", "\n".join(result.failures())
