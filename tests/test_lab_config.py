"""Lab files: every mistake is a SourceError naming the line and field; relocation moves the whole world;
relocated labs run side by side."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import dns.message
import dns.query
import pytest
from click.testing import CliRunner
from rich.console import Console

from harness.cli import app
from harness.lab import config as lab_config
from harness.lab import placement
from harness.lab.config import LabConfig
from harness.lab.runtime import Lab, LabError
from harness.yamlsource import SourceError
from reference_mta.topology import PolicyDomain
from tests.sourcetext import line_with, replace_once, write

ROOT = Path(__file__).resolve().parents[1]
CONTOSO = ROOT / "fixtures" / "labs" / "contoso.yaml"
LDIF = ROOT / "fixtures" / "directory" / "contoso.ldif"


def contoso_text() -> str:
    text = CONTOSO.read_text(encoding="utf-8")
    assert text.count("directory: ../directory/contoso.ldif") == 1
    return text.replace("../directory/contoso.ldif", str(LDIF))


def mutate(text: str, old: str, new: str) -> str:
    return replace_once(text, old, new)


def write_lab(tmp_path: Path, text: str) -> Path:
    return write(tmp_path / "labs" / "contoso.yaml", text)


def load_error(
    tmp_path: Path, text: str, *, base: str | None = None, port_offset: int | None = None
) -> SourceError:
    path = write_lab(tmp_path, text)
    with pytest.raises(SourceError) as info:
        lab_config.load(path, base=base, port_offset=port_offset)
    assert info.value.path == str(path)
    return info.value


def assert_error(error: SourceError, line: int, field: str, message: str) -> None:
    assert (error.line, error.field) == (line, field), error
    assert message in error.message
    assert str(error).startswith(f"{error.path}:{line}: {field}: ")


@pytest.fixture
def lab_file(tmp_path: Path) -> Path:
    return write_lab(tmp_path, contoso_text())


# --- the copy is valid ------------------------------------------------------------------------------


def test_copy_loads_with_the_file_base_and_offset(lab_file: Path) -> None:
    config = lab_config.load(lab_file)
    assert (config.name, config.base, config.port_offset) == (
        "contoso",
        ipaddress.IPv4Address("127.77.0.0"),
        10000,
    )
    assert config.host("EX1").address == "127.77.0.11"
    assert config.global_catalog.directory == LDIF


# --- network base ------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["10.0.0.0", "192.168.1.0"])
def test_non_loopback_base_in_the_file_is_refused(tmp_path: Path, base: str) -> None:
    text = mutate(contoso_text(), "base: 127.77.0.0", f"base: {base}")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "base:"),
        "network.base",
        f"{base} (network.base) is not a loopback address: a lab only binds inside 127.0.0.0/8",
    )


def test_non_loopback_relocation_is_refused(tmp_path: Path) -> None:
    text = contoso_text()
    error = load_error(tmp_path, text, base="10.1.0.0")
    assert_error(
        error,
        line_with(text, "base:"),
        "network.base",
        "10.1.0.0 (the base given on the command line) is not a loopback address",
    )
    assert "loopback" in error.message


def test_base_that_is_not_an_address(tmp_path: Path) -> None:
    text = mutate(contoso_text(), "base: 127.77.0.0", "base: 127.77.0")
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, "base:"), "network.base", "'127.77.0' is not an IPv4 address")


def test_port_offset_without_room_for_the_ports(tmp_path: Path) -> None:
    text = contoso_text()
    error = load_error(tmp_path, text, port_offset=65000)
    assert_error(
        error,
        line_with(text, "port_offset:"),
        "network.port_offset",
        "port offset 65000 leaves no room for the lab's ports",
    )


OVERFLOW = ("fqdn: ex1.contoso.com\n      addr: 11\n", "fqdn: ex1.contoso.com\n      addr: 300\n")


def test_host_address_overflowing_loopback_names_the_line(tmp_path: Path) -> None:
    text = mutate(contoso_text(), *OVERFLOW)
    error = load_error(tmp_path, text, base="127.255.255.0")
    assert_error(
        error,
        line_with(text, "addr: 300"),
        "organization.servers[0].addr",
        "base 127.255.255.0 + 300 = 128.0.0.44 (after relocation) is outside 127.0.0.0/8",
    )


# --- hosts and addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lan", "ex2"], ids=["client", "server-other-case"])
def test_duplicate_host_name(tmp_path: Path, name: str) -> None:
    text = mutate(contoso_text(), "{name: attacker,", f"{{name: {name},")
    error = load_error(tmp_path, text)
    assert_error(
        error, line_with(text, "unknown.tailspin.example"), "clients[3]", f"duplicate host name {name!r}"
    )


@pytest.mark.parametrize(("addr", "owner"), [(202, "relay-host"), (11, "EX1")])
def test_two_hosts_with_the_same_addr(tmp_path: Path, addr: int, owner: str) -> None:
    text = mutate(
        contoso_text(), "unknown.tailspin.example, addr: 203", f"unknown.tailspin.example, addr: {addr}"
    )
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "unknown.tailspin.example"),
        "clients[3].addr",
        f"address 127.77.0.{addr} is already used by {owner!r}",
    )


def test_virtual_server_addr_clashing_with_another_server(tmp_path: Path) -> None:
    # EX1's second virtual server on EX2's address: both would bind 127.77.0.21:10025.
    text = mutate(contoso_text(), "          addr: 12\n", "          addr: 21\n")
    error = load_error(tmp_path, text)
    assert error.field == "organization.servers[1].addr"  # EX2 comes after EX1's virtual servers
    assert "address 127.77.0.21 is already used by 'EX1/Open Relay SMTP Virtual Server'" in error.message


def test_a_literal_smart_host_outside_the_lab_is_refused(tmp_path: Path) -> None:
    text = mutate(contoso_text(), 'smart_host: "[isp-smarthost]"', 'smart_host: "[8.8.8.8]"')
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "8.8.8.8"),
        "organization.servers[2].virtual_servers[0].smart_host",
        "smart host [8.8.8.8] is not a lab address",
    )


def test_two_hosts_with_the_same_fqdn(tmp_path: Path) -> None:
    text = mutate(contoso_text(), "fqdn: mx.adatum.com", "fqdn: mx.partner.example")
    error = load_error(tmp_path, text)
    assert "FQDN mx.partner.example is already the name of 'partner-mx'" in error.message


def test_dns_server_addr_clashing_with_a_server(tmp_path: Path) -> None:
    text = mutate(contoso_text(), "  addr: 53\n", "  addr: 11\n")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        text.splitlines().index("      addr: 11") + 1,
        "organization.servers[0].addr",
        "address 127.77.0.11 is already used by 'dns'",
    )


# --- organization cross-references ----------------------------------------------------------------


def test_server_in_a_routing_group_that_does_not_exist(tmp_path: Path) -> None:
    text = mutate(
        contoso_text(), "routing_group: Tokyo\n      stores:", "routing_group: Osaka\n      stores:"
    )
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "routing_group: Osaka"),
        "organization.servers[3].routing_group",
        "no routing group named 'Osaka'",
    )


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        (
            'bridgeheads: [EX1]\n      address_spaces: [{type: SMTP, pattern: "*"',
            'bridgeheads: [EX9]\n      address_spaces: [{type: SMTP, pattern: "*"',
            "organization.connectors[3].bridgeheads[0]",
        ),
        (
            "local_bridgeheads: [EX2]",
            "local_bridgeheads: [EX9]",
            "organization.connectors[1].local_bridgeheads[0]",
        ),
        (
            "remote_bridgeheads: [EX4]",
            "remote_bridgeheads: [EX9]",
            "organization.connectors[1].remote_bridgeheads[0]",
        ),
        ("      server: EX4", "      server: EX9", "organization.connectors[7].server"),
    ],
    ids=["smtp", "rgc-local", "rgc-remote", "gateway"],
)
def test_connector_bridgehead_naming_no_server(tmp_path: Path, old: str, new: str, field: str) -> None:
    text = mutate(contoso_text(), old, new)
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, "EX9"), field, "no server named 'EX9'")


def test_routing_group_master_naming_no_server(tmp_path: Path) -> None:
    text = mutate(contoso_text(), "{name: Tokyo, master: EX4}", "{name: Tokyo, master: EX9}")
    error = load_error(tmp_path, text)
    assert_error(
        error, line_with(text, "EX9"), "organization.routing_groups[2].master", "no server named 'EX9'"
    )


def test_rgc_connecting_a_group_to_itself(tmp_path: Path) -> None:
    text = mutate(contoso_text(), "connects_to: Tokyo", "connects_to: Seattle")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "connects_to: Seattle"),
        "organization.connectors[1].connects_to",
        "a routing group connector must join two routing groups",
    )


def test_rgc_to_a_routing_group_that_does_not_exist(tmp_path: Path) -> None:
    text = mutate(contoso_text(), "connects_to: Tokyo", "connects_to: Osaka")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "connects_to: Osaka"),
        "organization.connectors[1].connects_to",
        "no routing group named 'Osaka'",
    )


# --- DNS records -----------------------------------------------------------------------------------


def test_dns_record_host_naming_no_host(tmp_path: Path) -> None:
    text = mutate(contoso_text(), "type: A, host: EX1}", "type: A, host: EX9}")
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, "host: EX9"), "dns.records[2].host", "no lab host named 'EX9'")


def test_a_record_outside_the_lab(tmp_path: Path) -> None:
    text = mutate(contoso_text(), "type: A, host: EX1}", "type: A, value: 8.8.8.8}")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "8.8.8.8"),
        "dns.records[2].value",
        "8.8.8.8 is not a lab address: DNS may only point inside the lab",
    )


def test_a_record_that_is_not_an_address(tmp_path: Path) -> None:
    text = mutate(contoso_text(), "type: A, host: EX1}", "type: A, value: ex1.contoso.com}")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "value: ex1.contoso.com"),
        "dns.records[2].value",
        "'ex1.contoso.com' is not an IPv4 address",
    )


@pytest.mark.parametrize(
    ("old", "new", "needle", "field", "message"),
    [
        (
            'value: "10 mx.adatum.com."',
            'value: "ten mx.adatum.com."',
            "ten mx.adatum.com.",
            "dns.records[10].value",
            "'ten mx.adatum.com.' is not a valid MX value: expecting an integer",
        ),
        (
            'value: "10 mx.adatum.com."',
            'value: "10 mx..adatum.com."',
            "mx..adatum",
            "dns.records[10].value",
            "'10 mx..adatum.com.' is not a valid MX value: A DNS label is empty.",
        ),
        (
            'value: "\\"v=spf1 mx -all\\""',
            'value: "\\"v=spf1 mx -all"',
            "v=spf1",
            "dns.records[6].value",
            "is not a valid TXT value: ",
        ),
    ],
    ids=["mx-preference", "mx-exchange", "txt-unclosed-quote"],
)
def test_dns_record_value_the_dns_server_cannot_parse(
    tmp_path: Path, old: str, new: str, needle: str, field: str, message: str
) -> None:
    # Found when the lab is loaded (mailflow check), not as a bare ValueError when it starts.
    text = mutate(contoso_text(), old, new)
    error = load_error(tmp_path, text)
    assert_error(error, line_with(text, needle), field, message)


def test_dns_record_name_that_is_not_a_name(tmp_path: Path) -> None:
    text = mutate(contoso_text(), "{name: adatum.com,", "{name: adatum..com,")
    error = load_error(tmp_path, text)
    assert_error(
        error, line_with(text, "adatum..com"), "dns.records[10].name", "'adatum..com' is not a DNS name"
    )


def test_unquoted_txt_is_one_literal_string(tmp_path: Path) -> None:
    # Unquoted TXT is literal text, as the DNS server serves it: an odd quote inside is no error.
    text = mutate(contoso_text(), 'value: "\\"v=spf1 mx -all\\""', "value: 'v=spf1 \"mx -all'")
    config = lab_config.load(write_lab(tmp_path, text))
    assert any(r.rtype == "TXT" and r.value == 'v=spf1 "mx -all' for r in config.records)


# --- mailflow check on a lab file ------------------------------------------------------------------


def check_output(monkeypatch: pytest.MonkeyPatch, path: Path) -> tuple[int, str]:
    monkeypatch.setattr(app, "console", Console(width=10_000))
    result = CliRunner().invoke(app.main, ["check", str(path)])
    return result.exit_code, result.output


def test_mailflow_check_passes_the_lab(monkeypatch: pytest.MonkeyPatch, lab_file: Path) -> None:
    assert check_output(monkeypatch, lab_file) == (0, f"ok {lab_file}\n")


def test_mailflow_check_reports_a_bad_dns_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = mutate(contoso_text(), 'value: "10 mx.adatum.com."', 'value: "ten mx.adatum.com."')
    path = write_lab(tmp_path, text)
    code, output = check_output(monkeypatch, path)
    assert code == 2  # invalid input
    assert output.startswith(f"error {path}:{line_with(text, 'ten mx')}: dns.records[10].value: ")


def test_mailflow_check_parses_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ldif = tmp_path / "broken.ldif"
    ldif.write_bytes(LDIF.read_bytes() + b"\ndn: CN=Broken,DC=contoso,DC=com\ncn: Broken\nno colon here\n")
    broken_line = ldif.read_bytes().count(b"\n")
    path = write_lab(tmp_path, contoso_text().replace(str(LDIF), str(ldif)))
    code, output = check_output(monkeypatch, path)
    assert code == 2  # invalid input
    assert output.startswith(
        f"error {ldif}:{broken_line}: expected 'attribute: value', found 'no colon here'"
    )


# --- virtual servers -------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["relay-hots", "127.0.0.0/33"])
def test_relay_list_entry_neither_host_nor_network(tmp_path: Path, entry: str) -> None:
    text = mutate(contoso_text(), "only_list: [relay-host]", f"only_list: [{entry}]")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, f"only_list: [{entry}]"),
        "organization.servers[0].virtual_servers[0].relay.only_list[0]",
        f"{entry!r} is neither a lab host (optionally host/prefix) nor an IPv4 network",
    )


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        (
            'smart_host: "[isp-smarthost]"',
            'smart_host: "[isp-smarthots]"',
            "servers[2].virtual_servers[0].smart_host",
        ),
        (
            'smart_hosts: ["[isp-smarthost]"]',
            'smart_hosts: ["[isp-smarthots]"]',
            "connectors[6].delivery.smart_hosts[0]",
        ),
    ],
    ids=["virtual-server", "connector"],
)
def test_bracketed_smart_host_naming_no_host(tmp_path: Path, old: str, new: str, field: str) -> None:
    text = mutate(contoso_text(), old, new)
    error = load_error(tmp_path, text)
    assert_error(
        error, line_with(text, "isp-smarthots"), f"organization.{field}", "'isp-smarthots' is not a lab host"
    )


def test_unknown_field_in_a_virtual_server(tmp_path: Path) -> None:
    text = mutate(contoso_text(), "relay: {open: true}\n", "relay: {open: true}\n          max_msgs: 5\n")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "max_msgs: 5"),
        "organization.servers[0].virtual_servers[1].max_msgs",
        "unknown field 'max_msgs' (expected one of: addr, anonymous, auth_requires_tls, basic_auth,",
    )


# --- files -----------------------------------------------------------------------------------------


def test_missing_ldif(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "contoso.ldif"
    text = mutate(contoso_text(), str(LDIF), str(missing))
    error = load_error(tmp_path, text)
    assert_error(
        error,
        line_with(text, "contoso.ldif"),
        "global_catalog.directory",
        f"directory fixture {missing} does not exist",
    )


def test_relative_ldif_is_resolved_next_to_the_lab_file(tmp_path: Path) -> None:
    # The original relative path, in a copy that has no ../directory beside it.
    text = CONTOSO.read_text(encoding="utf-8")
    error = load_error(tmp_path, text)
    expected = (tmp_path / "directory" / "contoso.ldif").resolve()
    assert_error(
        error,
        line_with(text, "contoso.ldif"),
        "global_catalog.directory",
        f"directory fixture {expected} does not exist",
    )


def test_an_edited_lab_file_is_loaded_again(tmp_path: Path) -> None:
    # A process keeps what it loaded: an edit made in between must not be missed, even one that keeps
    # the file's size and lands within the same clock tick.
    path = write_lab(tmp_path, contoso_text())
    first = lab_config.load(path)
    assert lab_config.load(path) is first
    edited = mutate(contoso_text(), "\nname: contoso\n", "\nname: contosa\n")
    path.write_text(edited, encoding="utf-8")
    assert lab_config.load(path).name == "contosa"
    broken = mutate(edited, "\nname: contosa\n", "\nname: [contosa\n")
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(SourceError) as info:
        lab_config.load(path)
    assert info.value.message.startswith("YAML syntax error"), info.value


def test_an_ldif_removed_after_the_lab_was_loaded_is_named(tmp_path: Path) -> None:
    ldif = tmp_path / "directory.ldif"
    ldif.write_bytes(LDIF.read_bytes())
    text = mutate(contoso_text(), str(LDIF), str(ldif))
    path = write_lab(tmp_path, text)
    lab_config.load(path)
    ldif.unlink()
    with pytest.raises(SourceError) as info:
        lab_config.load(path)
    assert (info.value.field, info.value.message) == (
        "global_catalog.directory",
        f"directory fixture {ldif} does not exist",
    )


# --- relocation ------------------------------------------------------------------------------------


@pytest.fixture
def relocated(lab_file: Path) -> LabConfig:
    return lab_config.load(lab_file, base="127.88.0.0", port_offset=23000)


def test_relocation_moves_every_host(lab_file: Path, relocated: LabConfig) -> None:
    original = lab_config.load(lab_file)
    assert (relocated.base, relocated.port_offset) == (ipaddress.IPv4Address("127.88.0.0"), 23000)
    assert relocated.host("EX1").address == "127.88.0.11"
    assert relocated.hosts.keys() == original.hosts.keys()
    for key, host in original.hosts.items():
        number = int(ipaddress.IPv4Address(host.address)) - int(original.base)
        assert relocated.hosts[key].address == str(relocated.base + number), key


def test_relocation_moves_dns(relocated: LabConfig) -> None:
    assert (relocated.dns_address, relocated.dns_port) == ("127.88.0.53", 23053)
    a_records = {(r.name, r.value) for r in relocated.records if r.rtype == "A"}
    assert ("mail.contoso.com", "127.88.0.11") in a_records
    assert ("ex1.contoso.com", "127.88.0.11") in a_records
    assert ("smarthost.isp.example", "127.88.0.102") in a_records
    assert all(
        ipaddress.IPv4Address(value) in ipaddress.IPv4Network("127.88.0.0/16") for _, value in a_records
    )
    ptr = {(r.name, r.value) for r in relocated.records if r.rtype == "PTR"}
    assert ("11.0.88.127.in-addr.arpa", "ex1.contoso.com.") in ptr


def test_relocation_moves_the_global_catalog(relocated: LabConfig) -> None:
    gc = relocated.global_catalog
    assert (gc.address, gc.port) == ("127.88.0.3", 389 + 23000)


def test_relocation_moves_virtual_servers(relocated: LabConfig) -> None:
    endpoints = {
        (vs.server, vs.name): (vs.address, vs.port)
        for server in relocated.organization.servers
        for vs in server.virtual_servers
    }
    assert endpoints == {
        ("EX1", "Default SMTP Virtual Server"): ("127.88.0.11", 23025),
        ("EX1", "Open Relay SMTP Virtual Server"): ("127.88.0.12", 23025),
        ("EX1", "Filtered SMTP Virtual Server"): ("127.88.0.13", 23025),
        ("EX1", "Restricted SMTP Virtual Server"): ("127.88.0.14", 23025),
        ("EX1", "Strict SMTP Virtual Server"): ("127.88.0.15", 23025),
        ("EX1", "Directory SMTP Virtual Server"): ("127.88.0.16", 23025),
        ("EX1", "Members Only SMTP Virtual Server"): ("127.88.0.17", 23025),
        ("EX1", "Lenient TLS SMTP Virtual Server"): ("127.88.0.18", 23025),
        ("EX1", "Resolving SMTP Virtual Server"): ("127.88.0.19", 23025),
        ("EX2", "Default SMTP Virtual Server"): ("127.88.0.21", 23025),
        ("EX2", "Internal SMTP Virtual Server"): ("127.88.0.22", 23025),
        ("EX3", "Default SMTP Virtual Server"): ("127.88.0.31", 23025),
        ("EX4", "Default SMTP Virtual Server"): ("127.88.0.41", 23025),
    }
    assert relocated.port(25) == 23025


def test_relocation_moves_relay_lists_and_bracketed_smart_hosts(relocated: LabConfig) -> None:
    organization = relocated.organization
    ex1 = organization.server("EX1").default_virtual_server
    assert ex1.relay.only_list == (ipaddress.IPv4Network("127.88.0.202/32"),)
    assert ex1.relay.permits_address("127.88.0.202")
    assert not ex1.relay.permits_address("127.77.0.202")
    assert organization.server("EX3").default_virtual_server.smart_host == "[127.88.0.102]"
    connectors = {c.name: c for c in organization.connectors}
    assert connectors["Adatum Relay SMTP Connector"].smart_hosts == ("[127.88.0.102]",)
    # An FQDN smart host is resolved through the lab DNS, so it stays as it is.
    assert connectors["Example TLD SMTP Connector"].smart_hosts == ("smarthost.isp.example",)


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No relocation variables: this test run may itself be an xdist worker, or have a base set."""
    for name in ("MAILFLOW_LAB_BASE", "MAILFLOW_PORT_OFFSET", "PYTEST_XDIST_WORKER"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("base", "worker", "expected"),
    [
        (None, None, None),
        (None, "gw0", "127.101.0.0"),
        (None, "gw3", "127.104.0.0"),
        ("127.50.0.0", None, "127.50.0.0"),
        ("127.50.0.0", "gw0", "127.50.0.0"),
        ("127.50.0.0", "gw3", "127.53.0.0"),
        ("127.50.7.0", "gw12", "127.62.7.0"),
        ("127.250.0.0", "gw5", "127.255.0.0"),
    ],
)
def test_relocation_gives_each_xdist_worker_its_own_block(
    environment: pytest.MonkeyPatch, base: str | None, worker: str | None, expected: str | None
) -> None:
    if base is not None:
        environment.setenv("MAILFLOW_LAB_BASE", base)
    if worker is not None:
        environment.setenv("PYTEST_XDIST_WORKER", worker)
    assert placement.relocation() == (expected, None)


