"""The categorizer against directories built in code: forwarding, expansion servers, group-based
restrictions, nested groups, contacts and unknown recipients."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from harness.lab import config as lab_config
from harness.lab.gc import MockGlobalCatalog
from reference_mta.categorizer import Categorizer
from reference_mta.mailmsg import MailMsg
from reference_mta.topology import Organization

ROOT = Path(__file__).resolve().parents[1]
BASE = "DC=test,DC=org"
USERS = f"CN=Users,{BASE}"
AG = "CN=AG,CN=Administrative Groups,CN=Org,CN=Microsoft Exchange,CN=Services,CN=Configuration," + BASE


def server_dn(name: str) -> str:
    return f"CN={name},CN=Servers,{AG}"


def legacy(name: str) -> str:
    return f"/o=Contoso/ou=First Administrative Group/cn=Configuration/cn=Servers/cn={name}"


class Directory:
    """LDIF written from Python: each test builds exactly the directory it needs."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, list[str]]]] = [
            (BASE, {"objectClass": ["domain"]}),
            (USERS, {"objectClass": ["container"]}),
            (f"CN=Cat,{USERS}", {"objectClass": ["user"], "userPassword": ["pw"]}),
        ]
        for name in ("EX1", "EX2"):
            self.entries.append(
                (
                    server_dn(name),
                    {
                        "objectClass": ["msExchExchangeServer"],
                        "legacyExchangeDN": [legacy(name)],
                        "networkAddress": [f"ncacn_ip_tcp:{name.lower()}.contoso.com"],
                    },
                )
            )
            self.entries.append(
                (f"CN=Store,CN=SG,CN=InformationStore,{server_dn(name)}", {"objectClass": ["mdb"]})
            )

    def user(self, name: str, server: str = "EX1", **extra: str | list[str]) -> str:
        dn = f"CN={name},{USERS}"
        attributes: dict[str, list[str]] = {
            "objectClass": ["user"],
            "mail": [f"{name}@contoso.com"],
            "proxyAddresses": [f"SMTP:{name}@contoso.com"],
            "homeMDB": [f"CN=Store,CN=SG,CN=InformationStore,{server_dn(server)}"],
        }
        attributes.update({k: v if isinstance(v, list) else [v] for k, v in extra.items()})
        self.entries.append((dn, attributes))
        return dn

    def group(self, name: str, members: list[str], **extra: str | list[str]) -> str:
        dn = f"CN={name},{USERS}"
        attributes = {
            "objectClass": ["group"],
            "mail": [f"{name}@contoso.com"],
            "proxyAddresses": [f"SMTP:{name}@contoso.com"],
            "member": members,
        }
        attributes.update({k: v if isinstance(v, list) else [v] for k, v in extra.items()})
        self.entries.append((dn, attributes))
        return dn

    def categorizer(self, tmp_path: Path, server: str = "EX1") -> Categorizer:
        ldif = ["version: 1", ""]
        for dn, attributes in self.entries:
            ldif.append(f"dn: {dn}")
            ldif.extend(f"{key}: {value}" for key, values in attributes.items() for value in values)
            ldif.append("")
        path = tmp_path / "directory.ldif"
        path.write_text("\n".join(ldif))
        config = lab_config.load(ROOT / "fixtures" / "labs" / "contoso.yaml").global_catalog
        catalog = MockGlobalCatalog(
            replace(config, directory=path, base_dn=BASE, bind_dn=f"CN=Cat,{USERS}", bind_password="pw")
        )
        catalog.load()
        org = organization()
        return Categorizer(org, org.server(server), catalog.connect(server), BASE)


def organization() -> Organization:
    return lab_config.load(ROOT / "fixtures" / "labs" / "contoso.yaml").organization


def categorize(categorizer: Categorizer, sender: str, *recipients: str, **properties: object) -> MailMsg:
    msg = MailMsg.new(sender, list(recipients), MSG_SIZE_HINT=100, **properties)
    asyncio.run(categorizer.categorize(msg))
    return msg


def outcome(msg: MailMsg) -> dict[str, str]:
    return {r.address: r.status if r.status != "failed" else f"failed {r.enhanced}" for r in msg.recipients}


