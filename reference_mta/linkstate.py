"""Link state: which connectors and servers of the organization are up right now.

Every Exchange server keeps a link state table initialised from the directory and updated as
connectors and bridgeheads go down and come back; routing group masters propagate changes (port 691
inside a routing group, X-LINK2STATE between them). In a lab all servers share one table, so a change
reaches every server at once: the propagation delay is not modelled (docs/decisions.md).

A connector is down when an administrator (or a lab) marks it down, or when every one of its local
bridgeheads is down; a connector between routing groups also needs one of its remote bridgeheads up
(for an SMTP connector that uses DNS, one server of the connected group). Minor
version numbers count state changes, major ones topology changes, as in Exchange's link state data.
"""

from __future__ import annotations

from collections.abc import Callable

from reference_mta.topology import Connector, Organization


class LinkState:
    def __init__(self, organization: Organization) -> None:
        self.organization = organization
        self._connectors_down = {c.name.lower() for c in organization.connectors if not c.up}
        self._servers_down: set[str] = set()
        # Major counts topology changes (the configuration is fixed while a lab runs), minor state changes.
        self.major = 1
        self.minor = 0
        self._listeners: list[Callable[[], None]] = []

    def connector_up(self, connector: Connector) -> bool:
        if connector.name.lower() in self._connectors_down:
            return False
        if connector.local_bridgeheads and all(self.server_down(b) for b in connector.local_bridgeheads):
            return False
        remote = self.far_side(connector)
        return not (remote and all(self.server_down(b) for b in remote))

    def far_side(self, connector: Connector) -> tuple[str, ...]:
        """The servers a connector between routing groups hands messages to: its remote bridgeheads, or
        when it lists none (an SMTP connector that uses DNS), every server of the connected group."""
        if connector.remote_bridgeheads or connector.connects_to is None or connector.smart_hosts:
            return connector.remote_bridgeheads
        group = connector.connects_to.lower()
        return tuple(s.name for s in self.organization.servers if s.routing_group.lower() == group)

    def server_down(self, name: str) -> bool:
        return name.lower() in self._servers_down

    def up_bridgeheads(self, names: tuple[str, ...]) -> list[str]:
        return [name for name in names if not self.server_down(name)]

    def set_connector(self, name: str, up: bool) -> None:
        if not any(c.name.lower() == name.lower() for c in self.organization.connectors):
            raise KeyError(f"no connector named {name!r}")
        if (name.lower() not in self._connectors_down) == up:
            return  # no change: nothing to propagate
        (self._connectors_down.discard if up else self._connectors_down.add)(name.lower())
        self.minor += 1
        self._changed()

    def set_server(self, name: str, up: bool) -> None:
        self.organization.server(name)  # KeyError for an unknown server
        if (name.lower() not in self._servers_down) == up:
            return
        (self._servers_down.discard if up else self._servers_down.add)(name.lower())
        self.minor += 1
        self._changed()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Called after every state change: servers re-route what waits for an unreachable destination."""
        self._listeners.append(listener)

    def snapshot(self) -> dict[str, object]:
        return {
            "version": f"{self.major}.{self.minor}",
            "connectors": {
                c.name: "up" if self.connector_up(c) else "down" for c in self.organization.connectors
            },
            "servers_down": sorted(self._servers_down),
        }

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()
