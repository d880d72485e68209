"""Lab files: load, validate and resolve one world into addresses, records and an organization.

A lab file is checked against `harness/schemas/lab.schema.json`, then for what a schema cannot say
(host names that must exist, addresses that must stay on loopback, DNS record values the lab's DNS
server can parse). Every error names the file, the
line and the field. Addresses are `network.base + addr`, so the same file relocates to another base
and port offset when several labs run side by side.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import dns.exception
import dns.name

from harness import yamlsource
from harness.lab.addresses import LOOPBACK, is_lab_address
from harness.lab.dns import Fault, Record, check_record, ptr_name
from reference_mta import topology, topology_reader
from reference_mta.queue_contract import RetryPolicy

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@dataclass(frozen=True)
class SinkRule:
    command: str
    match: str | None
    reply: str | None
    action: str
    delay: float
    times: int | None


@dataclass(frozen=True)
class Host:
    name: str
    fqdn: str | None
    address: str
    kind: str  # "server", "virtual_server", "internet", "client", "dns", "gc"
    rules: tuple[SinkRule, ...] = ()
    smtputf8: bool = False  # an Internet host that offers SMTPUTF8 (RFC 6531)


@dataclass(frozen=True)
class GlobalCatalogConfig:
    address: str
    port: int
    fqdn: str
    base_dn: str
    directory: Path
    bind_dn: str
    bind_password: str


@dataclass(frozen=True)
class LabConfig:
    name: str
    path: Path
    base: ipaddress.IPv4Address
    port_offset: int
    dns_address: str
    dns_port: int
    records: tuple[Record, ...]
    global_catalog: GlobalCatalogConfig
    organization: topology.Organization
    hosts: Mapping[str, Host] = field(default_factory=dict)
    timers: RetryPolicy = field(default_factory=RetryPolicy)

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name.lower()]
        except KeyError:
            raise KeyError(f"lab {self.name!r} has no host named {name!r}") from None

    @property
    def internet_hosts(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.kind == "internet"]

    @property
    def clients(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.kind == "client"]

    def port(self, standard: int) -> int:
        return standard + self.port_offset


def lab_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A lab named in a trace (`contoso`) or given as a path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_absolute() and relative_to is not None and (relative_to / candidate).exists():
            return (relative_to / candidate).resolve()
        return candidate.resolve()
    return FIXTURES / "labs" / f"{name_or_path}.yaml"


def missing_lab(name_or_path: str | Path, path: Path) -> str:
    """What to tell a user whose lab does not exist: the labs there are, by name."""
    labs = ", ".join(sorted(p.stem for p in (FIXTURES / "labs").glob("*.yaml")))
    return f"no lab {str(name_or_path)!r} ({path} does not exist); labs: {labs}, or the path of a lab file"


def load(path: Path, *, base: str | None = None, port_offset: int | None = None) -> LabConfig:
    """Load and check a lab file; `base`/`port_offset` relocate it.

    A corpus names the same few labs in every trace, so a process loads each version of a file once
    for each placement: the cache is keyed by what `stat` says of the file, and an edited, replaced or
    touched file is loaded (and checked) again. A LabConfig is frozen, so sharing it is safe."""
    try:
        stat = path.stat()
    except OSError:
        return _load(path, base, port_offset)  # which says, in the user's terms, what is wrong
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    config = _cached(key, base, port_offset)
    if not config.global_catalog.directory.is_file():
        # The directory fixture is read when the lab starts: one removed since must be named now.
        _cached.cache_clear()
        return _load(path, base, port_offset)
    return config


@lru_cache(maxsize=64)
def _cached(key: tuple[str, int, int, int, int], base: str | None, port_offset: int | None) -> LabConfig:
    return _load(Path(key[0]), base, port_offset)


def _load(path: Path, base: str | None, port_offset: int | None) -> LabConfig:
    document = yamlsource.load(path)
    yamlsource.validate(document, "lab.schema.json")
    data: dict[str, Any] = document.data
    base_address, offset = _placement(document, data["network"], base, port_offset)

    def address_of(number: int) -> str:
        return str(base_address + number)

    _check_addresses(document, data, base_address, offset, relocated=base is not None)
    hosts = _hosts(document, data, address_of)
    _check_fqdns(document, data, hosts)
    organization = _organization(document, data, hosts, address_of, offset)
    _add_virtual_servers(hosts, organization)
    _check_smart_hosts(document, data, organization)
    global_catalog = _global_catalog(document, path, data["global_catalog"], hosts, offset)
    records = _records(document, data, hosts, base_address)
    return LabConfig(
        name=data["name"],
        path=path,
        base=base_address,
        port_offset=offset,
        dns_address=hosts["dns"].address,
        dns_port=53 + offset,
        records=records,
        global_catalog=global_catalog,
        organization=organization,
        hosts=hosts,
        timers=_timers(data.get("timers") or {}),
    )


def _placement(
    document: yamlsource.Document, network: Mapping[str, Any], base: str | None, port_offset: int | None
) -> tuple[ipaddress.IPv4Address, int]:
    """The lab's base address and port offset: the lab file's, or those given to relocate it."""
    base_text = base if base is not None else network["base"]
    try:
        base_address = ipaddress.IPv4Address(base_text)
    except ValueError as exc:
        raise document.error(("network", "base"), f"{base_text!r} is not an IPv4 address") from exc
    # A base in 198.18.0.0/15 is for labs whose hosts sit on the lab's own network (netns backend).
    if not is_lab_address(base_address, loopback_only=base is None):
        where = "network.base" if base is None else "the base given on the command line"
        raise document.error(
            ("network", "base"),
            f"{base_address} ({where}) is not a loopback address: a lab only binds inside 127.0.0.0/8",
        )
    offset = port_offset if port_offset is not None else network.get("port_offset", 0)
    if offset + 691 > 65535:
        raise document.error(
            ("network", "port_offset"), f"port offset {offset} leaves no room for the lab's ports"
        )
    return base_address, offset


def _hosts(
    document: yamlsource.Document, data: Mapping[str, Any], address_of: topology_reader.AddressOf
) -> dict[str, Host]:
    """Every named host of the lab file by its lower-case name; a name may be used once."""
    hosts: dict[str, Host] = {}

    def add(host: Host, location: tuple[str | int, ...]) -> None:
        if host.name.lower() in hosts:
            raise document.error(location, f"duplicate host name {host.name!r}")
        hosts[host.name.lower()] = host

    add(Host("dns", None, address_of(data["dns"]["addr"]), "dns"), ("dns",))
    gc_raw = data["global_catalog"]
    add(Host("gc", gc_raw["fqdn"], address_of(gc_raw["addr"]), "gc"), ("global_catalog",))
    for index, raw in enumerate(data["organization"]["servers"]):
        add(
            Host(raw["name"], raw["fqdn"], address_of(raw["addr"]), "server"),
            ("organization", "servers", index),
        )
    for section in ("internet", "clients"):
        for index, raw in enumerate(data.get(section) or []):
            rules = tuple(sink_rule(r) for r in raw.get("rules") or [])
            kind = "internet" if section == "internet" else "client"
            host = Host(
                raw["name"], raw.get("fqdn"), address_of(raw["addr"]), kind, rules, raw.get("smtputf8", False)
            )
            add(host, (section, index))
    return hosts


def _check_fqdns(document: yamlsource.Document, data: Mapping[str, Any], hosts: Mapping[str, Host]) -> None:
    """An FQDN names one host only."""
    fqdns: dict[str, str] = {}
    for host in hosts.values():
        if host.fqdn and fqdns.setdefault(host.fqdn.lower(), host.name) != host.name:
            raise document.error(
                _host_location(data, host.name),
                f"FQDN {host.fqdn} is already the name of {fqdns[host.fqdn.lower()]!r}",
            )


def _organization(
    document: yamlsource.Document,
    data: Mapping[str, Any],
    hosts: Mapping[str, Host],
    address_of: topology_reader.AddressOf,
    offset: int,
) -> topology.Organization:
    def host_address(name: str) -> str:
        return hosts[name.lower()].address

    try:
        return topology_reader.build(data["organization"], address_of, host_address, offset)
    except topology_reader.TopologyError as exc:
        raise document.error(exc.location, exc.message) from exc


def _add_virtual_servers(hosts: dict[str, Host], organization: topology.Organization) -> None:
    """A virtual server on an address of its own is a host too, named `server/virtual server`."""
    for server in organization.servers:
        for vs in server.virtual_servers:
            if vs.address != server.address:
                hosts.setdefault(
                    f"{server.name}/{vs.name}".lower(),
                    Host(f"{server.name}/{vs.name}", None, vs.address, "virtual_server"),
                )


def _check_smart_hosts(
    document: yamlsource.Document, data: Mapping[str, Any], organization: topology.Organization
) -> None:
    """Smart hosts given as address literals, of virtual servers and connectors, are lab addresses."""
    for index, server in enumerate(organization.servers):
        for number, vs in enumerate(server.virtual_servers):
            location = ("organization", "servers", index, "virtual_servers", number, "smart_host")
            _check_literal(document, vs.smart_host, location)
    for index, connector in enumerate(data["organization"].get("connectors") or []):
        built = next(c for c in organization.connectors if c.name == connector["name"])
        for number, smart_host in enumerate(built.smart_hosts):
            _check_literal(
                document, smart_host, ("organization", "connectors", index, "delivery", "smart_hosts", number)
            )


def _global_catalog(
    document: yamlsource.Document,
    path: Path,
    gc_raw: Mapping[str, Any],
    hosts: Mapping[str, Host],
    offset: int,
) -> GlobalCatalogConfig:
    directory = (path.parent / gc_raw["directory"]).resolve()
    if not directory.is_file():
        raise document.error(("global_catalog", "directory"), f"directory fixture {directory} does not exist")
    return GlobalCatalogConfig(
        address=hosts["gc"].address,
        port=389 + offset,
        fqdn=gc_raw["fqdn"],
        base_dn=gc_raw["base_dn"],
        directory=directory,
        bind_dn=gc_raw.get("bind_dn", f"CN=Exchange Categorizer,CN=Users,{gc_raw['base_dn']}"),
        bind_password=gc_raw.get("bind_password", "Cat-P@ssw0rd"),
    )


def _check_addresses(
    document: yamlsource.Document,
    data: Mapping[str, Any],
    base: ipaddress.IPv4Address,
    offset: int,
    *,
    relocated: bool,
) -> None:
    """Every host number must land inside the lab's range and name one host only; every port must fit.
    The range is 127.0.0.0/8, or, for a lab on its own network (a base in 198.18.0.0/15), the base's /24,
    which is what the lab's bridge carries."""
    owners: dict[int, str] = {}
    moved = " (after relocation)" if relocated else ""
    in_range = LOOPBACK if base in LOOPBACK else ipaddress.IPv4Network(f"{base}/24", strict=False)
    for location, name, raw in _addressed(data):
        address = base + raw["addr"] if int(base) + raw["addr"] <= 0xFFFFFFFF else None
        if address is None or address not in in_range:
            raise document.error(
                (*location, "addr"),
                f"base {base} + {raw['addr']} = {address or 'overflow'}{moved} is outside {in_range}",
            )
        if raw["addr"] in owners:
            raise document.error(
                (*location, "addr"), f"address {address} is already used by {owners[raw['addr']]!r}"
            )
        owners[raw["addr"]] = name
        if "port" in raw and raw["port"] + offset > 65535:
            raise document.error((*location, "port"), f"port {raw['port']} + offset {offset} is above 65535")