@pytest.mark.parametrize(("both", "expected"), [("FALSE", "redirected"), ("TRUE", "local")])
def test_forwarding_with_and_without_delivery_to_both(tmp_path: Path, both: str, expected: str) -> None:
    directory = Directory()
    bob = directory.user("bob", "EX2")
    directory.user("ivan", altRecipient=bob, deliverAndRedirect=both)
    msg = categorize(directory.categorizer(tmp_path), "x@fabrikam.com", "ivan@contoso.com")
    assert outcome(msg) == {"ivan@contoso.com": expected, "bob@contoso.com": "remote"}
    assert msg.recipients[1].home_server == "ex2.contoso.com"
    assert msg.properties["REDIRECTIONS"] == [["ivan@contoso.com", "bob@contoso.com"]]


def test_a_forwarding_loop_is_returned_with_5_4_6(tmp_path: Path) -> None:
    directory = Directory()
    directory.user("ann", altRecipient=f"CN=ben,{USERS}")
    directory.user("ben", altRecipient=f"CN=ann,{USERS}")
    msg = categorize(directory.categorizer(tmp_path), "x@fabrikam.com", "ann@contoso.com")
    assert "failed 5.4.6" in outcome(msg).values()


def test_a_group_is_expanded_only_on_its_expansion_server(tmp_path: Path) -> None:
    directory = Directory()
    alice = directory.user("alice")
    directory.group("execs", [alice], msExchExpansionServerName=legacy("EX2"))
    elsewhere = categorize(directory.categorizer(tmp_path, "EX1"), "x@fabrikam.com", "execs@contoso.com")
    assert outcome(elsewhere) == {"execs@contoso.com": "remote"}
    assert elsewhere.recipients[0].home_server == "ex2.contoso.com"
    there = categorize(directory.categorizer(tmp_path, "EX2"), "x@fabrikam.com", "execs@contoso.com")
    assert outcome(there) == {"execs@contoso.com": "expanded", "alice@contoso.com": "remote"}


def test_accept_only_from_members_of_a_group_and_reject_members_of_another(tmp_path: Path) -> None:
    directory = Directory()
    insider = directory.user("insider")
    directory.user("outsider")
    nested = directory.group("inner", [insider])
    allowed = directory.group("allowed", [nested])
    directory.user("boss", dLMemSubmitPerms=allowed)
    banned = directory.group("banned", [insider])
    directory.user("shy", dLMemRejectPerms=banned)
    categorizer = directory.categorizer(tmp_path)
    assert outcome(categorize(categorizer, "insider@contoso.com", "boss@contoso.com")) == {
        "boss@contoso.com": "local"
    }
    assert outcome(categorize(categorizer, "outsider@contoso.com", "boss@contoso.com")) == {
        "boss@contoso.com": "failed 5.7.1"
    }
    assert outcome(categorize(categorizer, "insider@contoso.com", "shy@contoso.com")) == {
        "shy@contoso.com": "failed 5.7.1"
    }
    assert outcome(categorize(categorizer, "outsider@contoso.com", "shy@contoso.com")) == {
        "shy@contoso.com": "local"
    }


def test_nested_groups_that_contain_each_other_are_expanded_once_with_one_copy_each(tmp_path: Path) -> None:
    directory = Directory()
    dora = directory.user("dora")
    directory.group("ga", [f"CN=gb,{USERS}", dora])
    directory.group("gb", [f"CN=ga,{USERS}", dora])
    msg = categorize(directory.categorizer(tmp_path), "x@fabrikam.com", "ga@contoso.com", "dora@contoso.com")
    statuses = outcome(msg)
    assert statuses["ga@contoso.com"] == "expanded" and statuses["gb@contoso.com"] == "expanded"
    assert [r.status for r in msg.recipients if r.address == "dora@contoso.com"].count("local") == 1


def test_a_contact_is_replaced_by_its_target_address(tmp_path: Path) -> None:
    directory = Directory()
    directory.entries.append(
        (
            f"CN=pat,{USERS}",
            {
                "objectClass": ["contact"],
                "proxyAddresses": ["smtp:pat@contoso.com"],
                "targetAddress": ["SMTP:pat@partner.example"],
            },
        )
    )
    msg = categorize(directory.categorizer(tmp_path), "x@fabrikam.com", "pat@contoso.com")
    assert outcome(msg) == {"pat@partner.example": "remote"}


