"""`mailflow import` for a session captured in production: the sessions to one server picked out of a
capture that also holds the server's own deliveries, a capture cut off while tcpdump was writing, the
outcome the capture shows, the output name, and nothing lost when an import fails.

The captures are real where the behaviour is the network's (tcpdump on lo while the lab delivers a
message on to an Internet host); crafted with dpkt where the shape of the file is the point (a record
cut at a chosen byte, segments in a chosen order).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest
from capturing import Tcpdump, frame
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import targets
from harness.capture.importers import pcap
from harness.capture.importers.tcp import Reassembler
from harness.cli.importing import import_group
from harness.corpus.trace import load
from harness.lab import config as lab_config
from harness.lab.config import LabConfig
from harness.lab.placement import relocation
from harness.lab.runtime import Lab
from harness.run.runner import run_trace

CLIENT = ("127.0.0.200", 40000)
SERVER = ("127.0.0.11", 25)
HOP = ("192.0.2.25", 25)  # the server's next hop: the server is the client there
SYN, ACK, FIN = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN


def _session(
    client: tuple[str, int], server: tuple[str, int], dialogue: list[tuple[str, bytes]]
) -> list[bytes]:
    """The frames of one connection: handshake, the dialogue (C or S, bytes) in order, the client's FIN."""
    seq = {"C": 1001, "S": 5001}
    frames = [frame(client, server, 1000, SYN, b""), frame(server, client, 5000, SYN | ACK, b"")]
    for side, data in dialogue:
        source, destination = (client, server) if side == "C" else (server, client)
        frames.append(frame(source, destination, seq[side], ACK, data))
        seq[side] += len(data)
    frames.append(frame(client, server, seq["C"], FIN | ACK, b""))
    return frames


def _smtp(greeting: bytes, recipient: bytes) -> list[tuple[str, bytes]]:
    return [
        ("S", b"220 " + greeting + b" ESMTP\r\n"),
        ("C", b"EHLO mail-out.fabrikam.com\r\n"),
        ("S", b"250 " + greeting + b"\r\n"),
        ("C", b"MAIL FROM:<ann@fabrikam.com>\r\n"),
        ("S", b"250 2.1.0 ok\r\n"),
        ("C", b"RCPT TO:<" + recipient + b">\r\n"),
        ("S", b"250 2.1.5 ok\r\n"),
        ("C", b"DATA\r\n"),
        ("S", b"354 go\r\n"),
        ("C", b"Subject: hi\r\n\r\nhello\r\n.\r\n"),
        ("S", b"250 2.6.0 queued\r\n"),
        ("C", b"QUIT\r\n"),
        ("S", b"221 2.0.0 bye\r\n"),
    ]


def _write(path: Path, frames: list[bytes], kind: str = "pcap") -> None:
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f) if kind == "pcap" else dpkt.pcapng.Writer(f)
        for number, frame in enumerate(frames):
            writer.writepkt(frame, ts=1_700_000_000 + number / 100)


def _import(*arguments: str) -> Result:
    return CliRunner().invoke(import_group, list(arguments))


# --- the reassembler: what the review found ------------------------------------------------------


def test_where_segments_disagree_the_one_captured_first_wins() -> None:
    tcp = Reassembler(frozenset({25}))
    tcp.segment(CLIENT, SERVER, 1000, "S", b"", 0.0, "packet 1")
    tcp.segment(CLIENT, SERVER, 1005, "A", b"X\r\n", 1.0, "packet 2")  # bytes 4..7, captured first
    tcp.segment(CLIENT, SERVER, 1001, "A", b"NOOPY\r\nQUIT\r\n", 2.0, "packet 3")  # overlaps them later
    client, _ = tcp.connections[0].streams()
    assert bytes(client.data) == b"NOOPX\r\nQUIT\r\n"
    assert [client.where(0), client.where(4), client.where(7)] == ["packet 3", "packet 2", "packet 3"]


def test_a_capture_begun_mid_connection_counts_from_the_lowest_sequence_number() -> None:
    tcp = Reassembler(frozenset({25}))
    tcp.segment(CLIENT, SERVER, 7783, "A", b"QUIT\r\n", 1.0, "packet 1")  # captured before the earlier one
    tcp.segment(CLIENT, SERVER, 7777, "A", b"NOOP\r\n", 1.1, "packet 2")
    client, _ = tcp.connections[0].streams()
    assert bytes(client.data) == b"NOOP\r\nQUIT\r\n"
    assert "starts mid-way" in client.notes[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.binary(min_size=1, max_size=12)), max_size=12))
