"""A gateway connector's `smtp_domain` is the domain of the IMCEA address a foreign sender the directory
does not know gets; without one, the organization's primary domain."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.judge.evidence import Evidence
from harness.lab import config as lab_config
from harness.lab.runtime import Lab

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "labs" / "contoso.yaml"
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
_FIRST = int(os.environ.get("MAILFLOW_LAB_BASE", "127.170.0.0").split(".")[1])
BASE = f"127.{(_FIRST + WORKER) % 250}.32.0"
MEMO = b"From: Ann Lee/Sales/Fabrikam\nSendTo: Dave Ito/Contoso\nSubject: domain\nBody:\nhello\n"


@pytest.mark.parametrize(
    ("line", "domain"),
    [
        ("      smtp_domain: notes.contoso.com\n", "notes.contoso.com"),
        ("", "contoso.com"),  # not given: the primary domain
    ],
)
def test_an_unknown_foreign_sender_is_encapsulated_in_the_connectors_smtp_domain(
    tmp_path: Path, line: str, domain: str
) -> None:
    text = LAB.read_text(encoding="utf-8")
    assert "      smtp_domain: contoso.com\n" in text
    # Next to the lab's own fixtures, which the lab file names by relative paths.
    (tmp_path / "labs").mkdir()
    (tmp_path / "directory").symlink_to(LAB.parents[1] / "directory")
    lab_file = tmp_path / "labs" / "contoso.yaml"
    lab_file.write_text(text.replace("      smtp_domain: contoso.com\n", line), encoding="utf-8")
    config = lab_config.load(lab_file, base=BASE, port_offset=29300)
    with Lab(config, tmp_path / "lab") as running:
        running.foreign_send("Notes Connector", MEMO)
        assert running.settle()
        assert [d.describe() for d in Evidence.collect(running).deliveries] == [
            f"mailbox dave@contoso.com on EX4 (from IMCEANOTES-Ann+20Lee+2FSales+2FFabrikam@{domain})"
        ]
