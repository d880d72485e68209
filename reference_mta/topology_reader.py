"""Builds the organization (`topology`) from the `organization` section of a lab file.

The section is already schema-checked by the loader; this reader checks the cross-references a schema
cannot express: a bridgehead that names no server, a connector into a routing group that does not
exist, a name used twice. Errors carry the location of the offending value so the lab loader can point
at the line.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reference_mta.topology import (
    NEVER,
    AddressSpace,
    ClientList,
    Connector,
    Organization,
    PolicyDomain,
    RecipientFiltering,
    RecipientPolicy,
    RelaySettings,
    Restrictions,
    RoutingGroup,
    Schedule,
    Server,
    VirtualServer,
)

Location = tuple[str | int, ...]
AddressOf = Callable[[int], str]
HostAddress = Callable[[str], str]

ROOT: Location = ("organization",)


class TopologyError(ValueError):
    def __init__(self, location: Location, message: str) -> None:
        super().__init__(message)
        self.location = location
        self.message = message


@dataclass(frozen=True)
class LabAddressing:
    """How a lab places its hosts: `address_of(n)` turns a host number into an address,
    `host_address(name)` gives the address of any named lab host (for relay lists and bracketed smart
    hosts), and every SMTP port is shifted by `port_offset`."""

    address_of: AddressOf
    host_address: HostAddress
    port_offset: int


@dataclass(frozen=True)
class _Names:
    """The routing groups and servers a connector may name, in lower case for look-up."""

    groups: set[str]
    servers: dict[str, str]  # lower-case name → the server's own spelling
    routing_group_of: dict[str, str]  # lower-case server name → its routing group

    def group(self, raw: Mapping[str, Any], key: str, where: Location) -> str:
        value: str = raw[key]
        if value.lower() not in self.groups:
            raise TopologyError((*where, key), f"no routing group named {value!r}")
        return value

    def server(self, name: str, where: Location) -> str:
        if name.lower() not in self.servers:
            raise TopologyError(where, f"no server named {name!r}")
        return self.servers[name.lower()]

    def server_list(self, raw: Mapping[str, Any], key: str, where: Location) -> tuple[str, ...]:
        names = raw.get(key) or []
        return tuple(self.server(name, (*where, key, number)) for number, name in enumerate(names))


def build(
    config: Mapping[str, Any], address_of: AddressOf, host_address: HostAddress, port_offset: int
) -> Organization:
    """Build the organization from a schema-valid `organization` mapping (see `LabAddressing` for the
    other arguments)."""
    lab = LabAddressing(address_of, host_address, port_offset)
    groups = tuple(RoutingGroup(name=g["name"], master=g.get("master")) for g in config["routing_groups"])
    _unique([g.name for g in groups], (*ROOT, "routing_groups"), "routing group")
    group_names = {g.name.lower() for g in groups}
    servers = _servers(config["servers"], group_names, lab)
    # Lab files may spell a server in any case; the organization keeps the server's own spelling.
    names = _Names(
        group_names,
        {s.name.lower(): s.name for s in servers},
        {s.name.lower(): s.routing_group for s in servers},
    )
    for index, group in enumerate(groups):
        if group.master:
            names.server(group.master, (*ROOT, "routing_groups", index, "master"))
    connectors = [
        connector
        for index, raw in enumerate(config.get("connectors") or [])
        for connector in _connector(raw, (*ROOT, "connectors", index), names, host_address)
    ]
    _unique(
        [c.name for c in connectors if not c.name.endswith(" (reciprocal)")],
        (*ROOT, "connectors"),
        "connector",
    )
    policies = tuple(_policy(p) for p in config["recipient_policies"])
    _check_policies_name_no_server(servers, policies)
    return Organization(
        name=config["name"],
        admin_group=config.get("admin_group", "First Administrative Group"),
        policies=policies,
        routing_groups=groups,
        servers=tuple(servers),
        connectors=tuple(connectors),
    )


def _servers(raws: Sequence[Mapping[str, Any]], groups: set[str], lab: LabAddressing) -> list[Server]:
    servers = [_server(raw, (*ROOT, "servers", index), groups, lab) for index, raw in enumerate(raws)]
    _unique([s.name for s in servers], (*ROOT, "servers"), "server")
    _unique([s.fqdn for s in servers], (*ROOT, "servers"), "server FQDN")
    return servers


def _server(raw: Mapping[str, Any], where: Location, groups: set[str], lab: LabAddressing) -> Server:
    if raw["routing_group"].lower() not in groups:
        raise TopologyError((*where, "routing_group"), f"no routing group named {raw['routing_group']!r}")
    address = lab.address_of(raw["addr"])
    virtual_servers = tuple(
        _virtual_server(vs, raw["name"], number + 1, address, (*where, "virtual_servers", number), lab)
        for number, vs in enumerate(raw["virtual_servers"])
    )
    return Server(
        name=raw["name"],
        fqdn=raw["fqdn"].lower(),
        address=address,
        routing_group=raw["routing_group"],
        stores=tuple(raw.get("stores") or [f"Mailbox Store ({raw['name']})"]),
        virtual_servers=virtual_servers,
        duplicate_detection=raw.get("duplicate_detection", "message_id"),
    )


def _policy(raw: Mapping[str, Any]) -> RecipientPolicy:
    return RecipientPolicy(
        name=raw["name"],
        priority=raw.get("priority", 0),
        domains=tuple(
            PolicyDomain(a["domain"].lower(), a.get("authoritative", True)) for a in raw["addresses"]
        ),
    )


def _check_policies_name_no_server(servers: Sequence[Server], policies: Sequence[RecipientPolicy]) -> None:
    # KB: a recipient policy must never contain a server FQDN (it breaks intra-RG routing).
    policy_domains = {d.domain for policy in policies for d in policy.domains}
    for index, server in enumerate(servers):
        if server.fqdn in policy_domains:
            raise TopologyError(
                (*ROOT, "servers", index, "fqdn"), "server FQDN is also a recipient-policy domain"
            )


def _virtual_server(
    raw: Mapping[str, Any],
    server: str,
    instance: int,
    server_address: str,
    where: Location,
    lab: LabAddressing,
) -> VirtualServer:
    relay = _relay(raw.get("relay") or {}, (*where, "relay"), lab.host_address)
    connection = _connection(raw.get("connection") or {}, (*where, "connection"), lab.host_address)
    _check_authentication(raw, where)
    return VirtualServer(
        name=raw["name"],
        server=server,
        instance=instance,
        address=lab.address_of(raw["addr"]) if "addr" in raw else server_address,
        port=raw.get("port", 25) + lab.port_offset,
        relay=relay,
        smart_host=_virtual_server_smart_hosts(
            raw.get("smart_host"), (*where, "smart_host"), lab.host_address
        ),
        max_message_kb=raw.get("max_message_kb", 4096),
        max_recipients=raw.get("max_recipients", 64000),
        max_hop_count=raw.get("max_hop_count", 15),
        tls=raw.get("tls", False),
        auth_requires_tls=raw.get("auth_requires_tls", False),
        fqdn=raw.get("fqdn"),
        connection=connection,
        anonymous=raw.get("anonymous", True),
        basic_auth=raw.get("basic_auth", True),
        recipient_filtering=_recipient_filtering(raw.get("recipient_filtering")),
        max_messages_per_connection=raw.get("max_messages_per_connection"),
        max_errors=raw.get("max_errors", 20),
        connection_timeout=float(raw.get("connection_timeout", 600)),
        chunking=raw.get("chunking", True),
        smtputf8=raw.get("smtputf8", False),
        vrfy=raw.get("vrfy", "cannot_verify"),
        expn=raw.get("expn", "disabled"),
        pipelining_sync=raw.get("pipelining_sync", "enforce"),
        logging=raw.get("logging", "none"),
        resolve_anonymous=raw.get("resolve_anonymous", False),
    )


def _networks(
    settings: Mapping[str, Any], key: str, where: Location, host_address: HostAddress
) -> tuple[ipaddress.IPv4Network, ...]:
    return tuple(
        _network(item, (*where, key, number), host_address)
        for number, item in enumerate(settings.get(key) or [])
    )


def _network(item: str, where: Location, host_address: HostAddress) -> ipaddress.IPv4Network:
    try:
        try:
            return ipaddress.IPv4Network(item, strict=False)
        except ValueError:
            # A lab host, or "host/prefix" for the subnet around it: lab addresses move with the lab's
            # base, so a literal subnet would not follow them.
            host, slash, prefix = item.partition("/")
            return ipaddress.IPv4Network(f"{host_address(host)}{slash}{prefix}", strict=False)
    except (KeyError, ValueError) as exc:
        raise TopologyError(
            where, f"{item!r} is neither a lab host (optionally host/prefix) nor an IPv4 network"
        ) from exc


def _relay(raw: Mapping[str, Any], where: Location, host_address: HostAddress) -> RelaySettings:
    return RelaySettings(
        open=raw.get("open", False),
        only_list=_networks(raw, "only_list", where, host_address),
        all_except=_networks(raw, "all_except", where, host_address) if "all_except" in raw else None,
        allow_authenticated=raw.get("allow_authenticated", True),
    )


def _connection(raw: Mapping[str, Any], where: Location, host_address: HostAddress) -> ClientList:
    only = _networks(raw, "only_list", where, host_address) if "only_list" in raw else None
    return ClientList(only_list=only, all_except=_networks(raw, "all_except", where, host_address))


def _check_authentication(raw: Mapping[str, Any], where: Location) -> None:
    if raw.get("auth_requires_tls") and not raw.get("tls"):
        raise TopologyError(
            (*where, "auth_requires_tls"),
            "Basic authentication can only require TLS on a virtual server with tls: true",
        )
    if raw.get("anonymous") is False and raw.get("basic_auth") is False:
        raise TopologyError(
            (*where, "anonymous"),
            "a virtual server that allows neither anonymous access nor Basic authentication accepts no mail",
        )


def _recipient_filtering(raw: Mapping[str, Any] | None) -> RecipientFiltering | None:
    if raw is None:
        return None
    return RecipientFiltering(
        directory=raw.get("directory", False), addresses=tuple(raw.get("addresses") or ())
    )


def _virtual_server_smart_hosts(text: str | None, where: Location, host_address: HostAddress) -> str | None:
    if not text:
        return text
    # Several smart hosts are separated by ";" (Exchange's syntax); each may name a lab host.
    return ";".join(
        _smart_host(part.strip(), where, host_address)
        for part in text.replace(",", ";").split(";")
        if part.strip()
    )


def _smart_host(text: str, where: Location, host_address: HostAddress) -> str:
    """Exchange syntax: an FQDN, or an address in brackets. In a lab the bracketed form names a lab
    host, because the lab's addresses move with its base."""
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1]
        try:
            return f"[{ipaddress.IPv4Address(inner)}]"
        except ValueError:
            pass
        try:
            return f"[{host_address(inner)}]"
        except KeyError as exc:
            raise TopologyError(where, f"{inner!r} is not a lab host") from exc
    return text.lower()


