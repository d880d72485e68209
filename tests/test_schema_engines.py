"""The fast schema check (jsonschema-rs) must never pass what jsonschema refuses: a file it finds valid
is not checked again, so a pattern the two engines read differently would let a mistake through with no
error naming its line. Every pattern of every shipped schema is tried on strings where regex dialects
part: line ends, Unicode spaces and separators, control characters, non-ASCII letters."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import jsonschema_rs
import pytest

PROBES = [
    "",
    "a",
    "EX1",
    "250",
    "250 ok",
    "250 ok\n",
    "250 ok\r\n",
    "250\n",
    "450 4.7.1 x",
    "SIZE 1000",
    "SIZE a\x85b",
    "SIZE \x1c",
    "SIZE \x1f",
    "SIZE \u00a0",
    "SIZE \u2028",
    "SIZE \u3000",
    "SIZE ä",
    "AUTH LOGIN PLAIN",
    "8BITMIME ",
    " SIZE",
    "ümlaut",
    "contoso.com",
    "*.contoso.com",
    "a..b",
    "contoso.com.",
    "x" * 254,
    "12:30",
    "24:00",
    "127.0.0.1:25",
    "RELAY-1",
    "IN-6a",
    "relay/x-y",
    "smtp",
    "a\tb",
    "a\x00b",
    "a\u200bb",
    "ǅ",
    "٣",
    "a=b",
    "A-1 x\ny",
]


def _patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for item in node:
            yield from _patterns(item)


PATTERNS = sorted(
    {
        pattern
        for schema in resources.files("harness").joinpath("schemas").iterdir()
        if schema.name.endswith(".json")
        for pattern in _patterns(json.loads(schema.read_text(encoding="utf-8")))
    }
)


def test_the_schemas_have_patterns_to_try() -> None:
    assert len(PATTERNS) >= 5


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_fast_check_passes_nothing_that_jsonschema_refuses(pattern: str) -> None:
    fast = jsonschema_rs.validator_for({"type": "string", "pattern": pattern})
    let_through = [p for p in PROBES if fast.is_valid(p) and re.search(pattern, p) is None]
    assert let_through == [], f"jsonschema-rs passes what jsonschema refuses for {pattern!r}"