def test_the_stream_is_the_first_captured_byte_at_each_place_up_to_the_first_hole(
    segments: list[tuple[int, bytes]],
) -> None:
    tcp = Reassembler(frozenset({25}))
    tcp.segment(CLIENT, SERVER, 1000, "S", b"", 0.0, "packet 1")
    first: dict[int, int] = {}  # offset → the byte captured there first
    for number, (offset, payload) in enumerate(segments, 2):
        tcp.segment(CLIENT, SERVER, 1001 + offset, "A", payload, float(number), f"packet {number}")
        for index, byte in enumerate(payload):
            first.setdefault(offset + index, byte)
    expected = bytearray()
    while len(expected) in first:
        expected.append(first[len(expected)])
    client, _ = tcp.connections[0].streams()
    assert bytes(client.data) == bytes(expected)


# --- a capture cut off while tcpdump was writing -------------------------------------------------

COMPLETE = _session(CLIENT, SERVER, _smtp(b"mx.contoso.com", b"alice@contoso.com"))
OPEN = _session(("127.0.0.201", 40001), SERVER, _smtp(b"mx.contoso.com", b"bob@contoso.com"))[:-3]


@pytest.mark.parametrize(
    ("kind", "cut"),
    [
        ("pcap", 5),  # inside the last record's data
        ("pcap", len(OPEN[-1])),  # the last record's header intact, its data missing
        ("pcapng", 7),  # inside the last block
    ],
    ids=["pcap-inside-data", "pcap-data-missing", "pcapng-inside-block"],
)
def test_a_cut_capture_imports_the_sessions_that_ended_and_names_the_one_left_out(
    tmp_path: Path, kind: str, cut: int
) -> None:
    path = tmp_path / f"cut.{kind}"
    _write(path, COMPLETE + OPEN, kind)
    path.write_bytes(path.read_bytes()[:-cut])
    capture = pcap.read(path)
    last = len(COMPLETE) + len(OPEN)
    assert capture.cut == f"packet {last}"
    assert [s.client for s in capture.sessions] == ["127.0.0.200"]
    assert capture.sessions[0].exchanges[-1].reply == ["221 2.0.0 bye"]
    out = tmp_path / "traces" / "cut.yaml"
    result = _import("pcap", str(path), "-o", str(out), "--server", "EX1")
    assert result.exit_code == 0, result.output
    assert f"warning: {path}: the file ends inside packet {last}" in result.output
    assert (
        f"warning: {path}: left out the session 127.0.0.201:40001 to 127.0.0.11:25 (from packet "
        f"{len(COMPLETE) + 1}): it was still open at the cut" in result.output
    )
    assert len(load(out).sessions) == 1
    assert "RCPT TO:<alice@contoso.com>" in out.read_text() and "bob@" not in out.read_text()


def test_a_whole_capture_gives_no_warning(tmp_path: Path) -> None:
    path = tmp_path / "whole.pcapng"
    _write(path, COMPLETE + OPEN, "pcapng")
    capture = pcap.read(path)
    assert capture.cut is None and capture.warnings == [] and len(capture.sessions) == 2


# --- sessions to several servers -----------------------------------------------------------------

BOTH = COMPLETE + _session((SERVER[0], 50000), HOP, _smtp(b"mx.partner.example", b"alice@contoso.com"))


def test_sessions_to_several_servers_are_refused_with_the_addresses_found(tmp_path: Path) -> None:
    path = tmp_path / "both.pcap"
    _write(path, BOTH)
    result = _import("pcap", str(path), "-o", str(tmp_path / "t.yaml"), "--server", "EX1")
    assert result.exit_code == 2
    assert (
        "the capture holds sessions to 2 servers: 127.0.0.11 (1 session to it, and it opened 1 session "
        "itself); 192.0.2.25 (1 session to it); choose the production server with --server-addr"
    ) in result.output
    assert not (tmp_path / "t.yaml").exists()


def test_a_server_address_with_no_session_lists_the_servers(tmp_path: Path) -> None:
    path = tmp_path / "both.pcap"
    _write(path, BOTH)
    args = ["pcap", str(path), "-o", str(tmp_path / "t.yaml"), "--server", "EX1"]
    result = _import(*args, "--server-addr", "10.9.9.9")
    assert result.exit_code == 2 and "no session to 10.9.9.9 in the capture" in result.output
    result = _import(*args, "--server-addr", "mx.example")
    assert result.exit_code == 2 and "'mx.example' is no IP address" in result.output