def test_unknown_in_an_authoritative_domain_fails_but_not_in_a_shared_one(tmp_path: Path) -> None:
    categorizer = Directory().categorizer(tmp_path)
    msg = categorize(categorizer, "x@fabrikam.com", "nobody@contoso.com", "nobody@shared.contoso.com")
    assert outcome(msg) == {"nobody@contoso.com": "failed 5.1.1", "nobody@shared.contoso.com": "remote"}


def test_forwarding_paths_are_judged_separately_for_loops(tmp_path: Path) -> None:
    directory = Directory()
    bob = directory.user("bob", "EX2")
    ann = directory.user("ann", altRecipient=bob)
    directory.user("xena", altRecipient=ann)  # xena → ann → bob is a chain, not a loop
    msg = categorize(directory.categorizer(tmp_path), "x@fabrikam.com", "ann@contoso.com", "xena@contoso.com")
    assert "failed 5.4.6" not in outcome(msg).values()
    # Bob is reached through both paths and gets one copy.
    assert [r.status for r in msg.recipients if r.address == "bob@contoso.com"] == ["remote", "duplicate"]


def test_a_recipient_categorized_upstream_is_neither_forwarded_nor_expanded_again(tmp_path: Path) -> None:
    # What XEXCH50 carried from the server that categorized the message first (tests/test_xexch50.py
    # shows it over SMTP).
    directory = Directory()
    bob = directory.user("bob", "EX2")
    alice = directory.user("alice")
    directory.user("judy", altRecipient=bob, deliverAndRedirect="TRUE")
    directory.group("execs", [alice])
    msg = MailMsg.new("x@fabrikam.com", ["judy@contoso.com", "execs@contoso.com"], MSG_SIZE_HINT=100)
    for recipient in msg.recipients:
        recipient.categorized = True
    asyncio.run(directory.categorizer(tmp_path).categorize(msg))
    assert outcome(msg) == {"judy@contoso.com": "local", "execs@contoso.com": "expanded"}
    assert "REDIRECTIONS" not in msg.properties


def test_the_categorizer_marks_what_it_has_categorized(tmp_path: Path) -> None:
    directory = Directory()
    bob = directory.user("bob", "EX2")
    directory.user("judy", altRecipient=bob, deliverAndRedirect="TRUE")
    msg = categorize(directory.categorizer(tmp_path), "x@fabrikam.com", "judy@contoso.com")
    assert outcome(msg) == {"judy@contoso.com": "local", "bob@contoso.com": "remote"}
    assert [r.categorized for r in msg.recipients] == [True, True]


def test_routing_follows_msexchhomeservername_over_the_homemdb_store(tmp_path: Path) -> None:
    # A move half replicated: the store is EX2's, msExchHomeServerName still names EX1.
    directory = Directory()
    directory.user("moved", "EX2", msExchHomeServerName=legacy("EX1"))
    directory.user("bob", "EX2", msExchHomeServerName=legacy("EX2"))
    directory.user("carl", "EX2")  # no msExchHomeServerName: the homeMDB store's server
    on_ex2 = categorize(
        directory.categorizer(tmp_path, "EX2"), "x@fabrikam.com", "moved@contoso.com", "bob@contoso.com"
    )
    assert outcome(on_ex2) == {"moved@contoso.com": "remote", "bob@contoso.com": "local"}
    assert on_ex2.recipients[0].home_server == "ex1.contoso.com"
    on_ex1 = categorize(
        directory.categorizer(tmp_path, "EX1"), "x@fabrikam.com", "moved@contoso.com", "carl@contoso.com"
    )
    assert outcome(on_ex1) == {"moved@contoso.com": "local", "carl@contoso.com": "remote"}
    assert on_ex1.recipients[0].home_mdb == f"CN=Store,CN=SG,CN=InformationStore,{server_dn('EX2')}"
    assert on_ex1.recipients[1].home_server == "ex2.contoso.com"


def test_a_home_server_name_that_names_no_server_is_returned_with_5_1_0(tmp_path: Path) -> None:
    directory = Directory()
    directory.user("lost", msExchHomeServerName=legacy("EX9"))
    msg = categorize(directory.categorizer(tmp_path), "x@fabrikam.com", "lost@contoso.com")
    assert outcome(msg) == {"lost@contoso.com": "failed 5.1.0"}
