"""Writing trace files: what the writer produces loads back as the same trace, reads like the
hand-written corpus, and a document the loader refuses is never left on disk."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from harness import tracefile
from harness.trace import load
from harness.yamlsource import SourceError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "name",
    [
        "relay/default-virtual-server-is-not-open",
        "inbound/notify-never-no-ndr",
        "protocol/bdat-several-chunks-then-last",
        "relay/auth-login-relays-to-internet",
    ],
)
def test_a_written_trace_loads_back_as_the_same_trace(tmp_path: Path, name: str) -> None:
    source = ROOT / "traces" / f"{name}.yaml"
    document = yaml.safe_load(source.read_text(encoding="utf-8"))
    written = tracefile.write(document, tmp_path / "copy.yaml")
    original = load(source)
    # Everything but where each step sits in its file.
    assert [replace(s, step_lines=()) for s in written.sessions] == [
        replace(s, step_lines=()) for s in original.sessions
    ]
    assert written.outcome == original.outcome and written.spec == original.spec


def test_steps_are_one_per_line_in_the_house_style() -> None:
    document = {
        "id": "recorded/example",
        "title": "An example",
        "spec": ["IN-3"],
        "lab": "contoso",
        "sessions": [
            {
                "client": "internet",
                "connect": {"server": "EX1"},
                "script": [
                    {"expect": 220},
                    {"send": "MAIL FROM:<ann@fabrikam.com>"},
                    {"expect": {"code": 250, "text": "2.1.0 ann@fabrikam.com....Sender OK"}},
                ],
            }
        ],
        "outcome": {"nothing_delivered": True},
    }
    assert tracefile.dump(document).splitlines() == [
        "id: recorded/example",
        "title: An example",
        "spec: [IN-3]",
        "lab: contoso",
        "sessions:",
        "  - client: internet",
        "    connect: {server: EX1}",
        "    script:",
        "      - expect: 220",
        "      - send: MAIL FROM:<ann@fabrikam.com>",
        "      - expect: {code: 250, text: 2.1.0 ann@fabrikam.com....Sender OK}",
        "outcome:",
        "  nothing_delivered: true",
    ]


def test_a_document_the_loader_refuses_is_not_kept(tmp_path: Path) -> None:
    broken = {"id": "recorded/broken", "title": "x", "spec": ["NO-SUCH-ID"], "lab": "contoso", "sessions": []}
    with pytest.raises(SourceError):
        tracefile.write(broken, tmp_path / "broken.yaml")
    assert list(tmp_path.iterdir()) == []
