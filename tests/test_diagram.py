"""The message-path diagram draws what the evidence shows: who handed the message to whom."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree

from harness.judge.evidence import Delivery, DeliveryKind, Evidence
from harness.reports.diagram import path_svg


def _event(event_id: int, client_ip: str = "-", queue: str = "-") -> dict[str, object]:
    return {
        "event-id": event_id,
        "client-ip": client_ip,
        "queue": queue,
        "recipient-address": "bob@contoso.com",
    }


def test_boxes_follow_the_hops_and_end_at_the_destination() -> None:
    evidence = Evidence(
        hosts={"127.1.0.200": "internet", "127.1.0.11": "EX1", "127.1.0.21": "EX2"},
        dns=[],
        ldap=[],
        queues={},
        tracking={
            "EX1": [
                _event(1019, "127.1.0.200"),
                _event(1033),
                _event(1034, queue="Seattle-London RGC"),
                _event(1031),
            ],
            "EX2": [_event(1019, "127.1.0.11"), _event(1036), _event(1023)],
            "EX3": [],
        },
        deliveries=[
            Delivery(
                DeliveryKind.MAILBOX, "bob@contoso.com", "EX2", "ann@fabrikam.com", ("bob@contoso.com",), b""
            )
        ],
    )
    svg = path_svg(evidence)
    root = ElementTree.fromstring(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts[:1] and {"internet", "EX1", "EX2", "mailbox: bob@contoso.com"} <= set(texts)
    assert "EX3" not in texts  # a server that did nothing is not drawn
    assert "1019 1033 1034 1031" in texts
    lines = root.findall("{http://www.w3.org/2000/svg}line")
    assert len(lines) == 3  # internet → EX1 → EX2 → mailbox
    # Top to bottom, one hop a row: as narrow as one box and the labels, whatever the path's length.
    ys = {t.text: float(t.get("y", 0)) for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert ys["internet"] < ys["EX1"] < ys["EX2"] < ys["mailbox: bob@contoso.com"]
    assert float(root.get("width", 0)) < 400
    # Each connector is labelled: how the client sent it, the link queue (connector) EX1 routed it to,
    # and the store driver's local delivery; each label between the boxes it joins.
    for label, upper, lower in [
        ("SMTP", "internet", "EX1"),
        ("Seattle-London RGC", "EX1", "EX2"),
        ("store driver: local delivery", "EX2", "mailbox: bob@contoso.com"),
    ]:
        assert ys[upper] < ys[label] < ys[lower], label


def test_a_loop_between_servers_is_drawn_without_hanging() -> None:
    evidence = Evidence(
        hosts={"127.1.0.11": "EX1", "127.1.0.21": "EX2"},
        dns=[],
        ldap=[],
        queues={},
        deliveries=[],
        tracking={"EX1": [_event(1019, "127.1.0.21")], "EX2": [_event(1019, "127.1.0.11")]},
    )
    assert len(re.findall("<rect", path_svg(evidence))) == 2
