"""Catalogue of the SMTP replies an Exchange 2003 virtual server gives (IIS 6 SMTP service texts).

One place for every reply text, as aiosmtpd keeps its status codes: the virtual server refers to these
names, and the translation table maps aiosmtpd's own built-in texts onto Exchange's wording so that a
trace recorded against Exchange replays against the reference MTA.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

SERVICE_VERSION = "6.0.3790.3959"


# Enhanced status codes (RFC 3463) that stand on their own: a recipient that waited too long, a next
# hop that cannot be found, and the status of a notice about a recipient that carries none of its own.
DELIVERY_TIME_EXPIRED = "4.4.7"
ROUTING_FAILURE = "5.4.0"
UNDEFINED_FAILURE = "5.0.0"


@dataclass(frozen=True)
class Reply:
    """One reply with its enhanced status code (RFC 3463) written once: the same record gives the line
    on the wire ("550 5.1.1 text"), the recipient's status string an NDR quotes as its Diagnostic-Code,
    and the Status field of the NDR."""

    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


def banner(fqdn: str) -> str:
    # Exchange puts two spaces after "at"; recorded traces depend on it.
    return f"Microsoft ESMTP MAIL Service, Version: {SERVICE_VERSION} ready at  {email.utils.formatdate()}"


def ehlo_lines(
    fqdn: str,
    client_ip: str,
    size_limit: int,
    auth: bool,
    starttls: bool = False,
    chunking: bool = True,
    vrfy: bool = True,
    smtputf8: bool = False,
    xexch50: bool = False,
    etrn: bool = False,
) -> list[str]:
    """The EHLO keywords, in Exchange's order, less what the reference MTA does not implement (TURN,
    ATRN, X-EXPS, X-LINK2STATE; see docs/decisions.md) and what the virtual server's settings turn
    off; ETRN only where a link queue waits for it. XEXCH50 is offered to the organization's own
    servers only."""
    keywords = [f"{fqdn} Hello [{client_ip}]", f"SIZE {size_limit}" if size_limit else "SIZE"]
    if etrn:
        keywords.append("ETRN")
    keywords += ["PIPELINING", "DSN", "ENHANCEDSTATUSCODES", "8bitmime"]
    if chunking:
        keywords += ["BINARYMIME", "CHUNKING"]
    if vrfy:
        keywords.append("VRFY")
    if smtputf8:
        keywords.append("SMTPUTF8")
    if starttls:
        keywords.append("STARTTLS")
    if auth:
        keywords += ["AUTH LOGIN PLAIN", "AUTH=LOGIN"]
    if xexch50:
        keywords.append("XEXCH50")
    keywords.append("OK")
    return [f"250-{k}" for k in keywords[:-1]] + [f"250 {keywords[-1]}"]


def continues(line: str) -> bool:
    """Whether a reply line is followed by more lines of the same reply (RFC 5321 4.2.1: "250-")."""
    return len(line) > 3 and line[:3].isdigit() and line[3] == "-"


def helo(fqdn: str, client_ip: str) -> str:
    return f"250 {fqdn} Hello [{client_ip}]"


def sender_ok(address: str) -> str:
    return f"250 2.1.0 {address}....Sender OK"


def recipient_ok(address: str) -> str:
    return f"250 2.1.5 {address}"


START_MAIL_INPUT = "354 Start mail input; end with <CRLF>.<CRLF>"


def queued(message_id: str) -> str:
    return f"250 2.6.0 <{message_id}> Queued mail for delivery"


def closing(fqdn: str) -> str:
    return f"221 2.0.0 {fqdn} Service closing transmission channel"


def unable_to_relay(address: str) -> str:
    return f"550 5.7.1 Unable to relay for {address}"


MAILBOX_NOT_AVAILABLE = "550 5.7.1 Requested action not taken: mailbox not available"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
NOT_AUTHENTICATED = "530 5.7.3 Client was not authenticated"
NEED_MAIL = "503 5.5.2 Need mail command"
NEED_RCPT = "503 5.5.2 Need Rcpt command."
NESTED_MAIL = "503 5.5.2 Sender already specified"
INVALID_ADDRESS = "501 5.5.4 Invalid Address"
# A control character in an address (NUL, TAB, ESC, DEL ...): RFC 3463's codes for a sender's and a
# recipient's address syntax, as Exchange gives them from 2007 on (2003 says 5.5.4 for any bad argument).
SENDER_SYNTAX = "501 5.1.7 Invalid address: control character in the sender's address"
RECIPIENT_SYNTAX = "501 5.1.3 Invalid address: control character in the recipient's address"
INVALID_DOMAIN = "501 5.5.4 Invalid domain name"
HELP_TOPIC_UNKNOWN = "504 5.5.1 HELP topic not known"
PROCESSING_ERROR = "451 4.3.0 Error processing the command; try again later"
UNRECOGNIZED = "500 5.3.3 Unrecognized command"
QUEUE_FAILURE = "451 4.3.0 Error queueing message, please retry"
AUTH_OK = "235 2.7.0 Authentication successful."
RESETTING = "250 2.0.0 Resetting"
NOOP_OK = "250 2.0.0 OK"
READY_FOR_TLS = "220 2.0.0 SMTP server ready"
TLS_REQUIRED_FOR_AUTH = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_FAILED = "535 5.7.3 Authentication unsuccessful."
AUTH_TEMPORARY_FAILURE = "454 4.7.0 Temporary authentication failure"
SEND_HELLO_FIRST = "503 5.5.2 Send hello first"
BAD_SEQUENCE = "503 5.5.1 Bad sequence of commands"
DATA_AFTER_BDAT = "503 5.5.1 DATA cannot be mixed with BDAT in one transaction"
BINARYMIME_NEEDS_BDAT = "503 5.5.1 BODY=BINARYMIME requires BDAT"
TLS_ALREADY_ACTIVE = "503 5.5.1 TLS already active"
DSN_PARAMETER_INVALID = "501 5.5.4 Invalid DSN parameter (RFC 3461)"
STARTTLS_IN_TRANSACTION = "503 5.5.1 STARTTLS not permitted during a mail transaction"
AUTH_IN_TRANSACTION = "503 5.5.1 AUTH not permitted during a mail transaction"
ALREADY_AUTHENTICATED = "503 5.5.1 Already authenticated"
BDAT_SYNTAX = "501 5.5.4 Syntax: BDAT <chunk-size> [LAST]"
BDAT_NEEDS_EHLO = "503 5.5.1 BDAT requires an EHLO session"
CHUNK_TOO_BIG = "552 5.3.4 Chunk larger than the maximum message size; closing transmission channel"
SYNC_ERROR = "554 5.5.0 SMTP synchronization error: command sent before the previous reply"
REFUSED_SESSION = "503 5.5.1 Access denied: only QUIT is served"
CONNECTION_REFUSED = "554 5.7.1 Access denied: this computer may not connect"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors on this connection, closing transmission channel"
TOO_MANY_MESSAGES = "421 4.7.0 Too many messages on this connection, closing transmission channel"
LINE_TOO_LONG = "500 5.5.6 Line too long (RFC 5321 4.5.3.1.6); message discarded"
COMMAND_TOO_LONG = "500 5.5.6 Command line too long"
ADDRESS_TOO_LONG = "501 5.1.3 Address too long (RFC 5321 4.5.3.1: local part 64, domain 255 octets)"
NON_ASCII_ADDRESS = "553 5.6.7 Non-ASCII addresses require SMTPUTF8"
PARAMETER_NOT_RECOGNIZED = "555 5.5.4 Parameter not recognized or not implemented"
# XEXCH50, the categorizer's state from another Exchange server (docs/decisions.md). Exchange's own texts,
# without enhanced codes, as Exchange 2003 writes them.
XEXCH50_SEND_DATA = "354 Send binary data"
XEXCH50_OK = "250 XEXCH50 OK"
XEXCH50_NOT_AUTHORIZED = "504 Need to authenticate first"
XEXCH50_SYNTAX = "501 5.5.4 Syntax: XEXCH50 <blob-size> <version>"
XEXCH50_TOO_BIG = "552 5.3.4 XEXCH50 data too large; closing transmission channel"


def xexch50_unreadable(reason: str) -> str:
    return f"501 5.5.4 XEXCH50 data unreadable: {reason}"


BODY_UNKNOWN = "501 5.5.4 Unknown BODY type"
NOT_IMPLEMENTED = "502 5.3.3 Command not implemented"
VRFY_SYNTAX = "501 5.5.4 Syntax: VRFY <address>"
EXPN_SYNTAX = "501 5.5.4 Syntax: EXPN <list>"
NOT_A_GROUP = "550 5.1.1 Not a distribution list"
USER_UNKNOWN = "550 5.1.1 User unknown"
DIRECTORY_UNAVAILABLE = "451 4.4.3 Directory unavailable, try again later"


# aiosmtpd's own reply to a client that sent too many unknown commands; it closes the session itself.
CALL_LIMIT_EXCEEDED_PREFIX = "502 5.5.1 Too many"


def verified(listing: str) -> str:
    return f"250 2.1.5 {listing}"


def group_without_members(listing: str) -> str:
    return f"250 2.1.5 {listing} has no members"


def group_members(members: list[str]) -> list[str]:
    """EXPN's answer: one line per member (a multiline 250)."""
    return [f"250-2.1.5 {member}" for member in members[:-1]] + [f"250 2.1.5 {members[-1]}"]