def _connector(
    raw: Mapping[str, Any], where: Location, names: _Names, host_address: HostAddress
) -> list[Connector]:
    group = names.group(raw, "routing_group", where)
    up = raw.get("state", "up") == "up"
    if raw["type"] == "routing_group":
        return _routing_group_connectors(raw, where, names, group, up)
    if raw["type"] == "smtp":
        return [_smtp_connector(raw, where, names, group, up, host_address)]
    if raw["type"] == "x400":
        return [_x400_connector(raw, where, names, group, up)]
    return [_gateway_connector(raw, where, names, group, up)]


def _routing_group_connectors(
    raw: Mapping[str, Any], where: Location, names: _Names, group: str, up: bool
) -> list[Connector]:
    target = names.group(raw, "connects_to", where)
    if target.lower() == group.lower():
        raise TopologyError((*where, "connects_to"), "a routing group connector must join two routing groups")
    forward = Connector(
        kind="routing_group",
        name=raw["name"],
        routing_group=group,
        connects_to=target,
        cost=raw.get("cost", 1),
        local_bridgeheads=names.server_list(raw, "local_bridgeheads", where),
        remote_bridgeheads=names.server_list(raw, "remote_bridgeheads", where),
        up=up,
    )
    if not raw.get("reciprocal", True):
        return [forward]
    # ESM offers to create the connector in the other group too; labs get it unless they opt out.
    reciprocal = Connector(
        kind="routing_group",
        name=f"{raw['name']} (reciprocal)",
        routing_group=target,
        connects_to=group,
        cost=forward.cost,
        local_bridgeheads=forward.remote_bridgeheads,
        remote_bridgeheads=forward.local_bridgeheads,
        up=up,
    )
    return [forward, reciprocal]


