"""`mailflow run --update`: expectations that no longer hold are rewritten to the replies received, with
the diff shown; the rest of the file (comments, layout, other steps) is left as it was, and the trace
then passes."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from harness.cli.app import main

ROOT = Path(__file__).resolve().parents[1]
REFUSED = "      - expect: {code: 550, enhanced: 5.7.1}"
WAS_REFUSED = "      - expect: {code: 250}  # was 250"
WAS_CLOSING = "      - expect: {code: 221, text: Bye}"
NOW_REFUSED = "      - expect: {code: 550, masked: 550 5.7.1 Unable to relay for nancy@northwind.example}\n"
NOW_CLOSING = "      - expect: {code: 221, masked: 221 2.0.0 <host-1> Service closing transmission channel}\n"


def test_update_rewrites_failing_expectations_and_keeps_the_rest(tmp_path: Path) -> None:
    source = (ROOT / "traces" / "relay" / "default-virtual-server-is-not-open.yaml").read_text()
    stale = source.replace(REFUSED, WAS_REFUSED).replace(
        "      - expect: 221", "      - expect: {code: 221, text: Bye}"
    )
    trace = tmp_path / "traces" / "stale.yaml"
    trace.parent.mkdir()
    trace.write_text("# kept as it is\n" + stale, encoding="utf-8")

    result = CliRunner().invoke(main, ["run", "--update", "--reports", str(tmp_path / "r"), str(trace)])

    assert result.exit_code == 0, result.output
    after = trace.read_text(encoding="utf-8")
    assert after.startswith("# kept as it is\n")
    assert NOW_REFUSED in after and NOW_CLOSING in after
    # What held is unchanged; the diff of what changed is shown.
    assert after.replace(NOW_REFUSED, "").replace(NOW_CLOSING, "") == "# kept as it is\n" + stale.replace(
        WAS_REFUSED + "\n", ""
    ).replace(WAS_CLOSING + "\n", "")
    assert f"-{WAS_REFUSED}" in result.output and f"+{NOW_REFUSED.rstrip()}" in result.output
    again = CliRunner().invoke(main, ["run", "--reports", str(tmp_path / "r"), str(trace)])
    assert again.exit_code == 0, again.output


def test_an_expect_written_over_several_lines_is_reported_not_rewritten(tmp_path: Path) -> None:
    source = (ROOT / "traces" / "relay" / "default-virtual-server-is-not-open.yaml").read_text()
    stale = source.replace(REFUSED, "      - expect:\n          code: 250")
    trace = tmp_path / "traces" / "stale.yaml"
    trace.parent.mkdir()
    trace.write_text(stale, encoding="utf-8")

    result = CliRunner().invoke(main, ["run", "--update", "--reports", str(tmp_path / "r"), str(trace)])

    assert result.exit_code == 1
    assert trace.read_text(encoding="utf-8") == stale
    assert "an expect written over several lines is left to be edited" in result.output


def test_update_is_for_the_reference_mta_only(tmp_path: Path) -> None:
    trace = ROOT / "traces" / "relay" / "default-virtual-server-is-not-open.yaml"
    result = CliRunner().invoke(main, ["run", "--update", "--target", "postfix", str(trace)])
    assert result.exit_code == 2 and "reference MTA's replies only" in result.output
