"""A lab exported for docker compose: one folder that `docker compose up` (or Debian's `docker-compose`)
starts without the harness, on an internal network of 198.18.0.0/15 with no route out.

    DIR/compose.yaml      one service per lab host, each on its lab address; file format 2.4, which
                          both compose v1 and v2 read (ipv4_address, internal networks, driver_opts)
    DIR/resolv.conf       mounted as every container's /etc/resolv.conf: the lab's DNS server
    DIR/README.txt        how to start it, where the mail lands, how to send a message
    DIR/lab/              at /lab in every container: the lab file and its directory (LDIF), the
                          servers' keys (tls/, host_agent.chain_file's layout), the lab's CA
                          (lab-ca.pem); the hosts write their queues, mailboxes, tracking logs and
                          what the Internet hosts received here too
    DIR/lab/EX1-postfix/  with a real MTA standing in for a server: its configuration and start script
    DIR/source/           the harness's code, when the lab image is a developer's one without it

Each host runs `harness.lab.host_agent --start` in the lab image; a real MTA runs the start script in
its own folder in its own image. Every path in compose.yaml is relative to DIR, so the folder can be
moved or copied. This module only renders text; harness/lab/compose_folder.py writes the folder.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.lab import containers
from harness.lab.addresses import NETNS
from harness.lab.certificates import CA_FILE
from harness.lab.config import LabConfig
from harness.lab.docker_lab import AGENT_PYTHON
from harness.lab.sinks import SINKS_FOLDER

COMPOSE_FILE = "compose.yaml"
README_FILE = "README.txt"
RESOLV_FILE = "resolv.conf"
LAB_FOLDER = "lab"
LAB_MOUNT = Path("/lab")  # a path inside the containers
SOURCE_FOLDER = "source"
SOURCE_MOUNT = "/opt/mailflow-source"
NETWORK = "lab"
# What marks an exported lab's containers and network, with the lab's id. Not containers.LABEL: that
# one says a process of the harness owns the container, and a sweep removes those whose owner is gone,
# while an exported lab is owned by no process (`docker compose down` removes it).
EXPORTED = "org.mailflow.exported"
TARGETS = ("reference", "postfix")


class ExportError(ValueError):
    """What the user asked cannot be exported; the message says why and what would do."""


@dataclass(frozen=True)
class ExportTarget:
    kind: str  # one of TARGETS
    server: str | None = None  # the server a real MTA stands in for, as the lab file spells it


def parse_target(text: str, config: LabConfig) -> ExportTarget:
    """`reference`, `postfix` (standing in for EX1) or `postfix:SERVER`."""
    kind, _, server = text.partition(":")
    forms = "reference, postfix or postfix:SERVER"
    if kind.lower() not in TARGETS or (kind.lower() == "reference" and server):
        raise ExportError(f"--target {text}: an exported lab runs {forms}")
    if kind.lower() == "reference":
        return ExportTarget("reference")
    servers = [s.name for s in config.organization.servers]
    wanted = server or "EX1"
    chosen = next((name for name in servers if name.lower() == wanted.lower()), None)
    if chosen is None:
        raise ExportError(
            f"--target {text}: lab {config.name} has no server {wanted!r}; servers: {', '.join(servers)}"
        )
    return ExportTarget(kind.lower(), chosen)


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """The lab network: a /24 inside 198.18.0.0/15, whose .1 is the host's address."""
    try:
        subnet = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise ExportError(f"--subnet {text}: not a network ({exc}); e.g. 198.19.10.0/24") from None
    if subnet.prefixlen != 24 or not subnet.subnet_of(NETNS):
        raise ExportError(
            f"--subnet {text}: a lab network is a /24 inside {NETNS} (no route out), e.g. 198.19.10.0/24"
        )
    return subnet


def gateway(subnet: ipaddress.IPv4Network) -> str:
    """The address Docker gives this machine on the lab's bridge, even on an internal network."""
    return str(subnet.network_address + 1)


@dataclass(frozen=True)
class MtaService:
    """A real MTA standing in for a server: its image kind and image, its folder under lab/ with the
    files to write there (by path inside the folder), and the command its container runs."""

    server: str
    kind: str  # the image kind, as docker_lab.image names it
    title: str  # the MTA's name, for people
    image: str
    folder: str
    files: Mapping[str, str]
    modes: Mapping[str, int]  # the files that are not 0644: scripts, and secrets only root reads
    command: Sequence[str]
    mailboxes: str  # where it delivers, relative to its folder, {mailbox} for the address