def _smtp_connector(
    raw: Mapping[str, Any], where: Location, names: _Names, group: str, up: bool, host_address: HostAddress
) -> Connector:
    restrictions = raw.get("restrictions") or {}
    delivery = raw["delivery"]
    # Address Space tab: address spaces, connected routing groups, or both (Exchange 2003 allows either).
    target = names.group(raw, "connects_to", where) if "connects_to" in raw else None
    if target is not None and target.lower() == group.lower():
        raise TopologyError((*where, "connects_to"), "an SMTP connector must join two routing groups")
    if target is None and not raw.get("address_spaces"):
        raise TopologyError(
            where, "an SMTP connector needs address_spaces, connects_to (a routing group), or both"
        )
    if target is None and "cost" in raw:
        raise TopologyError(
            (*where, "cost"),
            "cost is the cost to the connected routing group: set connects_to, or cost per address space",
        )
    return Connector(
        kind="smtp",
        name=raw["name"],
        routing_group=group,
        cost=raw.get("cost", 1),
        connects_to=target,
        local_bridgeheads=names.server_list(raw, "bridgeheads", where),
        address_spaces=_address_spaces(raw),
        uses_dns=bool(delivery.get("dns")),
        smart_hosts=tuple(
            _smart_host(h, (*where, "delivery", "smart_hosts", n), host_address)
            for n, h in enumerate(delivery.get("smart_hosts") or [])
        ),
        allow_relay=raw.get("allow_relay", False),
        scope=raw.get("scope", "organization"),
        send_helo=bool((raw.get("advanced") or {}).get("send_helo", False)),
        remote_triggered=_remote_triggered(raw, where),
        schedule=_schedule(raw.get("schedule", "always"), (*where, "schedule")),
        restrictions=Restrictions(
            max_size_kb=restrictions.get("max_size_kb"),
            accept_from=tuple(restrictions.get("accept_from") or []),
            reject_from=tuple(restrictions.get("reject_from") or []),
            priorities=tuple(restrictions.get("priorities") or Restrictions.priorities),
            message_types=tuple(restrictions.get("message_types") or Restrictions.message_types),
        ),
        up=up,
    )


