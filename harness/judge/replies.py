"""A reply against an `expect` step's matcher, as failure records: one for each field of the matcher
that does not hold, in the order harness/smtp/reply.py checks them. The matcher keeps its own
sentences for the callers that want text only; the verdicts read these records."""

from __future__ import annotations

import re

from harness.judge.records import Failure, Kind
from harness.smtp.reply import Reply, ReplyMatcher

_LEADING_CODE = re.compile(r"^\^?(\d{3})")


def expected_code(matcher: ReplyMatcher) -> int | None:
    """The three-digit code the matcher asks for, where it names one (in `code`, or at the start of its
    prefix or regex)."""
    if matcher.code is not None:
        return matcher.code
    for written in (matcher.prefix, matcher.regex.pattern if matcher.regex is not None else None):
        found = _LEADING_CODE.match(written or "")
        if found:
            return int(found[1])
    return None


def same_code(matcher: ReplyMatcher, reply: Reply) -> bool:
    """Whether the reply carries the code the step expects: the code it names, or a code of the class it
    names. A step that names neither has no code to agree with."""
    wanted = expected_code(matcher)
    if wanted is not None:
        return reply.code == wanted
    return matcher.reply_class is not None and reply.code // 100 == matcher.reply_class


def reply_failures(matcher: ReplyMatcher, reply: Reply, masked: str | None = None) -> list[Failure]:
    """Every field of `matcher` that `reply` does not satisfy (empty when it matches). `masked` is the
    reply as the trace's normalizer masks it (for a `masked` expectation)."""
    agree = same_code(matcher, reply)
    found: list[Failure] = []

    def differs(kind: Kind, expected: object, actual: object) -> None:
        found.append(Failure(kind, str(expected), str(actual), same_code=agree))

    if matcher.masked is not None:
        seen = masked if masked is not None else reply.raw_text
        if seen != matcher.masked:
            differs(Kind.MASKED, matcher.masked, seen)
    if matcher.code is not None and reply.code != matcher.code:
        differs(Kind.CODE, matcher.code, reply.code)
    if matcher.reply_class is not None and reply.code // 100 != matcher.reply_class:
        differs(Kind.CLASS, f"{matcher.reply_class}xx", reply.code)
    if matcher.enhanced is not None and reply.enhanced != matcher.enhanced:
        differs(Kind.ENHANCED, matcher.enhanced, reply.enhanced or "")
    if matcher.text is not None and reply.text != matcher.text:
        differs(Kind.TEXT, matcher.text, reply.text)
    if matcher.prefix is not None and not reply.first.startswith(matcher.prefix):
        differs(Kind.PREFIX, matcher.prefix, reply.first)
    if matcher.regex is not None and not matcher.regex.search(reply.raw_text):
        differs(Kind.REGEX, matcher.regex.pattern, reply.raw_text)
    if matcher.contains is not None and matcher.contains not in reply.raw_text:
        differs(Kind.CONTAINS, matcher.contains, reply.raw_text)
    if matcher.lines is not None and len(reply.lines) != matcher.lines:
        differs(Kind.LINES, matcher.lines, len(reply.lines))
    return found