@dataclass(frozen=True)
class Export:
    config: LabConfig  # loaded at the subnet's base with the standard ports
    subnet: ipaddress.IPv4Network
    lab_file: str  # the lab file's name in lab/
    lab_image: str
    stand_in: MtaService | None = None
    with_source: bool = False  # the harness's code is in source/, for an image without it

    @property
    def lab_id(self) -> str:
        return hashlib.sha1(f"compose-{self.config.name}-{self.subnet}".encode()).hexdigest()[:10]

    @property
    def bridge(self) -> str:
        # At most 15 characters (IFNAMSIZ); one lab per subnet, so the subnet names it.
        octets = str(self.subnet.network_address).split(".")
        return f"mfc{octets[1]}-{octets[2]}"


def check_fits(config: LabConfig, subnet: ipaddress.IPv4Network) -> None:
    """Every lab address inside the subnet, and none on its network, gateway or broadcast address."""
    reserved = {
        str(subnet.network_address): "the network's own address",
        gateway(subnet): "this machine's address on the lab's bridge",
        str(subnet.broadcast_address): "the broadcast address",
    }
    for name, address in _addresses(config):
        if ipaddress.IPv4Address(address) not in subnet:
            raise ExportError(f"lab {config.name}: {name}'s address {address} is outside {subnet}")
        if address in reserved:
            raise ExportError(
                f"lab {config.name}: {name} has the address {address}, which is {reserved[address]} in "
                f"{subnet}: give it another addr in {config.path}"
            )


def _addresses(config: LabConfig) -> list[tuple[str, str]]:
    found = [(host.name, host.address) for host in config.hosts.values()]
    for server in config.organization.servers:
        found += [(f"{server.name}/{vs.name}", vs.address) for vs in server.virtual_servers]
    return found


# --- the lab file ------------------------------------------------------------------------------------