def _remote_triggered(raw: Mapping[str, Any], where: Location) -> bool:
    """ "Queue mail for remote triggered delivery": the remote host asks for its domain with ETRN, so
    the connector must name that domain (an exact SMTP address space)."""
    if not raw["delivery"].get("remote_triggered", False):
        return False
    spaces = raw.get("address_spaces") or []
    if not any(s["type"] == "SMTP" and not set(s["pattern"]) & {"*", "%"} for s in spaces):
        raise TopologyError(
            (*where, "delivery", "remote_triggered"),
            "remote triggered delivery needs an SMTP address space that names a domain (no * or %): "
            "it is the domain the remote host asks for with ETRN",
        )
    if raw.get("schedule", "always") != "always":
        # Delivery Options offers a schedule or remote triggered delivery, one or the other.
        raise TopologyError(
            (*where, "schedule"),
            "a connector that queues mail for remote triggered delivery sends when the remote host asks "
            "(ETRN), not on a schedule: leave out schedule, or remote_triggered",
        )
    return True


def _gateway_connector(
    raw: Mapping[str, Any], where: Location, names: _Names, group: str, up: bool
) -> Connector:
    return Connector(
        kind="gateway",
        name=raw["name"],
        routing_group=group,
        local_bridgeheads=(names.server(raw["server"], (*where, "server")),),
        address_spaces=_address_spaces(raw),
        foreign_system=raw["foreign_system"],
        smtp_domain=raw.get("smtp_domain"),
        up=up,
    )