def test_relocation_passes_the_port_offset(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("MAILFLOW_PORT_OFFSET", "23000")
    environment.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert placement.relocation() == ("127.102.0.0", 23000)


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ("127.250.0.0", r"MAILFLOW_LAB_BASE=127\.250\.0\.0 moved up 6 .* gw6 leaves 127\.0\.0\.0/8"),
        ("10.0.0.0", r"MAILFLOW_LAB_BASE=10\.0\.0\.0 is outside 127\.0\.0\.0/8"),
        ("127.77", r"MAILFLOW_LAB_BASE='127\.77' is not an IPv4 address"),
    ],
    ids=["overflow", "not-loopback", "not-an-address"],
)
def test_relocation_refuses_a_base_it_cannot_move(
    environment: pytest.MonkeyPatch, base: str, message: str
) -> None:
    environment.setenv("MAILFLOW_LAB_BASE", base)
    environment.setenv("PYTEST_XDIST_WORKER", "gw6")
    with pytest.raises(ValueError, match=message):
        placement.relocation()


# --- organization ----------------------------------------------------------------------------------


def test_reciprocal_routing_group_connectors(lab_file: Path) -> None:
    organization = lab_config.load(lab_file).organization
    rgcs = {
        c.name: (c.routing_group, c.connects_to, c.local_bridgeheads, c.remote_bridgeheads, c.cost)
        for c in organization.connectors
        if c.kind == "routing_group"
    }
    assert rgcs == {
        "Seattle-London RGC": ("Seattle", "London", ("EX1",), ("EX3",), 10),
        "Seattle-London RGC (reciprocal)": ("London", "Seattle", ("EX3",), ("EX1",), 10),
        "Seattle-Tokyo RGC": ("Seattle", "Tokyo", ("EX2",), ("EX4",), 2),
        "Seattle-Tokyo RGC (reciprocal)": ("Tokyo", "Seattle", ("EX4",), ("EX2",), 2),
        "Tokyo-London RGC": ("Tokyo", "London", ("EX4",), ("EX3",), 3),
        "Tokyo-London RGC (reciprocal)": ("London", "Tokyo", ("EX3",), ("EX4",), 3),
    }


