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
from tests.mailflow_cli import mailflow
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


HELD = """\
id: x/held-in-the-mta-queue
title: A memo held in the frozen MTA queue
spec: [GW-3]
lab: contoso
sessions:
  - lab: {freeze: {server: EX4, queue: "X.400: MTA queue"}}
  - foreign:
      gateway: Notes Connector
      data: {inline: "From: Ann Lee/Sales/Fabrikam\\nSendTo: Dave Ito/Contoso\\nSubject: x\\nBody:\\nx\\n"}
  - lab:
      settle:
        queues:
          - {server: EX4, queue: "X.400: MTA queue", count: 1, state: Frozen}
  - lab: {unfreeze: {server: EX4, queue: "X.400: MTA queue"}}
outcome:
  delivered:
    - {mailbox: dave@contoso.com, server: EX4}
  events:
    - {server: EX4, event: 0}
"""


def test_a_settle_may_say_what_the_queues_hold_at_that_point(tmp_path: Path) -> None:
    loaded = trace.load(write(tmp_path / "traces" / "x.yaml", HELD))
    settle = loaded.sessions[2]
    assert isinstance(settle, LabAction) and settle.action is LabVerb.SETTLE
    assert settle.rule == {
        "queues": [{"server": "EX4", "queue": "X.400: MTA queue", "count": 1, "state": "Frozen"}]
    }


def test_a_queue_that_does_not_hold_what_the_settle_says_fails_the_trace_at_that_step(tmp_path: Path) -> None:
    passing = write(tmp_path / "held.yaml", HELD)
    done = mailflow("run", str(passing), cwd=tmp_path, columns=400)
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    # Nothing frozen: the message passes the MTA queue at once and the settle finds it empty.
    text = HELD.replace('  - lab: {freeze: {server: EX4, queue: "X.400: MTA queue"}}\n', "")
    failing = write(tmp_path / "not-held.yaml", text)
    done = mailflow("run", str(failing), cwd=tmp_path, columns=400)
    assert done.returncode == ExitCode.FAILED, done.stdout + done.stderr
    output = " ".join(done.stdout.split())
    assert f"{failing.name}:{line_with(text, 'settle:') - 1}: session 2 (lab), step 1: lab: settle" in output
    assert "queue X.400: MTA queue on EX4 in state Frozen: expected 1 message(s); the queues hold:" in output
    assert "Traceback" not in done.stdout + done.stderr


def test_a_settle_names_only_servers_of_the_lab(tmp_path: Path) -> None:
    text = HELD.replace(
        '{server: EX4, queue: "X.400: MTA queue", count: 1',
        '{server: EX9, queue: "X.400: MTA queue", count: 1',
    )
    path = write(tmp_path / "traces" / "x.yaml", text)
    result = CliRunner().invoke(app.main, ["check", str(path)])
    assert result.exit_code == ExitCode.INPUT, result.output
    assert f"{path}:{line_with(text, 'server: EX9')}:" in result.output
    assert "EX9" in result.output and "EX4" in result.output
