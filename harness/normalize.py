"""Identity-preserving masking of what changes from run to run and from target to target: times,
dates, ports, lab addresses (which move with the lab's base), queue ids and generated message ids.
The same value becomes the same placeholder within one text, so a transcript that names one queue id
twice still says so after masking.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_ELAPSED = re.compile(r"^\+\d+\.\d{3} ", re.MULTILINE)
_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?\d{1,2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}"
)
_ADDRESS_PORT = re.compile(r"\b(\d{1,3}(?:\.\d{1,3}){3})(?::(\d{1,5}))?\b")
# Exchange: <EX1F64ED19C956C4D21@ex1.contoso.com>; Postfix: "queued as 25E982168B1".
_EXCHANGE_QUEUE_ID = re.compile(r"\b[A-Z][A-Z0-9]{1,14}[0-9A-F]{16}(?=@)")
_POSTFIX_QUEUE_ID = re.compile(r"(?<=queued as )[0-9A-F]{6,}\b")


class Masker:
    """Masks one text's volatile values; `names` maps lab addresses to host names."""

    def __init__(self, names: Mapping[str, str]) -> None:
        self.names = names
        self._seen: dict[tuple[str, str], str] = {}

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        if key not in self._seen:
            count = sum(1 for seen_kind, _ in self._seen if seen_kind == kind) + 1
            self._seen[key] = f"<{kind}-{count}>"
        return self._seen[key]

    def text(self, text: str) -> str:
        text = _ELAPSED.sub("", text)
        text = _DATE.sub("<date>", text)
        text = _EXCHANGE_QUEUE_ID.sub(lambda m: self.placeholder("queue-id", m[0]), text)
        text = _POSTFIX_QUEUE_ID.sub(lambda m: self.placeholder("queue-id", m[0]), text)
        return _ADDRESS_PORT.sub(self._address, text)

    def _address(self, match: re.Match[str]) -> str:
        address, port = match[1], match[2]
        name = self.names.get(address)
        if name is None:
            return match[0]
        return f"<{name}>" + (":<port>" if port else "")


def mask(text: str, names: Mapping[str, str]) -> str:
    return Masker(names).text(text)