def test_reciprocal_connector_can_be_turned_off(tmp_path: Path) -> None:
    text = mutate(contoso_text(), "      cost: 10\n", "      cost: 10\n      reciprocal: false\n")
    organization = lab_config.load(write_lab(tmp_path, text)).organization
    names = {c.name for c in organization.connectors}
    assert "Seattle-London RGC" in names
    assert "Seattle-London RGC (reciprocal)" not in names
    assert "Seattle-Tokyo RGC (reciprocal)" in names


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("contoso.com", PolicyDomain("contoso.com", authoritative=True)),
        ("Contoso.COM", PolicyDomain("contoso.com", authoritative=True)),
        ("litware.com", PolicyDomain("litware.com", authoritative=True)),
        ("shared.contoso.com", PolicyDomain("shared.contoso.com", authoritative=False)),
        ("fabrikam.com", None),
        ("sub.contoso.com", None),
    ],
)
def test_policy_domain(lab_file: Path, domain: str, expected: PolicyDomain | None) -> None:
    assert lab_config.load(lab_file).organization.policy_domain(domain) == expected


# --- relocated labs side by side ---------------------------------------------------------------------

OFFSET = 24000


def banner(address: str, port: int) -> bytes:
    with socket.create_connection((address, port), timeout=2) as sock, sock.makefile("rb") as reader:
        return reader.readline()