def help_commands(offered: list[str]) -> list[str]:
    return ["214-2.0.0 This server supports the following commands:", f"214 2.0.0 {' '.join(offered)}"]


def help_syntax(syntax: str) -> str:
    return f"214 2.0.0 Syntax: {syntax}"


def cannot_verify(address: str) -> str:
    return f"252 2.1.5 Cannot VRFY user, but will take message for <{address}>"


# ETRN (RFC 1985 5): the node's queue started, nothing waiting for it, or not a node kept here.
ETRN_SYNTAX = "501 5.5.4 Syntax: ETRN <domain>"


def etrn_started(domain: str) -> str:
    return f"250 2.0.0 Queuing for node {domain} started"


def etrn_nothing_waiting(domain: str) -> str:
    return f"251 2.0.0 OK, no messages waiting for node {domain}"


def etrn_not_a_queue(node: str) -> str:
    # "#queue" names a queue rather than a domain (RFC 1985 5.3); only domains are kept for ETRN.
    return f"458 4.0.0 Unable to queue messages for node {node}"


def etrn_not_allowed(domain: str) -> str:
    return f"459 4.7.1 Node {domain} not allowed: no mail is queued here for remote triggered delivery to it"


def chunk_received(size: int) -> str:
    return f"250 2.0.0 {size} octets received"