def _addressed(data: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str, Mapping[str, Any]]]:
    """(location, host name, mapping with addr) for every entry of a lab file that takes an address."""
    found: list[tuple[tuple[str | int, ...], str, Mapping[str, Any]]] = [
        (("dns",), "dns", data["dns"]),
        (("global_catalog",), "gc", data["global_catalog"]),
    ]
    for index, server in enumerate(data["organization"]["servers"]):
        found.append((("organization", "servers", index), server["name"], server))
        for number, vs in enumerate(server["virtual_servers"]):
            if "addr" in vs:
                found.append(
                    (
                        ("organization", "servers", index, "virtual_servers", number),
                        f"{server['name']}/{vs['name']}",
                        vs,
                    )
                )
    for section in ("internet", "clients"):
        for index, raw in enumerate(data.get(section) or []):
            found.append(((section, index), raw["name"], raw))
    return found


def _host_location(data: Mapping[str, Any], name: str) -> tuple[str | int, ...]:
    return next((loc for loc, owner, _ in _addressed(data) if owner == name), ())


def _check_literal(
    document: yamlsource.Document, smart_host: str | None, location: tuple[str | int, ...]
) -> None:
    if smart_host and smart_host.startswith("[") and not is_lab_address(smart_host.strip("[]")):
        raise document.error(
            location, f"smart host {smart_host} is not a lab address: name a lab host instead"
        )