def _schedule(raw: str | Sequence[Mapping[str, str]], where: Location) -> Schedule:
    if raw == "always":
        return Schedule()
    if raw == "never":
        return NEVER
    assert not isinstance(raw, str)  # the schema allows only the two words or a list of windows
    windows = []
    for number, window in enumerate(raw):
        start, end = (_minutes(window[key]) for key in ("from", "to"))
        if start == end:
            raise TopologyError(
                (*where, number, "to"), f"an empty window: it opens and closes at {window['to']}"
            )
        windows.append((start, end))
    return Schedule(always=False, windows=tuple(windows))


def _minutes(text: str) -> int:
    hours, _, minutes = text.partition(":")
    return int(hours) * 60 + int(minutes)


def _x400_connector(
    raw: Mapping[str, Any], where: Location, names: _Names, group: str, up: bool
) -> Connector:
    """An X.400 connector is hosted by one server's MTA. It joins two routing groups (`connects_to`,
    with the remote MTA's server as remote bridgehead), carries address spaces, or both. ESM creates no
    reciprocal for it: the other side is configured by hand, as in Exchange."""
    target = names.group(raw, "connects_to", where) if "connects_to" in raw else None
    if target is not None and target.lower() == group.lower():
        raise TopologyError((*where, "connects_to"), "an X.400 connector must join two routing groups")
    if target is None and not raw.get("address_spaces"):
        raise TopologyError(
            where, "an X.400 connector needs connects_to (a routing group), address_spaces, or both"
        )
    remote = names.server_list(raw, "remote_bridgeheads", where)
    if target is not None and not remote:
        raise TopologyError(
            (*where, "connects_to"), "an X.400 connector between routing groups needs remote_bridgeheads"
        )
    if target is None and remote:
        raise TopologyError(
            (*where, "remote_bridgeheads"),
            "remote_bridgeheads are servers of the organization: name their routing group in connects_to",
        )
    if target is not None:
        for number, name in enumerate(remote):
            home = names.routing_group_of[name.lower()]
            if home.lower() != target.lower():
                raise TopologyError(
                    (*where, "remote_bridgeheads", number),
                    f"{name} is in routing group {home!r}, not {target!r} (connects_to)",
                )
    local = names.server_list(raw, "local_bridgeheads", where)
    home = names.routing_group_of[local[0].lower()]
    if home.lower() != group.lower():
        raise TopologyError(
            (*where, "local_bridgeheads", 0), f"{local[0]} is in routing group {home!r}, not {group!r}"
        )
    return Connector(
        kind="x400",
        name=raw["name"],
        routing_group=group,
        connects_to=target,
        cost=raw.get("cost", 1),
        local_bridgeheads=local,
        remote_bridgeheads=remote,
        address_spaces=_address_spaces(raw),
        scope=raw.get("scope", "organization"),
        up=up,
    )


def _address_spaces(raw: Mapping[str, Any]) -> tuple[AddressSpace, ...]:
    return tuple(
        AddressSpace(a["type"], a["pattern"], a.get("cost", 1)) for a in raw.get("address_spaces") or []
    )


def _unique(names: Sequence[str], where: Location, what: str) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name.lower() in seen:
            raise TopologyError((*where, index), f"duplicate {what} {name!r}")
        seen.add(name.lower())
