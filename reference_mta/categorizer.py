"""Message categorizer: resolves sender and recipients against the global catalog over LDAP.

For each recipient it looks up proxyAddresses (case-insensitively, the address escaped per RFC 4515 so
`*`, `(`, `)` and `\\` in a local part can never widen the filter), stamps the home server's FQDN on the
recipient (the server msExchHomeServerName names, or the one that holds the homeMDB store) and its
store, expands mail-enabled groups (nested, each group once), replaces contacts by their
targetAddress, and applies per-recipient restrictions. It then marks each recipient local, remote or
gateway, or failed with the NDR status Exchange gives (KB 233363's order).

A recipient that another server of the organization has categorized already (its state came with the
message in XEXCH50, `mailmsg.read_exch50_blob`) is resolved and routed, but its forwarding and its
expansion are not applied again.
"""

from __future__ import annotations

import asyncio
import threading

from ldap3.utils.conv import escape_filter_chars

from reference_mta import replies
from reference_mta.directory import Directory, DirectoryEntry, primary_smtp, proxy_filter
from reference_mta.mailmsg import (
    RP_ERROR_CONTEXT_CAT,
    RP_EXPANDED,
    RP_HANDLED,
    RP_UNRESOLVED,
    MailMsg,
    Recipient,
    ResolvedSender,
    decapsulate,
)
from reference_mta.topology import Organization, Server

RECIPIENT_ATTRIBUTES = (
    "objectClass",
    "cn",
    "displayName",
    "mail",
    "proxyAddresses",
    "legacyExchangeDN",
    "homeMDB",
    "msExchHomeServerName",
    "targetAddress",
    "member",
    "authOrig",
    "unauthOrig",
    "msExchRequireAuthToSendTo",
    "delivContLength",
    "altRecipient",
    "deliverAndRedirect",
    "msExchExpansionServerName",
    "dLMemSubmitPerms",
    "dLMemRejectPerms",
)


