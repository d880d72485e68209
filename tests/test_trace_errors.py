"""A broken trace is fixed from the error message alone: every SourceError names the file, the line of the
offending value and the field, and says what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from harness.cli import app
from harness.corpus import trace
from harness.corpus.script import Bdat, Data, Step, TlsHandshake
from harness.yamlsource import SourceError
from tests.sourcetext import line_with, replace_once, write

ROOT = Path(__file__).resolve().parents[1]
CORPUS = sorted((ROOT / "traces").rglob("*.y*ml"))

# script[0] .. script[4]: expect 220, send EHLO, expect 250, send QUIT, expect 221.
VALID = """\
id: x/test
title: A small trace
spec: [IN-1, IN-2]
lab: contoso
sessions:
  - client: internet
    connect: {server: EX1}
    script:
      - expect: 220
      - send: EHLO mail-out.fabrikam.com
      - expect: 250
      - send: QUIT
      - expect: 221
outcome:
  nothing_delivered: true
"""


def mutate(old: str, new: str, text: str = VALID) -> str:
    return replace_once(text, old, new)


def write_trace(tmp_path: Path, text: str) -> Path:
    return write(tmp_path / "traces" / "x.yaml", text)


def load_error(tmp_path: Path, text: str) -> SourceError:
    path = write_trace(tmp_path, text)
    with pytest.raises(SourceError) as info:
        trace.load(path)
    assert info.value.path == str(path)
    return info.value


def assert_error(error: SourceError, line: int | None, field: str, message: str) -> None:
    assert (error.line, error.field) == (line, field), error
    assert message in error.message
    where = f"{error.path}:{line}:" if line else f"{error.path}:"
    assert str(error).startswith(where)


# --- the template and the corpus are valid ----------------------------------------------------------


def test_template_is_valid(tmp_path: Path) -> None:
    loaded = trace.load(write_trace(tmp_path, VALID))
    assert loaded.id == "x/test"
    assert loaded.lab == ROOT / "fixtures" / "labs" / "contoso.yaml"
    assert len(loaded.sessions[0].steps) == 5


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("data: plain.eml", Data(source="plain.eml", inline=None)),
        ('data: {inline: "Subject: hi\\n\\nhello\\n"}', Data(source=None, inline="Subject: hi\n\nhello\n")),
        ("data: {file: plain.eml, raw: true}", Data(source="plain.eml", inline=None, raw=True)),
    ],
)
def test_data_steps_load(tmp_path: Path, step: str, expected: Data) -> None:
    loaded = trace.load(write_trace(tmp_path, mutate("- send: QUIT", f"- {step}")))
    assert loaded.sessions[0].steps[3] == expected


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            'bdat: {inline: "Subject: hi\\n\\nhello\\n", last: true}',
            Bdat(None, "Subject: hi\n\nhello\n", last=True),
        ),
        ("bdat: {file: plain.eml}", Bdat("plain.eml", None)),
        ('bdat: {inline: "a\\rb", raw: true, size: 10}', Bdat(None, "a\rb", raw=True, size=10)),
        ("bdat: {inline: '', size: 0, last: true}", Bdat(None, "", last=True, size=0)),
        ("tls_handshake: true", TlsHandshake()),
    ],
    ids=["inline-last", "file", "raw-size", "empty-size-0", "tls_handshake"],
)
def test_bdat_and_tls_handshake_steps_load(tmp_path: Path, step: str, expected: Step) -> None:
    loaded = trace.load(write_trace(tmp_path, mutate("- send: QUIT", f"- {step}")))
    assert loaded.sessions[0].steps[3] == expected


def test_the_corpus_is_not_empty() -> None:
    assert len(CORPUS) >= 10


@pytest.mark.parametrize("path", CORPUS, ids=[str(p.relative_to(ROOT / "traces")) for p in CORPUS])
def test_every_corpus_trace_loads(path: Path) -> None:
    assert trace.is_trace_file(path)
    loaded = trace.load(path)
    assert loaded.sessions
    assert loaded.lab.is_file()


# --- YAML and document shape -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "bad_line", "message"),
    [
        ("spec: [IN-1, IN-2]", "  spec: [IN-1, IN-2]", "  spec:", "mapping values are not allowed here"),
        ("{server: EX1}", "{server: EX1", "script:", "expected ',' or '}'"),
        ("  nothing_delivered", "\tnothing_delivered", "\tnothing_delivered", "found character '\\t'"),
    ],
    ids=["bad-indent", "unclosed-flow-mapping", "tab"],
)
def test_yaml_syntax_error_names_the_line(
    tmp_path: Path, old: str, new: str, bad_line: str, message: str
) -> None:
    text = mutate(old, new)
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, bad_line), "", f"YAML syntax error: {message}")


def test_unclosed_quote_names_the_line_where_it_opens(tmp_path: Path) -> None:
    text = mutate("- send: QUIT", '- send: "QUIT')
    error = load_error(tmp_path, text)
    # The parser only notices at the end of the file; the error points where the quote was opened.
    assert_error(error, line_with(text, '"QUIT'), "", "YAML syntax error: found unexpected end of stream")
    assert "never closed" in error.message


@pytest.mark.parametrize("text", ["- id: x\n- title: y\n", "just some text\n", ""], ids=str)
def test_not_a_mapping(tmp_path: Path, text: str) -> None:
    error = load_error(tmp_path, text)
    assert_error(error, 1, "", "a trace is a YAML mapping (id, title, spec, sessions, outcome)")


def test_missing_required_field(tmp_path: Path) -> None:
    text = VALID.split("sessions:")[0]
    error = load_error(tmp_path, text)
    assert_error(error, 1, "", "missing field: 'sessions' is a required property")


def test_unknown_top_level_field_names_the_line_of_the_key(tmp_path: Path) -> None:
    text = mutate("outcome:", "outcom:")
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, "outcom:"), "outcom", "unknown field 'outcom' (expected one of: ")
    assert "outcome" in error.message


def test_a_duplicate_key_is_an_error_not_silently_dropped(tmp_path: Path) -> None:
    text = mutate("outcome:", "outcome:\n  nothing_delivered: false")
    text = text + "  nothing_delivered: true\n"
    error = load_error(tmp_path, text)
    assert "duplicate key 'nothing_delivered' (first at line" in error.message
    assert error.field == "outcome.nothing_delivered"


# --- catalogue IDs ---------------------------------------------------------------------------------


def test_unknown_catalogue_id(tmp_path: Path) -> None:
    text = mutate("spec: [IN-1, IN-2]", "spec:\n  - IN-1\n  - IN-99")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "- IN-99"),
        "spec[1]",
        "unknown catalogue ID 'IN-99' (see harness/corpus/catalogue.yaml)",
    )


def test_malformed_catalogue_id(tmp_path: Path) -> None:
    text = mutate("spec: [IN-1, IN-2]", "spec:\n  - IN-1\n  - in 2")
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, "- in 2"), "spec[1]", "'in 2' does not match")


def test_boundary_id_not_in_spec(tmp_path: Path) -> None:
    text = mutate("lab: contoso", "boundary: [IN-1, RELAY-1]\nlab: contoso")
    error = load_error(tmp_path, text)
    assert_error(
        error, line_with(text, "boundary:"), "boundary[1]", "'RELAY-1' is not one of this trace's spec IDs"
    )


# --- script steps ----------------------------------------------------------------------------------


def test_step_with_two_keys(tmp_path: Path) -> None:
    text = mutate("- send: QUIT", "- {send: QUIT, expect: 221}")
    error = load_error(tmp_path, text)
    assert_error(
        error, line_with(text, "{send: QUIT"), "sessions[0].script[3]", "a step must have exactly one of"
    )
    assert error.message.endswith("found send, expect")


def test_unknown_step_key(tmp_path: Path) -> None:
    text = mutate("- send: QUIT", "- sned: QUIT")
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, "sned"), "sessions[0].script[3].sned", "unknown field 'sned'")
    assert "send_raw" in error.message  # the known keys are listed


def test_empty_step(tmp_path: Path) -> None:
    text = mutate("- send: QUIT", "- {}")
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, "- {}"), "sessions[0].script[3]", "a step must have exactly one of")
    assert error.message.endswith("found none")


@pytest.mark.parametrize(
    ("expect", "field", "message"),
    [
        ('{code: "abc"}', "sessions[0].script[4].expect.code", "'abc' is not of type 'integer'"),
        (
            "99",
            "sessions[0].script[4].expect",
            "expect: reply code must be an integer from 100 to 599, not 99",
        ),
        (
            "{cod: 221}",
            "sessions[0].script[4].expect.cod",
            "unknown field 'cod' (expected one of: class, code,",
        ),
        ("{}", "sessions[0].script[4].expect", "{} should be non-empty"),
        (
            "{code: 221, class: 5xx}",
            "sessions[0].script[4].expect",
            "expect: code 221 can never be in class 5xx",
        ),
        (
            '{enhanced: "9.9.9"}',
            "sessions[0].script[4].expect",
            "expect: enhanced must be a status code like 2.1.0, not '9.9.9'",
        ),
        ('{regex: "x(("}', "sessions[0].script[4].expect", "expect: regex 'x((' does not compile"),
        ("{lines: 0}", "sessions[0].script[4].expect.lines", "0 is less than the minimum of 1"),
    ],
    ids=[
        "code-not-int",
        "code-out-of-range",
        "unknown-key",
        "empty",
        "class-mismatch",
        "enhanced",
        "regex",
        "lines",
    ],
)
def test_bad_expect_matcher(tmp_path: Path, expect: str, field: str, message: str) -> None:
    text = mutate("- expect: 221", f"- expect: {expect}")
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, f"- expect: {expect}"), field, message)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("'QUIT\\xZZ\\r\\n'", "send_raw: \\x must be followed by two hex digits at position 4"),
        ("QUIT\\xZZ\\r\\n", "send_raw: \\x must be followed by two hex digits at position 4"),
        ("'QUIT\\q'", "send_raw: unknown escape \\q at position 4"),
        ("'QUIT\\'", "send_raw: lone backslash at the end"),
    ],
    ids=["hex-single-quoted", "hex-plain", "unknown-escape", "lone-backslash"],
)
def test_bad_send_raw_escape(tmp_path: Path, value: str, message: str) -> None:
    text = mutate("- send: QUIT", f"- send_raw: {value}")
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, "send_raw"), "sessions[0].script[3].send_raw", message)


def test_bad_escape_in_double_quotes_is_a_yaml_error(tmp_path: Path) -> None:
    # In a double-quoted YAML string, YAML itself decodes \x first and rejects the bad escape.
    text = mutate("- send: QUIT", '- send_raw: "QUIT\\xZZ\\r\\n"')
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "send_raw"),
        "",
        "YAML syntax error: expected escape sequence of 2 hexadecimal numbers, but found 'Z'",
    )


def test_send_raw_takes_escaped_text_not_yaml_binary(tmp_path: Path) -> None:
    # Traces stay readable: raw bytes are written with escapes (\r, \xHH), not base64.
    text = mutate("- send: QUIT", "- send_raw: !!binary UVVJVA0K")
    error = load_error(tmp_path, text)
    assert_error(
        error, line_with(text, "!!binary"), "sessions[0].script[3].send_raw", "is not of type 'string'"
    )


@pytest.mark.parametrize("value", ['"QUIT\\nRSET"', '"QUIT\\r"'], ids=["LF", "CR"])
def test_send_with_a_line_break(tmp_path: Path, value: str) -> None:
    text = mutate("- send: QUIT", f"- send: {value}")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "- send: " + value),
        "sessions[0].script[3].send",
        "contains CR or LF; use send_raw for exact bytes",
    )
    assert error.message.startswith("send: command line ")


def test_pipeline_line_with_a_line_break(tmp_path: Path) -> None:
    text = mutate("- send: QUIT", '- pipeline: [RSET, "NOOP\\nQUIT"]')
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, "pipeline"), "sessions[0].script[3].pipeline", "contains CR or LF")


@pytest.mark.parametrize(
    ("step", "field", "message"),
    [
        ("bdat: {inline: x, size: -1}", "bdat.size", "-1 is less than the minimum of 0"),
        ('bdat: {inline: x, size: "10"}', "bdat.size", "'10' is not of type 'integer'"),
        ("bdat: {inline: x, size: 1.5}", "bdat.size", "1.5 is not of type 'integer'"),
        ("bdat: {inline: x, size: true}", "bdat.size", "True is not of type 'integer'"),
        ("bdat: {inline: x, file: m.eml}", "bdat", "give exactly one of file, inline (found file, inline)"),
        ("bdat: {last: true}", "bdat", "give exactly one of file, inline (found none)"),
        ('bdat: {inline: x, last: "yes"}', "bdat.last", "'yes' is not of type 'boolean'"),
        (
            "bdat: {inline: x, lats: true}",
            "bdat.lats",
            "unknown field 'lats' (expected one of: file, inline,",
        ),
        ("bdat: plain.eml", "bdat", "bdat: must be a mapping with file or inline (and last, size, raw)"),
        ("tls_handshake: false", "tls_handshake", "True was expected"),
        ('tls_handshake: "true"', "tls_handshake", "True was expected"),
    ],
    ids=[
        "size-negative",
        "size-string",
        "size-float",
        "size-bool",
        "file-and-inline",
        "neither",
        "last-not-bool",
        "unknown-key",
        "not-a-mapping",
        "tls-false",
        "tls-string",
    ],
)
def test_bad_bdat_or_tls_handshake_step(tmp_path: Path, step: str, field: str, message: str) -> None:
    text = mutate("- send: QUIT", f"- {step}")
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, f"- {step}"), f"sessions[0].script[3].{field}", message)


def test_step_after_close(tmp_path: Path) -> None:
    text = mutate("- send: QUIT", "- close: true")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "- expect: 221"),
        "sessions[0].script[4]",
        "no step can follow expect_close or close: the connection is gone",
    )


@pytest.mark.parametrize("step", ["data: nosuch.eml", "data: {file: nosuch.eml}"], ids=["path", "file"])
def test_missing_message_file(tmp_path: Path, step: str) -> None:
    text = mutate("- send: QUIT", f"- {step}")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "nosuch.eml"),
        "sessions[0].script[3].data",
        "message file 'nosuch.eml' not found next to the trace or in fixtures/messages",
    )


def test_message_file_next_to_the_trace(tmp_path: Path) -> None:
    path = write_trace(tmp_path, mutate("- send: QUIT", "- data: local.eml"))
    (path.parent / "local.eml").write_text("Subject: local\n\nbody\n")
    assert trace.load(path).sessions[0].steps[3] == Data(source="local.eml", inline=None)


# --- sessions --------------------------------------------------------------------------------------


def test_connect_with_both_mx_and_server(tmp_path: Path) -> None:
    text = mutate("{server: EX1}", "{mx: contoso.com, server: EX1}")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "connect:"),
        "sessions[0].connect",
        "give exactly one of mx, server, host (found mx, server)",
    )


def test_connect_with_only_a_virtual_server(tmp_path: Path) -> None:
    text = mutate("{server: EX1}", "{virtual_server: Default SMTP Virtual Server}")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "connect:"),
        "sessions[0].connect",
        "give exactly one of mx, server, host (found none)",
    )


def test_refused_session_with_a_script(tmp_path: Path) -> None:
    text = mutate("    connect: {server: EX1}\n", "    connect: {server: EX1}\n    refused: true\n")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "- client:"),
        "sessions[0]",
        "give exactly one of script, refused (found script, refused)",
    )


def test_refused_session_without_a_script_loads(tmp_path: Path) -> None:
    text = VALID.split("    script:")[0] + "    refused: true\n"
    (session,) = trace.load(write_trace(tmp_path, text)).sessions
    assert session.refused
    assert session.steps == ()


def test_session_without_client(tmp_path: Path) -> None:
    text = mutate("  - client: internet\n    connect:", "  - connect:")
    error = load_error(tmp_path, text)
    assert_error(
        error, line_with(text, "- connect:"), "sessions[0]", "missing field: 'client' is a required property"
    )


# --- lab and outcome -------------------------------------------------------------------------------


def test_unknown_lab(tmp_path: Path) -> None:
    text = mutate("lab: contoso", "lab: nosuchlab")
    error = load_error(tmp_path, text)
    missing = ROOT / "fixtures" / "labs" / "nosuchlab.yaml"
    said = f"no lab 'nosuchlab' ({missing} does not exist); labs: contoso"
    assert_error(error, line_with(text, "lab:"), "lab", said)


def test_wrong_type_in_outcome(tmp_path: Path) -> None:
    text = mutate("nothing_delivered: true", 'nothing_else_delivered: "yes"')
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "nothing_else_delivered"),
        "outcome.nothing_else_delivered",
        "'yes' is not of type 'boolean'",
    )


@pytest.mark.parametrize(
    ("tracking", "needle", "field", "message"),
    [
        ('EX1: [1019, "1025"]', "EX1:", "outcome.tracking.EX1[1]", "'1025' is not of type 'integer'"),
        ("EX1: [1019, 10.5]", "EX1:", "outcome.tracking.EX1[1]", "10.5 is not of type 'integer'"),
        (
            "EX1:\n      erin@contoso.com: [1019, x]",
            "erin@",
            "outcome.tracking.EX1.erin@contoso.com[1]",
            "'x' is not of type 'integer'",
        ),
    ],
    ids=["string", "float", "per-recipient"],
)
def test_tracking_with_non_integer_ids(
    tmp_path: Path, tracking: str, needle: str, field: str, message: str
) -> None:
    text = mutate("nothing_delivered: true", f"tracking:\n    {tracking}")
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, needle), field, message)


# --- mailflow check --------------------------------------------------------------------------------


def test_mailflow_check_prints_file_line_field_and_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wide console: rich would otherwise wrap the long tmp path at 80 columns.
    monkeypatch.setattr(app, "console", Console(width=10_000))
    text = mutate("- send: QUIT", '- send: "QUIT\\nRSET"')
    broken = write_trace(tmp_path, text)
    good = CORPUS[0]
    result = CliRunner().invoke(app.main, ["check", str(good), str(broken)])
    assert result.exit_code == 2, result.output  # invalid input (harness/exit_codes.py)
    assert f"ok {good}" in result.output
    line = line_with(text, "RSET")
    expected = f"error {broken}:{line}: sessions[0].script[3].send: send: command line 'QUIT\\nRSET' contains"
    assert f"{expected} CR or LF; use send_raw for exact bytes\n" in result.output


def test_an_event_assertion_may_not_check_the_label_the_mta_writes_about_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "console", Console(width=10_000))
    text = mutate(
        "  nothing_delivered: true",
        "  nothing_delivered: true\n  events:\n    - {server: EX1, event: 1019}\n"
        "    - {server: EX1, event: 1019, spec: IN-4}",
    )
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, "spec: IN-4"), "outcome.events[1].spec", "a label the MTA writes")
    assert "not evidence" in error.message
    result = CliRunner().invoke(app.main, ["check", str(write_trace(tmp_path, text))])
    assert result.exit_code == 2, result.output
    assert (
        "outcome.events[1].spec: an event's spec field is a label the MTA writes about itself"
        in result.output
    )
    assert "Traceback" not in result.output


def test_mailflow_check_passes_a_good_trace() -> None:
    result = CliRunner().invoke(app.main, ["check", str(CORPUS[0])])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("value", ["[bold]x((", "[/]x(("], ids=["swallowed-tag", "crash"])
def test_mailflow_check_shows_the_value_verbatim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setattr(app, "console", Console(width=10_000))
    broken = write_trace(tmp_path, mutate("- expect: 221", f'- expect: {{regex: "{value}"}}'))
    result = CliRunner().invoke(app.main, ["check", str(broken)])
    assert isinstance(result.exception, SystemExit), result.exception
    assert f"expect: regex '{value}' does not compile" in result.output


# --- names of the lab ------------------------------------------------------------------------------

HOSTS = "(lab contoso has: dns, gc, EX1, EX2, EX3, EX4, fabrikam-mx, "
SERVERS = "(lab contoso has: EX1, EX2, EX3, EX4)"


@pytest.mark.parametrize(
    ("old", "new", "needle", "field", "message"),
    [
        ("- client: internet", "- client: internte", "internte", "sessions[0].client", "no lab host"),
        ("{server: EX1}", "{server: EX9}", "EX9", "sessions[0].connect.server", "no server"),
        ("{server: EX1}", "{host: nosuch}", "nosuch", "sessions[0].connect.host", "no lab host"),
    ],
    ids=["client", "server", "host"],
)
def test_session_naming_nothing_in_the_lab(
    tmp_path: Path, old: str, new: str, needle: str, field: str, message: str
) -> None:
    text = mutate(old, new)
    error = load_error(tmp_path, text)
    listed = SERVERS if message == "no server" else HOSTS
    assert_error(error, line_with(text, needle), field, f"{message} named {needle!r} {listed}")


def test_virtual_server_that_the_server_does_not_have(tmp_path: Path) -> None:
    text = mutate("{server: EX1}", "{server: EX2, virtual_server: Open Relay SMTP Virtual Server}")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "Open Relay"),
        "sessions[0].connect.virtual_server",
        "no virtual server on EX2 named 'Open Relay SMTP Virtual Server' "
        "(lab contoso has: Default SMTP Virtual Server, Internal SMTP Virtual Server)",
    )


def test_virtual_server_without_its_server(tmp_path: Path) -> None:
    text = mutate("{server: EX1}", "{host: EX1, virtual_server: Default SMTP Virtual Server}")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "virtual_server"),
        "sessions[0].connect.virtual_server",
        "virtual_server names one of a server's virtual servers: give server too",
    )


@pytest.mark.parametrize(
    ("outcome", "needle", "field", "message"),
    [
        (
            "dns:\n    - {name: contoso.com, type: MX, client: ex9, absent: true}",
            "ex9",
            "outcome.dns[0].client",
            f"no lab host named 'ex9' {HOSTS}",
        ),
        (
            "dns:\n    - {name: contoso.com, type: MXX, absent: true}",
            "MXX",
            "outcome.dns[0].type",
            "unknown DNS record type 'MXX'",
        ),
        (
            "ldap:\n    - {filter: (cn=x), client: EX9, absent: true}",
            "EX9",
            "outcome.ldap[0].client",
            "no directory client named 'EX9' (lab contoso has: EX1, EX2, EX3, EX4, smtp-auth)",
        ),
        (
            "delivered:\n    - {mailbox: alice@contoso.com, server: EX9}",
            "EX9",
            "outcome.delivered[0].server",
            f"no server named 'EX9' {SERVERS}",
        ),
        (
            "not_delivered:\n    - {sink: partner-mxx}",
            "partner-mxx",
            "outcome.not_delivered[0].sink",
            "no Internet host named 'partner-mxx' (lab contoso has: fabrikam-mx, isp-smarthost, partner-mx,",
        ),
        (
            "not_delivered:\n    - {sink: partner-mx, peer: EX9}",
            "EX9",
            "outcome.not_delivered[0].peer",
            f"no lab host named 'EX9' {HOSTS}",
        ),
        (
            "delivered:\n    - {gateway: Notes Conector}",
            "Conector",
            "outcome.delivered[0].gateway",
            "no gateway connector named 'Notes Conector' (lab contoso has: Notes Connector)",
        ),
        (
            "delivered:\n    - {gateway: Notes Connector, server: EX9}",
            "EX9",
            "outcome.delivered[0].server",
            f"no server named 'EX9' {SERVERS}",
        ),
        (
            "delivered:\n    - {sink: partner-mx, server: EX2}",
            "EX2",
            "outcome.delivered[0].server",
            "server is for mailbox and gateway deliveries; a sink's sender is its peer",
        ),
        (
            "delivered:\n    - {mailbox: alice@contoso.com, peer: EX1}",
            "peer",
            "outcome.delivered[0].peer",
            "peer is for sink deliveries: the lab host that handed the message over",
        ),
        ("tracking:\n    EX9: [1019]", "EX9", "outcome.tracking.EX9", f"no server named 'EX9' {SERVERS}"),
        (
            "tracking:\n    EX9:\n      alice@contoso.com: [1019]",
            "EX9",
            "outcome.tracking.EX9",
            f"no server named 'EX9' {SERVERS}",
        ),
        (
            "events:\n    - {server: EX9, event: 1019, absent: true}",
            "EX9",
            "outcome.events[0].server",
            f"no server named 'EX9' {SERVERS}",
        ),
        (
            "events:\n    - {server: EX1, event: 1019, client: internte, absent: true}",
            "internte",
            "outcome.events[0].client",
            f"no lab host named 'internte' {HOSTS}",
        ),
        ("hops:\n    - EX1\n    - EX9", "EX9", "outcome.hops[1]", f"no server named 'EX9' {SERVERS}"),
    ],
    ids=[
        "dns-client",
        "dns-type",
        "ldap-client",
        "mailbox-server",
        "sink",
        "peer",
        "gateway",
        "gateway-server",
        "server-on-a-sink",
        "peer-on-a-mailbox",
        "tracking",
        "tracking-per-recipient",
        "events-server",
        "events-client",
        "hops",
    ],
)
def test_outcome_naming_nothing_in_the_lab(
    tmp_path: Path, outcome: str, needle: str, field: str, message: str
) -> None:
    text = mutate("nothing_delivered: true", outcome)
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, needle), field, message)


def test_lab_names_are_matched_without_regard_to_case(tmp_path: Path) -> None:
    text = mutate("- client: internet", "- client: INTERNET")
    text = mutate("{server: EX1}", "{server: ex1, virtual_server: open relay smtp virtual server}", text)
    outcome = """\