# --- the output ----------------------------------------------------------------------------------


def test_an_output_that_is_neither_a_trace_file_nor_a_folder_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.pcap"
    _write(path, COMPLETE)
    result = _import("pcap", str(path), "-o", str(tmp_path / "x.txt"), "--server", "EX1")
    assert result.exit_code == 2
    assert "OUT must be a trace file ending in .yaml or .yml" in result.output
    assert list(tmp_path.iterdir()) == [path]


def test_a_failed_import_puts_back_the_file_it_would_have_replaced(tmp_path: Path) -> None:
    path = tmp_path / "s.pcap"
    _write(path, COMPLETE)
    out = tmp_path / "traces" / "bug.yaml"
    out.parent.mkdir()
    out.write_text("id: mine\n# a trace someone wrote by hand\n")
    # An id the trace schema refuses: the trace is written, does not load back, and is taken away.
    result = _import("pcap", str(path), "-o", str(out), "--server", "EX1", "--id", "Not An Id!")
    assert result.exit_code == 2, result.output
    assert "does not load" in result.output
    assert out.read_text() == "id: mine\n# a trace someone wrote by hand\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["bug.yaml"]


# --- a real capture: a message relayed on to an Internet host ------------------------------------


@pytest.fixture
def config() -> LabConfig:
    base, offset = relocation()
    return lab_config.load(lab_config.lab_path("contoso"), base=base, port_offset=offset)


@pytest.fixture
def relayed(tmp_path: Path, config: LabConfig) -> Iterator[Path]:
    """A capture of relay-host handing EX1 a message for nomx.net, and EX1 delivering it to nomx.net."""
    capture = tmp_path / "relay.pcap"
    vs = config.organization.server("EX1").default_virtual_server
    with Lab(config) as lab:
        if shutil.which("swaks") is None:
            pytest.skip("swaks is not installed (scripts/install_mtas.sh installs it)")
        network = config.host("internet").address.rsplit(".", 2)[0] + ".0.0/16"
        tcpdump = Tcpdump(capture, f"tcp port {vs.port} and net {network}")
        try:
            subprocess.run(
                ["swaks", "--server", f"{vs.address}:{vs.port}", "--local-interface",
                 config.host("relay-host").address, "--helo", "monitor.contoso.com",
                 "--from", "monitor@contoso.com", "--to", "ops@nomx.net"],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=True,
            )  # fmt: skip
            assert lab.settle(timeout=20)
        finally:
            tcpdump.stop_when(closed=2, ports=[vs.port])
    yield capture


def test_a_real_capture_keeps_the_sessions_to_the_server_and_expects_the_delivery_it_shows(
    tmp_path: Path, config: LabConfig, relayed: Path
) -> None:
    ex1 = config.organization.server("EX1").default_virtual_server
    nomx = config.host("nomx-host")
    out = tmp_path / "traces" / "bug.yaml"
    base = ["pcap", str(relayed), "-o", str(out), "--server", "EX1", "--client", "relay-host"]
    base += ["--port", str(ex1.port)]
    refused = _import(*base)
    assert (
        refused.exit_code == 2
        and f"{ex1.address} (1 session to it, and it opened 1 session" in refused.output
    )
    result = _import(*base, "--server-addr", ex1.address, "--outcome")
    assert result.exit_code == 0, result.output
    assert f"left out 1 session the server opened itself (its deliveries to {nomx.address})" in result.output
    said = f"the capture shows it handed on to nomx.net ({nomx.address}:{ex1.port}), the lab's nomx-host"
    assert said + ", as the lab routes it" in result.output
    trace = load(out)
    assert len(trace.sessions) == 1 and said in trace.description
    assert trace.outcome == {
        "delivered": [
            {"sink": "nomx-host", "peer": "EX1", "sender": "monitor@contoso.com", "rcpt": "ops@nomx.net"}
        ],
        "nothing_else_delivered": True,
    }
    result_run = run_trace(trace, targets.REFERENCE)
    assert result_run.passed, "\n".join(result_run.failures())