def timed_out(fqdn: str) -> str:
    return f"421 4.4.2 {fqdn} Connection timed out, closing transmission channel"


# aiosmtpd's built-in texts → Exchange's. Matched on the start of the line; the reply becomes the
# replacement, expanded with the pattern's groups.
_TRANSLATIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^354 End data with"), START_MAIL_INPUT),
    (re.compile(r"^503 Error: need MAIL command"), NEED_MAIL),
    (re.compile(r"^503 Error: need RCPT command"), NEED_RCPT),
    (re.compile(r"^503 Error: nested MAIL command"), NESTED_MAIL),
    (re.compile(r"^500 Error: command .* not recognized"), UNRECOGNIZED),
    (re.compile(r"^500 Error: bad syntax"), UNRECOGNIZED),
    (re.compile(r"^553 5\.1\.3 Error: malformed address"), INVALID_ADDRESS),
    (re.compile(r"^552 Error: message size exceeds"), TOO_BIG),
    (re.compile(r"^552 Error: Too much mail data"), TOO_BIG),
    (re.compile(r"^235 2\.7\.0 Authentication successful"), AUTH_OK),
    (re.compile(r"^220 Ready to start TLS"), READY_FOR_TLS),
    (re.compile(r"^535 5\.7\.8 Authentication credentials invalid"), AUTH_FAILED),
    (re.compile(r"^530 5\.7\.0 Authentication required"), NOT_AUTHENTICATED),
    (re.compile(r"^503 Error: send HELO first"), SEND_HELLO_FIRST),
    (re.compile(r"^503 Error: send EHLO first"), SEND_HELLO_FIRST),
    (re.compile(r"^503 Already authenticated"), ALREADY_AUTHENTICATED),
    (re.compile(r"^500 Line too long"), LINE_TOO_LONG),
    (re.compile(r"^500 Command line too long"), COMMAND_TOO_LONG),
    (re.compile(r"^555 .*parameters not recognized.*"), PARAMETER_NOT_RECOGNIZED),
    # aiosmtpd's replies without an enhanced status code, although ENHANCEDSTATUSCODES is advertised
    # (RFC 2034: then every reply carries one).
    (re.compile(r"^501 Syntax: (.*)"), r"501 5.5.4 Syntax: \1"),
    (re.compile(r"^501 Error: BODY can only be one of 7BIT, 8BITMIME.*"), BODY_UNKNOWN),
    (re.compile(r"^501 Error: SMTPUTF8 takes no arguments.*"), "501 5.5.4 SMTPUTF8 takes no arguments"),
    (re.compile(r"^501 Not enough value.*"), "501 5.5.4 Not enough values"),
    (re.compile(r"^501 Too many values.*"), "501 5.5.4 Too many values"),
    (re.compile(r"^454 TLS not available.*"), "454 4.7.0 TLS not available"),
)


def translate(status: str) -> str:
    for pattern, replacement in _TRANSLATIONS:
        match = pattern.match(status)
        if match is not None:
            return match.expand(replacement)
    return status


# --- non-delivery: the status each failed recipient carries into its NDR ---------------------------
# Categorizer (KB 233363's order of checks).


def hop_count_exceeded(hops: int, limit: int) -> Reply:
    # Section 8 of the reference: 4.4.6 for the maximum hop count; 5.4.6 is the categorizer's own loop.
    return Reply(554, "4.4.6", f"Hop count exceeded ({hops} > {limit}): possible mail loop")


