"""A trace's `lab:` items: one vocabulary (`LabVerb`), read once when the trace loads, and a wrong name
refused with the file, the line and the names there are."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from harness.cli import app
from harness.corpus import trace
from harness.corpus.trace import LabAction, LabVerb
from harness.exit_codes import ExitCode
from tests.sourcetext import line_with, write

ROOT = Path(__file__).resolve().parents[1]

TRACE = """\
id: x/lab-actions
title: Lab actions between sessions
spec: [IN-1]
lab: contoso
sessions:
  - lab: {connector_down: Internet Mail SMTP Connector}
  - lab: {server_up: EX2}
  - lab: {global_catalog_down: true}
  - lab: {freeze: {server: EX1, queue: contoso.com}}
  - lab: {sink_rule: {host: partner-mx, command: RCPT, reply: "450 busy"}}
  - lab: {settle: true}
outcome:
  nothing_delivered: true
"""


def test_the_schema_lists_exactly_the_lab_verbs() -> None:
    schema = json.loads((ROOT / "harness" / "schemas" / "trace.schema.json").read_text())
    listed = schema["$defs"]["lab_action"]["properties"]["lab"]["properties"]
    assert sorted(listed) == sorted(LabVerb)


def test_lab_items_load_as_verbs_with_what_they_act_on(tmp_path: Path) -> None:
    loaded = trace.load(write(tmp_path / "traces" / "x.yaml", TRACE))
    actions = [item for item in loaded.sessions if isinstance(item, LabAction)]
    assert [(a.action, a.target) for a in actions] == [
        (LabVerb.CONNECTOR_DOWN, "Internet Mail SMTP Connector"),
        (LabVerb.SERVER_UP, "EX2"),
        (LabVerb.GLOBAL_CATALOG_DOWN, None),
        (LabVerb.FREEZE, "EX1"),
        (LabVerb.SINK_RULE, "partner-mx"),
        (LabVerb.SETTLE, None),
    ]
    assert [a.action.up for a in actions] == [False, True, False, False, False, False]
    assert actions[3].rule == {"server": "EX1", "queue": "contoso.com"}


def test_an_unknown_lab_action_names_the_file_the_line_and_the_choices(tmp_path: Path) -> None:
    text = TRACE.replace("server_up: EX2", "server_upp: EX2")
    path = write(tmp_path / "traces" / "x.yaml", text)
    result = CliRunner().invoke(app.main, ["check", str(path)])
    assert result.exit_code == ExitCode.INPUT, result.output
    assert f"{path}:{line_with(text, 'server_upp')}:" in result.output
    assert "server_upp" in result.output
    for verb in LabVerb:
        assert verb in result.output