dns: [{name: contoso.com, type: mx, client: Ex1, absent: true}]
  ldap: [{filter: (cn=x), client: SMTP-AUTH, absent: true}]
  not_delivered: [{sink: Partner-MX, peer: ex2}, {gateway: notes connector, server: ex4}]
  tracking: {ex1: [1019]}
  events: [{server: ex1, event: 1019, client: Relay-Host, absent: true}]
  hops: [ex1, ex2]"""
    loaded = trace.load(write_trace(tmp_path, mutate("nothing_delivered: true", outcome, text)))
    assert loaded.sessions[0].client == "INTERNET"


def test_a_broken_lab_is_reported_in_the_lab_file(tmp_path: Path) -> None:
    lab_text = (ROOT / "fixtures" / "labs" / "contoso.yaml").read_text(encoding="utf-8")
    lab_text = lab_text.replace(
        "../directory/contoso.ldif", str(ROOT / "fixtures" / "directory" / "contoso.ldif")
    )
    lab_text = mutate('value: "10 mx.adatum.com."', 'value: "ten mx.adatum.com."', lab_text)
    lab = tmp_path / "labs" / "broken.yaml"
    lab.parent.mkdir()
    lab.write_text(lab_text, encoding="utf-8")
    path = write_trace(tmp_path, mutate("lab: contoso", "lab: ../labs/broken.yaml"))
    with pytest.raises(SourceError) as info:
        trace.load(path)
    assert (info.value.path, info.value.line) == (str(lab), line_with(lab_text, "ten mx.adatum.com."))
    assert info.value.field.startswith("dns.records[")


def test_an_edited_lab_is_loaded_again(tmp_path: Path) -> None:
    lab_text = (ROOT / "fixtures" / "labs" / "contoso.yaml").read_text(encoding="utf-8")
    lab_text = lab_text.replace(
        "../directory/contoso.ldif", str(ROOT / "fixtures" / "directory" / "contoso.ldif")
    )
    lab = tmp_path / "labs" / "mine.yaml"
    lab.parent.mkdir()
    lab.write_text(lab_text, encoding="utf-8")
    path = write_trace(tmp_path, mutate("lab: contoso", "lab: ../labs/mine.yaml"))
    trace.load(path)
    renamed = mutate("- {name: internet, fqdn:", "- {name: outside, fqdn:", lab_text)
    lab.write_text(mutate("[attacker, internet]", "[attacker, outside]", renamed), encoding="utf-8")
    error = load_error(tmp_path, path.read_text(encoding="utf-8"))
    assert error.message.startswith("no lab host named 'internet' (lab contoso has: ")


# --- step lines --------------------------------------------------------------------------------------


def test_each_step_knows_its_line(tmp_path: Path) -> None:
    (session,) = trace.load(write_trace(tmp_path, VALID)).sessions
    needles = ["expect: 220", "send: EHLO", "expect: 250", "send: QUIT", "expect: 221"]
    assert session.step_lines == tuple(line_with(VALID, n) for n in needles)


def test_a_refused_session_points_at_its_refused_line(tmp_path: Path) -> None:
    text = VALID.split("    script:")[0] + "    refused: true\n"
    (session,) = trace.load(write_trace(tmp_path, text)).sessions
    assert session.step_lines == (line_with(text, "refused: true"),)


# --- recursive aliases -------------------------------------------------------------------------------


def test_a_recursive_alias_is_an_error_at_its_line(tmp_path: Path) -> None:
    text = VALID.split("sessions:")[0] + "sessions: &s [ {client: x, connect: {server: EX1}, script: *s} ]\n"
    error = load_error(tmp_path, text)
    line = line_with(text, "*s")
    assert_error(
        error, line, "sessions[0].script", f"recursive alias *s: the value anchored at line {line} contains"
    )


def test_a_recursive_alias_in_a_block_sequence_names_the_alias_line(tmp_path: Path) -> None:
    text = mutate("    script:\n      - expect: 220\n", "    script: &steps\n      - *steps\n")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "- *steps"),
        "sessions[0].script[0]",
        f"recursive alias *steps: the value anchored at line {line_with(text, '&steps')} contains itself",
    )


def test_an_alias_used_twice_is_not_recursive(tmp_path: Path) -> None:
    text = mutate("      - expect: 250\n", "      - &ok {expect: 250}\n      - send: NOOP\n      - *ok\n")
    loaded = trace.load(write_trace(tmp_path, text))
    assert loaded.sessions[0].steps[2] == loaded.sessions[0].steps[4]


def test_an_outcome_regex_that_does_not_compile_is_reported_at_load(tmp_path: Path) -> None:
    text = VALID.replace(
        "  nothing_delivered: true\n", '  nothing_delivered: true\n  ldap:\n    - {filter_regex: "proxy(("}\n'
    )
    error = load_error(tmp_path, text)
    assert_error(
        error, line_with(text, "proxy(("), "outcome.ldap[0].filter_regex", "regex 'proxy((' does not compile"
    )
