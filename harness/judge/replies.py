"""A reply against an `expect` step's matcher, as failure records: one for each field of the matcher
that does not hold, in the order harness/smtp/reply.py checks them. The matcher keeps its own
sentences for the callers that want text only; the verdicts read these records."""

from __future__ import annotations

import dataclasses

from harness.judge.records import Failure, Kind
from harness.smtp.reply import Reply, ReplyMatcher


def expected_code(matcher: ReplyMatcher) -> int | None:
    """The three-digit code the matcher asks for, where it names one (in `code`, or at the start of its
    prefix, regex or masked reply)."""
    return matcher.behaviour().code


def same_code(matcher: ReplyMatcher, reply: Reply) -> bool:
    """Whether the reply carries the code the step expects: the code it names, or a code of the class it
    names. A step that names neither has no code to agree with."""
    wanted = expected_code(matcher)
    if wanted is not None:
        return reply.code == wanted
    return matcher.reply_class is not None and reply.code // 100 == matcher.reply_class


def judged(matcher: ReplyMatcher, reply: Reply, *, wording: bool, enhanced_offered: bool) -> ReplyMatcher:
    """What of `matcher` is judged for `reply`. With `wording`, all of it, as written. Without, its
    behaviour layer (`ReplyMatcher.behaviour`), and of that the enhanced status code only where the
    server offered ENHANCEDSTATUSCODES in this session (RFC 2034 section 3 binds only a server that
    offers it) and the reply is of the class the step expects: a refusal where a success is expected
    is one difference, its code's, not two."""
    if wording:
        return matcher
    layer = matcher.behaviour()
    wanted = layer.code // 100 if layer.code is not None else layer.reply_class
    if not enhanced_offered or (wanted is not None and reply.code // 100 != wanted):
        return dataclasses.replace(layer, enhanced=None)
    return layer


def _enhanced_differs(expected: str, actual: str | None, *, wording: bool) -> bool:
    """Whether the reply's enhanced status code differs from the expected one. In the behaviour layer a
    success is compared by its class alone: RFC 3463 gives a success's subject and detail no meaning a
    client acts on (Postfix queues a message with 2.0.0, Exchange with 2.6.0)."""
    if not wording and expected.startswith("2.") and actual is not None:
        return not actual.startswith("2.")
    return actual != expected


def reply_failures(
    matcher: ReplyMatcher,
    reply: Reply,
    masked: str | None = None,
    *,
    wording: bool = True,
    enhanced_offered: bool = True,
) -> list[Failure]:
    """Every field of `matcher` that `reply` does not satisfy (empty when it matches), of the layers
    judged (`judged`). `masked` is the reply as the trace's normalizer masks it (for a `masked`
    expectation)."""
    agree = same_code(matcher, reply)
    matcher = judged(matcher, reply, wording=wording, enhanced_offered=enhanced_offered)
    found: list[Failure] = []

    def differs(kind: Kind, expected: object, actual: object) -> None:
        found.append(Failure(kind, str(expected), str(actual), same_code=agree))

    if matcher.code is not None and reply.code != matcher.code:
        differs(Kind.CODE, matcher.code, reply.code)
    if matcher.reply_class is not None and reply.code // 100 != matcher.reply_class:
        differs(Kind.CLASS, f"{matcher.reply_class}xx", reply.code)
    if matcher.enhanced is not None and _enhanced_differs(matcher.enhanced, reply.enhanced, wording=wording):
        differs(Kind.ENHANCED, matcher.enhanced, reply.enhanced or "")
    for keyword in matcher.missing_keywords(reply):
        differs(Kind.OFFERS, keyword, "")
    for keyword in matcher.unwanted_keywords(reply):
        differs(Kind.LACKS, keyword, "")
    for kind, expected, actual in _wording_differences(matcher, reply, masked):
        differs(kind, expected, actual)
    return found


def _wording_differences(
    matcher: ReplyMatcher, reply: Reply, masked: str | None
) -> list[tuple[Kind, object, object]]:
    """The wording layer's differences: kind, expected, actual."""
    found: list[tuple[Kind, object, object]] = []
    if matcher.masked is not None:
        seen = masked if masked is not None else reply.raw_text
        if seen != matcher.masked:
            found.append((Kind.MASKED, matcher.masked, seen))
    if matcher.text is not None and reply.text != matcher.text:
        found.append((Kind.TEXT, matcher.text, reply.text))
    if matcher.prefix is not None and not reply.first.startswith(matcher.prefix):
        found.append((Kind.PREFIX, matcher.prefix, reply.first))
    if matcher.regex is not None and not matcher.regex.search(reply.raw_text):
        found.append((Kind.REGEX, matcher.regex.pattern, reply.raw_text))
    if matcher.contains is not None and matcher.contains not in reply.raw_text:
        found.append((Kind.CONTAINS, matcher.contains, reply.raw_text))
    if matcher.lines is not None and len(reply.lines) != matcher.lines:
        found.append((Kind.LINES, matcher.lines, len(reply.lines)))
    return found