def over_sender_size_limit(size: int, limit_kb: str) -> Reply:
    return Reply(552, "5.2.3", f"Message of {size} bytes exceeds the sender's limit of {limit_kb} KB")


def over_sender_recipient_limit(count: int, limit: str) -> Reply:
    return Reply(550, "5.5.3", f"{count} recipients exceed the sender's limit of {limit}")


def user_unknown(address: str) -> Reply:
    return Reply(550, "5.1.1", f"User unknown: {address}")


def ambiguous_address(address: str) -> Reply:
    return Reply(550, "5.1.4", f"Ambiguous address: {address}")


def no_mailbox(address: str) -> Reply:
    return Reply(550, "5.1.0", f"Recipient has no mailbox: {address}")


def home_server_not_found(address: str) -> Reply:
    return Reply(550, "5.1.0", f"Home server of {address} not found")


def expansion_server_not_found(address: str) -> Reply:
    return Reply(550, "5.1.0", f"Expansion server of {address} not found")


def forwarding_loop(address: str) -> Reply:
    return Reply(554, "5.4.6", f"Forwarding loop at {address}")


def over_recipient_size_limit(size: int, limit_kb: str, address: str) -> Reply:
    return Reply(552, "5.2.3", f"Message of {size} bytes exceeds the {limit_kb} KB limit of {address}")


def authenticated_senders_only(address: str) -> Reply:
    return Reply(550, "5.7.1", f"{address} accepts mail from authenticated users only")


def sender_not_allowed(address: str) -> Reply:
    return Reply(550, "5.7.1", f"Sender is not allowed to send to {address}")


def sender_rejected(address: str) -> Reply:
    return Reply(550, "5.7.1", f"Sender is rejected by {address}")


# Queuing, routing, store and outbound SMTP.


def no_route(detail: str) -> Reply:
    return Reply(550, "5.0.0", f"No route for the address space ({detail})")


def expired(enhanced: str, queue: str, error: str) -> Reply:
    # The server's own record of why it gave up (tracking); its code's class is the enhanced code's. The
    # DSN quotes no such reply: its Diagnostic-Code is only ever a next hop's.
    return Reply(
        451 if enhanced.startswith("4") else 550, enhanced, f"Message expired in queue {queue}: {error}"
    )


def store_not_on_this_server(address: str) -> Reply:
    return Reply(550, "5.2.1", f"Mailbox store of {address} is not on this server")


def unresolvable(detail: str) -> Reply:
    return Reply(550, ROUTING_FAILURE, detail)


def looping_condition(targets: str) -> Reply:
    # Exchange's "looping condition" NDR: the next hop is this very server.
    return Reply(554, "5.4.8", f"Looping condition: {targets} is this server")


def no_smtputf8(host: str) -> Reply:
    # RFC 6531 3.4: non-ASCII envelope addresses cannot be downgraded.
    return Reply(550, "5.6.7", f"{host} does not offer SMTPUTF8; non-ASCII addresses cannot go there")


# Transient delivery errors: why a message waits for its next attempt (queue state, tracking detail,
# and the text of an expiry NDR); the enhanced code says which kind.


def dns_trouble(detail: str) -> str:
    return f"4.4.9 {detail}"


def connection_trouble(detail: str) -> str:
    return f"4.4.1 {detail}"


def enhanced_code_of(text: str, default: str = UNDEFINED_FAILURE) -> str:
    """The enhanced status code a next hop's reply text starts with, or `default` if it has none."""
    first = text.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return first
    return default


# --- the NDR's human-readable part, in Exchange's wording --------------------------------------------

NDR_INTRODUCTION = "Your message did not reach some or all of the intended recipients."
DELAY_INTRODUCTION = "Delivery to the following recipients has been delayed; the server will keep trying."
NDR_RECIPIENTS_HEADING = "The following recipient(s) could not be reached:"
# What the NDR says under a recipient, by the recipient's enhanced code.
NDR_EXPLANATIONS = {
    "5.1.1": "The e-mail account does not exist at the organization this message was sent to. Check the "
    "e-mail address, or contact the recipient directly to find out the correct address.",
}


def dsn_subject(delayed: bool) -> str:
    return f"Delivery Status Notification ({'Delay' if delayed else 'Failure'})"


# --- the gateway's non-delivery memo to a foreign system (its own format, not an SMTP reply) --------


def gateway_failure_subject(subject: str) -> str:
    return f"DELIVERY FAILURE: {subject}"


def gateway_failure_body(unmapped: list[str]) -> str:
    return (
        "Your message could not be delivered to:\n"
        + "\n".join(f"  {name}: no such recipient" for name in unmapped)
        + "\n"
    )