def _timers(raw: Mapping[str, Any]) -> RetryPolicy:
    default = RetryPolicy()
    return RetryPolicy(
        intervals=tuple(float(x) for x in raw.get("retry", default.intervals)),
        expiration=float(raw.get("expiration", default.expiration)),
        delay_notification=float(raw.get("delay_notification", default.delay_notification)),
    )


def sink_rule(raw: Mapping[str, Any]) -> SinkRule:
    """A reply rule of an Internet host, from a lab file or a trace's lab action."""
    return SinkRule(
        command=raw["command"],
        match=raw.get("match"),
        reply=raw.get("reply"),
        action=raw.get("action", "reply" if raw.get("reply") else "delay"),
        delay=float(raw.get("delay", 0.0)),
        times=raw.get("times"),
    )


def _records(
    document: yamlsource.Document,
    data: Mapping[str, Any],
    hosts: Mapping[str, Host],
    base: ipaddress.IPv4Address,
) -> tuple[Record, ...]:
    records: list[Record] = []
    for host in hosts.values():
        if host.fqdn:
            records.append(Record(host.fqdn.lower(), "A", host.address))
            records.append(Record(ptr_name(host.address), "PTR", host.fqdn.lower() + "."))
    for index, raw in enumerate(data["dns"].get("records") or []):
        value = raw.get("value")
        if "addr" in raw:
            value = str(base + raw["addr"])
        if "host" in raw:
            try:
                value = hosts[raw["host"].lower()].address
            except KeyError:
                raise document.error(
                    ("dns", "records", index, "host"), f"no lab host named {raw['host']!r}"
                ) from None
        if raw["type"] == "A":
            try:
                address = ipaddress.IPv4Address(value)
            except ValueError:
                raise document.error(
                    ("dns", "records", index, "value"), f"{value!r} is not an IPv4 address"
                ) from None
            if not is_lab_address(address):
                raise document.error(
                    ("dns", "records", index, "value"),
                    f"{address} is not a lab address: DNS may only point inside the lab",
                )
        fault_raw = raw.get("fault")
        fault = (
            Fault(
                delay=float(fault_raw.get("delay", 0.0)),
                servfail=fault_raw.get("servfail", False),
                no_answer=fault_raw.get("no_answer", False),
            )
            if fault_raw
            else None
        )
        try:
            dns.name.from_text(raw["name"])
        except dns.exception.DNSException as exc:
            raise document.error(
                ("dns", "records", index, "name"), f"{raw['name']!r} is not a DNS name: {exc}"
            ) from None
        record = Record(raw["name"].lower().rstrip("."), raw["type"], str(value), raw.get("ttl", 300), fault)
        try:
            check_record(record)
        except ValueError as exc:
            raise document.error(
                ("dns", "records", index, "value"), f"{value!r} is not a valid {raw['type']} value: {exc}"
            ) from None
        records.append(record)
    return tuple(records)