def lab_file_text(text: str, directory: str) -> str:
    """The lab file `text` with its global catalog's directory set to `directory` (a path relative to
    the lab file); everything else, comments included, as it was written."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    value = _mapping_value(_mapping_value(node, "global_catalog"), "directory")
    if not isinstance(value, yaml.ScalarNode):
        raise ExportError("the lab file's global_catalog.directory is not a path")
    if value.value == directory:
        return text
    start, end = value.start_mark.index, value.end_mark.index
    return text[:start] + json.dumps(directory) + text[end:]  # a JSON string is a YAML scalar


def _mapping_value(node: yaml.Node | None, key: str) -> yaml.Node:
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                found: yaml.Node = value
                return found
    raise ExportError(f"the lab file has no {key}")


# --- compose.yaml --------------------------------------------------------------------------------------


def service_name(host: str) -> str:
    """A compose service name for a lab host (letters, digits, dots, dashes and underscores)."""
    return re.sub(r"[^a-z0-9._-]+", "-", host.lower()).strip("-")


def container_hosts(export: Export) -> list[str]:
    """Every host with a container, in the lab's order: the DNS server and the global catalog, the
    servers (a real MTA's too), the Internet hosts. The clients are whoever sends from this machine."""
    config = export.config
    names = [h.name for h in config.hosts.values() if h.kind in ("dns", "gc")]
    names += [s.name for s in config.organization.servers]
    return names + [h.name for h in config.internet_hosts]


def agent_hosts(export: Export) -> list[str]:
    """The hosts a host agent runs: all but the server a real MTA stands in for."""
    stood_in = export.stand_in.server if export.stand_in is not None else None
    return [host for host in container_hosts(export) if host != stood_in]


def compose_document(export: Export) -> dict[str, Any]:
    config = export.config
    services: dict[str, Any] = {}
    infrastructure = [service_name(h.name) for h in config.hosts.values() if h.kind in ("dns", "gc")]
    mta = export.stand_in
    for host in container_hosts(export):
        if mta is not None and host == mta.server:
            service = _service(export, mta.server, mta.image, list(mta.command), "mta", _volumes())
            service["depends_on"] = list(infrastructure)
            services[service_name(mta.server)] = service
            continue
        is_server = any(s.name == host for s in config.organization.servers)
        command = [
            AGENT_PYTHON,
            "-m",
            "harness.lab.host_agent",
            "--host",
            host,
            "--start",
            str(LAB_MOUNT / export.lab_file),
            "--workdir",
            str(LAB_MOUNT),
            "--base",
            str(config.base),
            "--port-offset",
            str(config.port_offset),
        ]
        environment = {"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
        volumes = _volumes()
        if export.with_source:
            environment["PYTHONPATH"] = SOURCE_MOUNT
            volumes.append(f"./{SOURCE_FOLDER}:{SOURCE_MOUNT}:ro")
        service = _service(export, host, export.lab_image, command, "agent", volumes)
        service["environment"] = environment
        if is_server:
            service["depends_on"] = list(infrastructure)
        services[service_name(host)] = service
    labels = {EXPORTED: export.lab_id}
    network = {
        "driver": "bridge",
        "internal": True,  # no route out: the lab's hosts reach nothing but each other and this machine
        "driver_opts": {"com.docker.network.bridge.name": export.bridge},
        "ipam": {"config": [{"subnet": str(export.subnet), "gateway": gateway(export.subnet)}]},
        "labels": labels,
    }
    return {"version": "2.4", "services": services, "networks": {NETWORK: network}}


def _volumes() -> list[str]:
    return [f"./{LAB_FOLDER}:{LAB_MOUNT}", f"./{RESOLV_FILE}:/etc/resolv.conf:ro"]


def _service(
    export: Export, host: str, image: str, command: list[str], role: str, volumes: list[str]
) -> dict[str, Any]:
    labels = {EXPORTED: export.lab_id, containers.ROLE: role, containers.HOST: host}
    return {
        "image": image,
        "hostname": host.lower()[:63],
        "command": command,
        # Root with CAP_NET_ADMIN: a server's virtual servers have addresses of their own, which its
        # container puts on its interface; and the hosts listen on the standard ports.
        "user": "root",
        "cap_add": ["NET_ADMIN"],
        "init": True,  # signals reach the host, so `down` stops it at once
        "volumes": volumes,
        "networks": {NETWORK: {"ipv4_address": _address(export.config, host)}},
        "labels": labels,
    }


def _address(config: LabConfig, host: str) -> str:
    servers = {s.name: s.address for s in config.organization.servers}
    return servers.get(host) or config.host(host).address


def compose_yaml(export: Export) -> str:
    header = (
        f"# Lab {export.config.name} on {export.subnet}, written by `mailflow lab export --compose`.\n"
        f"# Start it with `docker compose up -d` (or `docker-compose up -d`); {README_FILE} says more.\n"
    )
    return header + yaml.safe_dump(compose_document(export), sort_keys=False, width=100_000)


def resolv_conf(config: LabConfig) -> str:
    return f"nameserver {config.dns_address}\noptions timeout:2 attempts:1\n"


# --- README.txt ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """What the README shows a person: a mailbox on the server to send to, an Internet sender, and the
    directory's accounts for AUTH (name, password)."""

    recipient: str
    sender: str
    logins: Sequence[tuple[str, str]] = ()


def readme(export: Export, example: Example) -> str:
    config = export.config
    mta = export.stand_in
    entry = config.organization.server(mta.server) if mta is not None else config.organization.servers[0]
    ex = entry.name
    recipient = example.recipient.lower()
    if mta is None:
        store = next(iter(entry.stores), "STORE")
        mailbox = f"lab/{ex}/mdbdata/{store}/{recipient}/new/"
        servers = ", ".join(s.name for s in config.organization.servers)
        what = f"the reference MTA runs every server ({servers})"
        logs = (
            "Message tracking logs: lab/tracking/SERVER.log/YYYYMMDD.jsonl (one JSON event a line).\n"
            "Queues: lab/SERVER/Mailroot/vsi 1/Queue/. Protocol logs: lab/SERVER/LogFiles/.\n"
        )
    else:
        mailbox = f"lab/{mta.folder}/{mta.mailboxes.format(mailbox=recipient)}"
        what = f"{mta.title} stands in for {ex}, the reference MTA runs the other servers"
        logs = (
            f"{mta.title}'s log: lab/{mta.folder}/{mta.kind}.log; its configuration: lab/{mta.folder}/etc/.\n"
            "The reference servers' tracking logs: lab/tracking/SERVER.log/YYYYMMDD.jsonl.\n"
        )
    hosts = "\n".join(
        f"  {service_name(host):<18} {_address(config, host):<15} {_role(export, host)}"
        for host in container_hosts(export)
    )
    swaks = f"swaks --server {entry.address} --to {example.recipient} --from {example.sender}"
    logins = ", ".join(f"{name} / {password}" for name, password in example.logins)
    auth = f"AUTH (LOGIN, PLAIN) where a virtual server offers it: {logins}.\n" if logins else ""
    client = _client_example(config)
    return f"""Lab {config.name}, exported for docker compose:
{what}.

The containers run the image {export.lab_image}; where `docker images` does not list it, build it with
`mailflow images build` from the checkout that exported this folder (the tag is a hash of its code).

Start and stop, in this folder (`docker-compose` is compose v1, as Debian packages it):

  docker compose up -d          # or: docker-compose up -d
  docker compose logs -f        # each host says "lab host NAME started" once it listens
  docker compose down -v        # removes the containers and the network; what they wrote stays

The hosts sit on an internal Docker network, {export.subnet} (bridge {export.bridge}), with no
route out. This machine reaches them from {gateway(export.subnet)}, the bridge's address. Every
service listens on its standard port: SMTP 25, DNS 53 (udp+tcp), LDAP 389.

{hosts}

Send a message to {ex} (swaks is Debian's package swaks):

  {swaks}

It lands in {mailbox}
(a Maildir; the containers run as root, so their files are root's).
{logs}What the Internet hosts received: lab/{SINKS_FOLDER}/HOST/NNNN.eml, the envelope in NNNN.json.
STARTTLS: verify the server's name ({entry.fqdn}, ...) against lab/{CA_FILE}:
  swaks --server {entry.address} --tls --tls-verify --tls-ca-path lab/{CA_FILE} ...
{auth}
A session from this machine comes from {gateway(export.subnet)}, which is no lab host. To send from a
lab client's address, put it on the bridge first, as root:
  ip addr add {client}/32 dev {export.bridge}     then: swaks --local-interface {client} ...

Written by `mailflow lab export --compose`; export again rather than edit: the files agree with each
other (addresses, keys, the configuration rendered from the lab file).
"""


def _client_example(config: LabConfig) -> str:
    clients = config.clients
    return clients[0].address if clients else "ADDRESS"


def _role(export: Export, host: str) -> str:
    config = export.config
    if any(s.name == host for s in config.organization.servers):
        server = config.organization.server(host)
        mta = export.stand_in
        who = f"{mta.title} as {server.name}," if mta is not None and mta.server == host else "server"
        extra = sorted({vs.address for vs in server.virtual_servers} - {server.address}, key=_number)
        more = f", virtual servers on .{' .'.join(a.rsplit('.', 1)[1] for a in extra)} too" if extra else ""
        return f"{who} {server.fqdn}{more}"
    entry = config.host(host)
    roles = {"dns": "DNS server", "gc": f"global catalog (LDAP) {entry.fqdn}", "internet": "Internet host"}
    role = roles.get(entry.kind, entry.kind)
    return f"{role} {entry.fqdn}" if entry.kind == "internet" else role


def _number(address: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(address)


# --- a real MTA's start script -------------------------------------------------------------------------


def claim_script(addresses: Sequence[str], interface: str = "eth0") -> str:
    """Shell lines that put a server's extra virtual-server addresses on the container's interface (as
    harness/lab/host_agent.py `claim_addresses` does for a reference server)."""
    if not addresses:
        return ""
    quoted = " ".join(shlex.quote(a) for a in addresses)
    return f"""for address in {quoted}; do
  ip -o -4 addr show dev {interface} | grep -q " $address/" && continue
  ip addr add "$address/32" dev {interface} || {{
    echo "cannot put $address on {interface}: the container needs CAP_NET_ADMIN" >&2; exit 1; }}
done
"""


def modes(export: Export) -> dict[str, int]:
    """The files of `write_plan` whose mode is not 0644, by their path relative to DIR."""
    mta = export.stand_in
    if mta is None:
        return {}
    return {f"{LAB_FOLDER}/{mta.folder}/{name}": mode for name, mode in mta.modes.items()}


def write_plan(export: Export, lab_text: str, example: Example) -> dict[str, str]:
    """Every text file of the export, by its path relative to DIR (certificates, the directory and the
    harness's code are copied by the writer)."""
    files = {
        COMPOSE_FILE: compose_yaml(export),
        RESOLV_FILE: resolv_conf(export.config),
        README_FILE: readme(export, example),
        f"{LAB_FOLDER}/{export.lab_file}": lab_text,
    }
    if export.stand_in is not None:
        for name, text in export.stand_in.files.items():
            files[f"{LAB_FOLDER}/{export.stand_in.folder}/{name}"] = text
    return files