def resolve(config: LabConfig, name: str) -> set[str]:
    query = dns.message.make_query(name, "A")
    answer = dns.query.udp(query, config.dns_address, port=config.dns_port, timeout=2)
    return {item.address for rrset in answer.answer for item in rrset}


def test_two_relocated_labs_run_side_by_side(lab_file: Path) -> None:
    first = lab_config.load(lab_file, base="127.91.0.0", port_offset=OFFSET)
    second = lab_config.load(lab_file, base="127.92.0.0", port_offset=OFFSET)
    with Lab(first) as a, Lab(second) as b:
        for lab in (a, b):
            for vs in lab.config.organization.server("EX1").virtual_servers:
                assert vs.port == 25 + OFFSET
                assert banner(vs.address, vs.port).startswith(
                    f"220 {vs.fqdn or 'ex1.contoso.com'} ".encode()
                ), vs
        assert resolve(first, "mail.contoso.com") == {"127.91.0.11"}
        assert resolve(second, "mail.contoso.com") == {"127.92.0.11"}


async def _nothing() -> None:
    return None


def test_starting_a_lab_on_ports_already_taken_fails_cleanly(lab_file: Path) -> None:
    config = lab_config.load(lab_file, base="127.93.0.0", port_offset=OFFSET)
    ex1 = config.organization.server("EX1").default_virtual_server
    with Lab(config):
        clash = Lab(lab_config.load(lab_file, base="127.93.0.0", port_offset=OFFSET))
        with pytest.raises(LabError, match=r"fake DNS cannot listen on 127\.93\.0\.53:\d+: .*in use"):
            clash.start()
        # The failed lab cleaned up after itself ...
        with pytest.raises(LabError, match="the lab is not running"):
            clash.run(_nothing())
        # ... and the running one is untouched.
        assert banner(ex1.address, ex1.port).startswith(b"220 ex1.contoso.com ")
        assert resolve(config, "ex1.contoso.com") == {"127.93.0.11"}


def test_auth_requiring_tls_without_a_certificate_is_refused(tmp_path: Path) -> None:
    text = mutate(
        contoso_text(),
        "          tls: true\n          auth_requires_tls: true\n",
        "          auth_requires_tls: true\n",
    )
    error = load_error(tmp_path, text)
    assert error.field == "organization.servers[1].virtual_servers[0].auth_requires_tls"
    assert "only require TLS on a virtual server with tls: true" in error.message


def test_several_virtual_server_smart_hosts_are_each_resolved(tmp_path: Path) -> None:
    text = mutate(
        contoso_text(), 'smart_host: "[isp-smarthost]"', 'smart_host: "relay.isp.example; [isp-smarthost]"'
    )
    config = lab_config.load(write_lab(tmp_path, text), base="127.88.0.0")
    assert (
        config.organization.server("EX3").default_virtual_server.smart_host
        == "relay.isp.example;[127.88.0.102]"
    )