def test_a_capture_without_an_accepted_message_adds_no_outcome(tmp_path: Path) -> None:
    path = tmp_path / "refused.pcap"
    refused = [(side, data.replace(b"250 2.1.5 ok", b"550 5.7.1 no relay")) for side, data in
               _smtp(b"mx.contoso.com", b"nancy@northwind.example")]  # fmt: skip
    _write(path, _session(CLIENT, SERVER, refused))
    out = tmp_path / "traces" / "refused.yaml"
    result = _import("pcap", str(path), "-o", str(out), "--server", "EX1", "--outcome")
    assert result.exit_code == 0, result.output
    assert "the capture shows no message accepted after DATA: no outcome is added" in result.output
    assert load(out).outcome == {}


def test_a_next_hop_the_capture_shows_replaces_the_lab_s_route_and_an_unknown_one_is_named(
    tmp_path: Path,
) -> None:
    """Production handed mail for nomx.net to mx.partner.example, where the lab sends it to nomx.net's own
    host: the trace expects what production did, and the replay in the lab shows the difference."""
    inbound = _session(CLIENT, SERVER, _smtp(b"mx.contoso.com", b"ops@nomx.net"))
    partner = _session((SERVER[0], 50000), HOP, _smtp(b"mx.partner.example", b"ops@nomx.net"))
    unknown = _session((SERVER[0], 50001), ("192.0.2.26", 25), _smtp(b"mx.elsewhere.test", b"ops@nomx.net"))
    for name, frames, said, entry in [
        ("partner", inbound + partner, "192.0.2.25:25), the lab's partner-mx (the lab would route it to "
         "nomx-host)", {"sink": "partner-mx", "sender": "ann@fabrikam.com", "rcpt": "ops@nomx.net"}),
        ("unknown", inbound + unknown, "mx.elsewhere.test (192.0.2.26:25), which is no host of the lab",
         {"sink": "nomx-host", "peer": "EX1", "sender": "ann@fabrikam.com", "rcpt": "ops@nomx.net"}),
    ]:  # fmt: skip
        path = tmp_path / f"{name}.pcap"
        _write(path, frames)
        out = tmp_path / "traces" / f"{name}.yaml"
        result = _import("pcap", str(path), "-o", str(out), "--server", "EX1", "--client", "relay-host",
                         "--server-addr", SERVER[0], "--outcome")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert said in result.output
        assert load(out).outcome == {"delivered": [entry], "nothing_else_delivered": True}


def test_a_capture_of_another_mta_replays_codes_only_with_the_delivery_checked(tmp_path: Path) -> None:
    """A crafted capture whose replies are worded as no lab server words them: with --codes-only the
    trace expects the codes and enhanced codes, and with --outcome Alice's mailbox on EX1."""
    path = tmp_path / "other.pcap"
    _write(path, COMPLETE)
    out = tmp_path / "traces" / "other.yaml"
    result = _import("pcap", str(path), "-o", str(out), "--server", "EX1", "--codes-only", "--outcome")
    assert result.exit_code == 0, result.output
    trace = load(out)
    text = out.read_text()
    assert "masked" not in text and "expect: {code: 250, enhanced: 2.1.5}" in text
    assert "expect: 221" in text  # 2.0.0 says nothing another server must repeat
    assert trace.outcome == {
        "delivered": [{"mailbox": "alice@contoso.com", "server": "EX1", "sender": "ann@fabrikam.com"}],
        "nothing_else_delivered": True,
    }
    ran = run_trace(trace, targets.REFERENCE)
    assert ran.passed, "\n".join(ran.failures())


def _mailflow(cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """The real `mailflow` command, as a user runs it, in `cwd`."""
    command = Path(sys.executable).with_name("mailflow")
    return subprocess.run(
        [str(command), *arguments], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_walk_through_with_the_mailflow_command(tmp_path: Path, config: LabConfig, relayed: Path) -> None:
    """Capture, import with --server-addr and --outcome, run: what the README shows."""
    ex1 = config.organization.server("EX1").default_virtual_server
    imported = _mailflow(
        tmp_path, "import", "pcap", str(relayed), "--port", str(ex1.port), "-o", "traces/bug.yaml",
        "--server", "EX1", "--client", "relay-host", "--server-addr", ex1.address, "--outcome",
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert "wrote traces/bug.yaml" in imported.stdout
    assert "left out 1 session the server opened itself" in imported.stderr
    ran = _mailflow(tmp_path, "run", "--reports", str(tmp_path / "reports"), "traces/bug.yaml")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "1 passed" in ran.stdout