class Categorizer:
    def __init__(
        self,
        organization: Organization,
        server: Server,
        directory: Directory,
        base_dn: str,
    ) -> None:
        self.organization = organization
        self.server = server
        self.directory = directory
        self.base_dn = base_dn
        self._server_fqdn_cache: dict[str, str | None] = {}
        self._one_at_a_time = asyncio.Lock()  # the forwarding chains are kept per message, on self
        self._in_thread = threading.Lock()

    async def categorize(self, msg: MailMsg) -> None:
        # The directory's look-ups block (over LDAP they wait for the network; the lab's in-process
        # catalog computes), and on the event loop they held up every session of the server.
        async with self._one_at_a_time:
            await asyncio.to_thread(self._categorize, msg)

    def _categorize(self, msg: MailMsg) -> None:
        # Also held in the thread: a categorization cancelled at a stop releases the asyncio lock while
        # its thread still runs.
        with self._in_thread:
            self._categorize_message(msg)

    def _categorize_message(self, msg: MailMsg) -> None:
        self._chains: dict[int, list[str]] = {}
        hops, limit = int(msg.properties.get("HOP_COUNT", 0)), int(msg.properties.get("MAX_HOP_COUNT", 15))
        if hops > limit:
            for recipient in msg.pending():
                recipient.fail_with(replies.hop_count_exceeded(hops, limit), RP_ERROR_CONTEXT_CAT)
            return
        sender = self._resolve_sender(msg)
        if sender is not None and not self._sender_within_limits(msg, sender):
            return
        expanded_seen: set[str] = set()
        resolved: set[str] = set()
        queue = [r for r in msg.recipients if r.status == "pending"]
        while queue:
            recipient = queue.pop(0)
            queue.extend(self._categorize_one(msg, recipient, sender, expanded_seen))
            # Two addresses of one mailbox (or a member reached twice) get one copy, as in Exchange.
            if recipient.user_dn and recipient.status in ("local", "remote", "gateway"):
                if recipient.user_dn.lower() in resolved:
                    recipient.status = "duplicate"
                    recipient.flags |= RP_HANDLED
                resolved.add(recipient.user_dn.lower())
        msg.properties["MESSAGE_STATUS"] = 5  # MP_STATUS_CATEGORIZED

    def _resolve_sender(self, msg: MailMsg) -> DirectoryEntry | None:
        msg.resolved_sender = None
        if not msg.sender:
            return None
        found = self.directory.search(
            self.base_dn,
            proxy_filter("smtp", msg.sender),
            ("cn", "legacyExchangeDN", "proxyAddresses", "submissionContLength", "msExchRecipLimit"),
        )
        if len(found) != 1:
            return None
        msg.properties["SENDER_ADDRESS_LEGACY_EX_DN"] = found[0].first("legacyExchangeDN")
        msg.properties["SENDER_DN"] = found[0].dn
        if not msg.properties.get("ANONYMOUS_ORIGIN"):
            # Connector restrictions judge the sender only where its origin vouches for it.
            msg.resolved_sender = ResolvedSender(found[0].dn, self._sender_addresses(found[0]))
        return found[0]

    def _sender_addresses(self, sender: DirectoryEntry) -> frozenset[str]:
        """The SMTP addresses of the sender and of every group it is a member of, nested groups
        included (each group once, so a loop of groups ends): what a connector's restriction list can
        name. Groups are looked up only when some connector has such a list."""
        addresses = set(_smtp_proxies(sender))
        if not any(
            c.restrictions.accept_from or c.restrictions.reject_from for c in self.organization.connectors
        ):
            return frozenset(addresses)
        pending, seen = [sender.dn], {sender.dn.lower()}
        while pending:
            member = escape_filter_chars(pending.pop())
            for group in self.directory.search(
                self.base_dn, f"(&(objectClass=group)(member={member}))", ("proxyAddresses",)
            ):
                if group.dn.lower() not in seen:
                    seen.add(group.dn.lower())
                    addresses |= _smtp_proxies(group)
                    pending.append(group.dn)
        return frozenset(addresses)

    def _sender_within_limits(self, msg: MailMsg, sender: DirectoryEntry) -> bool:
        """Per-sender limits (they override the organization's defaults, which are "no limit"): a
        message over them is returned whole — 5.2.3 for size, 5.5.3 for the number of recipients."""
        size_limit = sender.first("submissionContLength")
        recipient_limit = sender.first("msExchRecipLimit")
        pending = msg.pending()
        if size_limit and msg.size > int(size_limit) * 1024:
            reply = replies.over_sender_size_limit(msg.size, size_limit)
        elif recipient_limit and len(pending) > int(recipient_limit):
            reply = replies.over_sender_recipient_limit(len(pending), recipient_limit)
        else:
            return True
        for recipient in pending:
            recipient.fail_with(reply, RP_ERROR_CONTEXT_CAT)
        return False

    def _categorize_one(
        self, msg: MailMsg, recipient: Recipient, sender: DirectoryEntry | None, expanded_seen: set[str]
    ) -> list[Recipient]:
        """Resolve one recipient; returns new recipients (group members) to categorize too."""
        if self._is_foreign(recipient):
            recipient.status = "gateway"
            return []
        entry = self._entry_of(recipient)
        if entry is None:
            return []
        recipient.user_dn = entry.dn
        recipient.display_name = entry.first("displayName") or entry.first("cn")
        if not self._permitted(msg, recipient, entry, sender):
            return []  # a group's restrictions apply before it is expanded
        if "group" in entry.classes:
            if recipient.categorized:
                # Expanded by the categorizer that sent it here: its members travel as recipients of
                # their own.
                recipient.status = "expanded"
                recipient.flags |= RP_EXPANDED
                return []
            return self._expand(msg, recipient, entry, expanded_seen)
        target = entry.first("targetAddress")
        if target and not entry.first("homeMDB"):
            _to_contact_target(recipient, target)
            recipient.categorized = True
            return []
        if not self._stamp_home(recipient, entry):
            return []
        if recipient.categorized:
            # Its forwarding was applied by the server that sent it here (XEXCH50): applied again, the
            # alternate recipient would get one more copy on every hop.
            return []
        recipient.categorized = True
        return self._redirect(msg, recipient, entry)

    @staticmethod
    def _is_foreign(recipient: Recipient) -> bool:
        """Whether the recipient is a foreign address (a gateway's); an IMCEA-encapsulated SMTP address
        becomes the foreign address it carries."""
        if recipient.address_type == "SMTP":
            encapsulated = decapsulate(recipient.address)
            if encapsulated is not None:
                recipient.address_type, recipient.address = encapsulated
        return recipient.address_type != "SMTP"

    def _entry_of(self, recipient: Recipient) -> DirectoryEntry | None:
        """The recipient's one directory entry. None when it has none (failed in an authoritative domain,
        routed onwards by address space otherwise) or several (failed: ambiguous)."""
        policy = self.organization.policy_domain(recipient.domain)
        found = self.directory.search(
            self.base_dn, proxy_filter("smtp", recipient.address), RECIPIENT_ATTRIBUTES
        )
        if not found:
            if policy is not None and policy.authoritative:
                recipient.fail_with(replies.user_unknown(recipient.address), RP_ERROR_CONTEXT_CAT)
                recipient.flags |= RP_UNRESOLVED
            else:
                # Not ours (or a shared namespace): AQ routes it onwards by address space.
                recipient.status = "remote"
            return None
        if len(found) > 1:
            recipient.fail_with(replies.ambiguous_address(recipient.address), RP_ERROR_CONTEXT_CAT)
            return None
        return found[0]

    def _stamp_home(self, recipient: Recipient, entry: DirectoryEntry) -> bool:
        """Stamp the mailbox's store and home server on the recipient (local or remote); False when the
        mailbox or its server cannot be found (the recipient has failed)."""
        home_mdb = entry.first("homeMDB")
        if not home_mdb:
            recipient.fail_with(replies.no_mailbox(recipient.address), RP_ERROR_CONTEXT_CAT)
            return False
        fqdn = self._home_server(entry, home_mdb)
        if fqdn is None:
            recipient.fail_with(replies.home_server_not_found(recipient.address), RP_ERROR_CONTEXT_CAT)
            return False
        recipient.home_mdb = home_mdb
        recipient.home_server = fqdn
        recipient.address = entry.first("mail") or recipient.address
        recipient.status = "local" if fqdn == self.server.fqdn else "remote"
        return True

    def _redirect(self, msg: MailMsg, recipient: Recipient, entry: DirectoryEntry) -> list[Recipient]:
        """Forwarding (altRecipient): the alternate recipient gets the message too, or instead when
        deliverAndRedirect is not set. A chain that comes back to an earlier mailbox is a loop: 5.4.6."""
        alternate_dn = entry.first("altRecipient")
        if not alternate_dn:
            return []
        # The chain of mailboxes that forwarded to this recipient: each forwarding path has its own.
        chain = [*self._chains.get(id(recipient), []), entry.dn.lower()]
        if alternate_dn.lower() in chain:
            recipient.fail_with(replies.forwarding_loop(recipient.address), RP_ERROR_CONTEXT_CAT)
            return []
        found = self.directory.search(alternate_dn, "(objectClass=*)", RECIPIENT_ATTRIBUTES, scope="BASE")
        address = (found[0].first("mail") or primary_smtp(found[0])) if found else None
        if address is None:
            return []  # a forwarding address that no longer exists: deliver as if there were none
        msg.properties.setdefault("REDIRECTIONS", []).append([recipient.address, address])
        if (entry.first("deliverAndRedirect") or "").upper() != "TRUE":
            recipient.status = "redirected"
            recipient.flags |= RP_HANDLED
        alternate = Recipient(address=address, original=recipient.original)
        self._chains[id(alternate)] = chain
        msg.recipients.append(alternate)
        return [alternate]

    def _permitted(
        self, msg: MailMsg, recipient: Recipient, entry: DirectoryEntry, sender: DirectoryEntry | None
    ) -> bool:
        """Per-recipient restrictions (step 5 of KB 233363)."""
        size_limit = entry.first("delivContLength")
        if size_limit and msg.size > int(size_limit) * 1024:
            recipient.fail_with(
                replies.over_recipient_size_limit(msg.size, size_limit, recipient.address),
                RP_ERROR_CONTEXT_CAT,
            )
            return False
        requires_auth = (entry.first("msExchRequireAuthToSendTo") or "").upper() == "TRUE"
        if (
            requires_auth
            and not msg.properties.get("AUTHENTICATED_USER_NAME")
            and not msg.properties.get("ORG_INTERNAL")
        ):
            recipient.fail_with(replies.authenticated_senders_only(recipient.address), RP_ERROR_CONTEXT_CAT)
            return False
        sender_dn = sender.dn.lower() if sender else None
        # "Accept messages from": listed senders, and members of listed groups (authOrig may name a
        # group; dLMemSubmitPerms names groups only).
        allowed = [dn.lower() for dn in entry.all("authOrig") + entry.all("dLMemSubmitPerms")]
        if allowed and not (sender_dn and self._sender_among(sender_dn, allowed)):
            recipient.fail_with(replies.sender_not_allowed(recipient.address), RP_ERROR_CONTEXT_CAT)
            return False
        rejected = [dn.lower() for dn in entry.all("unauthOrig") + entry.all("dLMemRejectPerms")]
        if sender_dn and rejected and self._sender_among(sender_dn, rejected):
            recipient.fail_with(replies.sender_rejected(recipient.address), RP_ERROR_CONTEXT_CAT)
            return False
        return True

    def _sender_among(self, sender_dn: str, listed: list[str]) -> bool:
        """Is the sender one of `listed`, or a member (through nested groups) of a listed group?
        Each group is opened once, so shared and looping memberships cost one look-up each."""
        pending, visited = list(listed), set()
        while pending:
            dn = pending.pop()
            if dn == sender_dn:
                return True
            if dn in visited:
                continue
            visited.add(dn)
            found = self.directory.search(dn, "(objectClass=group)", ("member",), scope="BASE")
            if found:
                pending.extend(m.lower() for m in found[0].all("member"))
        return False

    def _expand(
        self, msg: MailMsg, recipient: Recipient, group: DirectoryEntry, seen: set[str]
    ) -> list[Recipient]:
        expansion_server = group.first("msExchExpansionServerName")
        fqdn = self._server_fqdn_by_legacy_dn(expansion_server) if expansion_server else None
        if expansion_server and fqdn != self.server.fqdn:
            # Only the group's expansion server expands it: the message goes there unexpanded.
            if fqdn is None:
                recipient.fail_with(
                    replies.expansion_server_not_found(recipient.address), RP_ERROR_CONTEXT_CAT
                )
            else:
                recipient.home_server, recipient.status = fqdn, "remote"
            return []
        recipient.status = "expanded"
        recipient.flags |= RP_EXPANDED
        if group.dn.lower() in seen:
            return []  # a group nested in itself is expanded once
        seen.add(group.dn.lower())
        members: list[Recipient] = []
        known = {r.address.lower() for r in msg.recipients}
        for member_dn in group.all("member"):
            found = self.directory.search(member_dn, "(objectClass=*)", RECIPIENT_ATTRIBUTES, scope="BASE")
            if not found:
                continue  # members from other domains can be invisible in the GC: no NDR (KB)
            member = found[0]
            address = member.first("mail") or primary_smtp(member)
            if address is None or address.lower() in known:
                continue
            known.add(address.lower())
            added = Recipient(address=address, original=recipient.original)
            msg.recipients.append(added)
            members.append(added)
        return members

    def home_server_of(self, address: str) -> str | None:
        """FQDN of the home server of the mailbox with this SMTP address, if it is one."""
        found = self.directory.search(
            self.base_dn, proxy_filter("smtp", address), ("homeMDB", "msExchHomeServerName")
        )
        home_mdb = found[0].first("homeMDB") if len(found) == 1 else None
        return self._home_server(found[0], home_mdb) if home_mdb else None

    def _home_server(self, entry: DirectoryEntry, home_mdb: str) -> str | None:
        """The home server routing sends a mailbox's mail to: the one msExchHomeServerName names (the
        legacyExchangeDN of the server, "where mail is delivered"), else the one holding the homeMDB
        store. When the two disagree (a move half replicated), routing follows msExchHomeServerName and
        that server's store driver, which delivers into homeMDB's store only, returns the message with
        5.2.1 if the store is not its own (docs/decisions.md)."""
        legacy_dn = entry.first("msExchHomeServerName")
        if legacy_dn:
            return self._server_fqdn_by_legacy_dn(legacy_dn)
        return self._home_server_fqdn(home_mdb)

    def _server_fqdn_by_legacy_dn(self, legacy_dn: str) -> str | None:
        key = f"legacy:{legacy_dn.lower()}"
        if key not in self._server_fqdn_cache:
            self._server_fqdn_cache[key] = self._look_up_server_fqdn(legacy_dn)
        return self._server_fqdn_cache[key]

    def _look_up_server_fqdn(self, legacy_dn: str) -> str | None:
        found = self.directory.search(
            self.base_dn,
            f"(&(objectClass=msExchExchangeServer)(legacyExchangeDN={escape_filter_chars(legacy_dn)}))",
            ("networkAddress",),
        )
        for value in found[0].all("networkAddress") if found else []:
            if value.lower().startswith("ncacn_ip_tcp:"):
                return value.split(":", 1)[1].lower()
        return None

    def _home_server_fqdn(self, home_mdb: str) -> str | None:
        """homeMDB → server object (strip store, storage group and InformationStore RDNs) → FQDN from the
        `ncacn_ip_tcp:` network address."""
        if home_mdb in self._server_fqdn_cache:
            return self._server_fqdn_cache[home_mdb]
        server_dn = _strip_rdns(home_mdb, 3)
        found = self.directory.search(
            server_dn, "(objectClass=msExchExchangeServer)", ("networkAddress",), scope="BASE"
        )
        fqdn = None
        if found:
            for value in found[0].all("networkAddress"):
                if value.lower().startswith("ncacn_ip_tcp:"):
                    fqdn = value.split(":", 1)[1].lower()
        self._server_fqdn_cache[home_mdb] = fqdn
        return fqdn


def _smtp_proxies(entry: DirectoryEntry) -> set[str]:
    return {p[5:].lower() for p in entry.all("proxyAddresses") if p[:5].lower() == "smtp:"}


def _strip_rdns(dn: str, count: int) -> str:
    # DN values in the fixtures never contain escaped commas; a full RFC 4514 parser would be overkill.
    return ",".join(dn.split(",")[count:])


def _to_contact_target(recipient: Recipient, target: str) -> None:
    """A contact (targetAddress, no mailbox) is replaced by its target address."""
    kind, _, address = target.partition(":")
    recipient.address = address
    recipient.address_type = kind.upper()
    recipient.status = "remote" if kind.upper() == "SMTP" else "gateway"
