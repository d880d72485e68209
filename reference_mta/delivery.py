"""Outbound SMTP: carries a link queue's message to its next hop (another Exchange server, a connector's
remote bridgehead, a smart host, or the destination domain's mail exchangers found through DNS).

Resolution goes through the lab's DNS with dnspython (MX by preference, then A; a domain without MX is
its own exchanger). The session binds the server's own address so that the next hop sees who is
calling. To another server of the organization that offers it, the categorizer's per-recipient state
goes along in XEXCH50 between the recipients and the content. Per-recipient refusals are permanent
(5xx → NDR) or transient (4xx → retry); a host that cannot be reached or answers 4xx to the transaction
makes the next address be tried, then a retry. A next hop that does not know EHLO (500, 501, 502 or
504) is greeted again with HELO in the same session (RFC 5321 4.1.1.1, 3.2), without extensions.
Each recipient keeps the last reply the next hop gave about it in this attempt, and who gave it, for
the DSN's Diagnostic-Code and Remote-MTA.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver

from reference_mta import replies
from reference_mta.mailmsg import (
    EXCH50_VERSION,
    RP_DELIVERED,
    RP_ERROR_CONTEXT_MTA,
    MailMsg,
    Recipient,
    encapsulate,
    exch50_blob,
)
from reference_mta.queue_contract import DeliveryResult, Hop, HopKind

# RFC 5321 4.1.1.1: a server that does not support EHLO answers it as an unrecognised command; the
# client may then fall back to HELO. Any other refusal of EHLO stays a refusal.
_EHLO_UNKNOWN = frozenset({500, 501, 502, 504})


class Unresolvable(Exception):
    """Permanent: the name does not exist."""


class ResolverTrouble(Exception):
    """Transient: DNS did not answer (SERVFAIL, timeout)."""


class SmtpDelivery:
    def __init__(
        self,
        fqdn: str,
        source_address: str,
        resolver: dns.asyncresolver.Resolver,
        port: int,
        timeout: float = 30.0,
        own_addresses: frozenset[str] = frozenset(),
        encapsulation_domain: str = "",
        is_organization_server: Callable[[str], bool] = lambda address: False,
        helo_links: frozenset[str] = frozenset(),
    ) -> None:
        # Link queues (lower case) whose connector says "Send HELO instead of EHLO" (route_action).
        self.helo_links = helo_links
        self.is_organization_server = is_organization_server
        self.encapsulation_domain = encapsulation_domain or fqdn
        self.own_addresses = own_addresses | {source_address}
        self.fqdn = fqdn
        self.source_address = source_address
        self.resolver = resolver
        self.port = port
        self.timeout = timeout

    async def deliver(self, hop: Hop, msg: MailMsg, content: bytes) -> DeliveryResult:
        pending = list(msg.recipients)
        for recipient in pending:
            # A DSN quotes what the next hop said in the latest attempt, not in an earlier one.
            recipient.remote_reply = recipient.remote_mta = None
        try:
            addresses = await self._addresses(hop)
        except Unresolvable as exc:
            for recipient in pending:
                recipient.fail_with(replies.unresolvable(str(exc)), RP_ERROR_CONTEXT_MTA)
            return DeliveryResult(delivered=[], failed=pending, deferred=[], error=str(exc))
        except ResolverTrouble as exc:
            return DeliveryResult(
                delivered=[], failed=[], deferred=pending, error=replies.dns_trouble(str(exc))
            )
        if any(address in self.own_addresses for _, address in addresses):
            for recipient in pending:
                recipient.fail_with(replies.looping_condition(", ".join(hop.targets)), RP_ERROR_CONTEXT_MTA)
            return DeliveryResult(delivered=[], failed=pending, deferred=[], error="loop to self")
        errors: list[str] = []
        helo = hop.queue.lower() in self.helo_links
        for name, address in addresses:
            # The route action is for the remote domain's next hop; a server of the organization is
            # greeted with EHLO whatever the connector says, or XEXCH50 could not carry the message's
            # categorizer state and origin mark.
            greet_helo = helo and not self.is_organization_server(address)
            result = await self._session(name, address, msg, content, pending, greet_helo)
            if isinstance(result, DeliveryResult):
                return result
            errors.append(f"{address}: {result}")
        return DeliveryResult(delivered=[], failed=[], deferred=pending, error="; ".join(errors))

    async def _session(
        self,
        name: str,
        address: str,
        msg: MailMsg,
        content: bytes,
        recipients: list[Recipient],
        helo: bool = False,
    ) -> DeliveryResult | str:
        """One SMTP transaction; a string (the transient error) means: try the next address."""
        client = aiosmtplib.SMTP(
            hostname=address,
            port=self.port,
            local_hostname=self.fqdn,
            source_address=(self.source_address, 0),
            timeout=self.timeout,
            start_tls=False,
            use_tls=False,
        )
        try:
            await client.connect()
            # HELO asks the next hop for no extension: the transaction is then plain RFC 821 SMTP.
            await (client.helo() if helo else _greet(client))
            return await self._transaction(client, name, address, msg, content, recipients)
        except aiosmtplib.SMTPResponseException as exc:
            _answered(recipients, name, exc)
            if exc.code >= 500:
                _fail_as_refused(recipients, exc)
                return DeliveryResult(delivered=[], failed=list(recipients), deferred=[], partner=address)
            return f"{exc.code} {exc.message}"
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            return replies.connection_trouble(str(exc))
        finally:
            client.close()

    async def _transaction(
        self,
        client: aiosmtplib.SMTP,
        name: str,
        address: str,
        msg: MailMsg,
        content: bytes,
        recipients: list[Recipient],
    ) -> DeliveryResult:
        """MAIL, RCPT for each recipient and DATA on a greeted session; a refusal of the whole session
        (a reply to MAIL, a dropped connection) raises for `_session` to judge."""
        utf8 = bool(msg.properties.get("SMTP_UTF8")) or not all(
            text.isascii() for text in (msg.sender, *(self._smtp_address(r) for r in recipients))
        )
        if utf8 and not client.supports_extension("smtputf8"):
            # RFC 6531 3.4: non-ASCII envelope addresses cannot be downgraded; the message is returned.
            for recipient in recipients:
                recipient.fail_with(replies.no_smtputf8(address), RP_ERROR_CONTEXT_MTA)
            await _quit(client)
            return DeliveryResult(delivered=[], failed=list(recipients), deferred=[], partner=address)
        encoding = "utf-8" if utf8 else "ascii"
        await client.mail(msg.sender, options=["SMTPUTF8"] if utf8 else None, encoding=encoding)
        accepted, failed, deferred = await self._send_recipients(client, name, recipients, encoding)
        if accepted and self.is_organization_server(address) and client.supports_extension("xexch50"):
            await self._send_exch50(client, msg, accepted)
        if accepted:
            try:
                await client.data(content)
            except aiosmtplib.SMTPDataError as exc:
                _answered(accepted, name, exc)
                if 400 <= exc.code < 500:
                    deferred.extend(accepted)
                else:
                    _fail_as_refused(accepted, exc)
                    failed.extend(accepted)
                accepted = []
        for recipient in accepted:
            recipient.status = "relayed"
            recipient.flags |= RP_DELIVERED
        await _quit(client)
        return DeliveryResult(delivered=accepted, failed=failed, deferred=deferred, partner=address)

    async def _send_recipients(
        self, client: aiosmtplib.SMTP, name: str, recipients: list[Recipient], encoding: str
    ) -> tuple[list[Recipient], list[Recipient], list[Recipient]]:
        """RCPT for each recipient: (accepted, failed for good, refused for now)."""
        accepted: list[Recipient] = []
        failed: list[Recipient] = []
        deferred: list[Recipient] = []
        for recipient in recipients:
            try:
                await client.rcpt(self._smtp_address(recipient), encoding=encoding)
                accepted.append(recipient)
            except aiosmtplib.SMTPRecipientRefused as exc:
                _answered([recipient], name, exc)
                if 400 <= exc.code < 500:
                    deferred.append(recipient)
                else:
                    _fail_as_refused([recipient], exc)
                    failed.append(recipient)
        return accepted, failed, deferred

    async def _send_exch50(self, client: aiosmtplib.SMTP, msg: MailMsg, recipients: list[Recipient]) -> None:
        """XEXCH50 to another server of the organization: what the categorizer did to each recipient, so
        that the next categorizer does not forward or expand it again. A refusal costs nothing but that:
        the next server then categorizes the message in full."""
        blob = exch50_blob(
            recipients, self._smtp_address, anonymous_origin=bool(msg.properties.get("ANONYMOUS_ORIGIN"))
        )
        reply = await client.execute_command(
            b"XEXCH50", str(len(blob)).encode(), str(EXCH50_VERSION).encode()
        )
        if reply.code != 354 or client.protocol is None:
            return
        client.protocol.write(blob)
        await client.protocol.read_response(timeout=self.timeout)

    def _smtp_address(self, recipient: Recipient) -> str:
        if recipient.address_type == "SMTP":
            return recipient.address
        # A foreign address travels to the gateway's server inside an IMCEA address.
        return encapsulate(recipient.address_type, recipient.address, self.encapsulation_domain)

    async def _addresses(self, hop: Hop) -> list[tuple[str, str]]:
        """(host name, address) of each host to try in turn; an IP literal is its own name."""
        addresses: list[tuple[str, str]] = []
        for target in hop.targets:
            if target.startswith("[") and target.endswith("]"):
                addresses.append((target, target[1:-1]))
            elif hop.kind == HopKind.DNS:
                for exchange in await self._mx(target):
                    addresses.extend((exchange, a) for a in await self._a(exchange))
            else:
                addresses.extend((target, a) for a in await self._a(target))
        if not addresses:
            raise Unresolvable(f"no address for {', '.join(hop.targets)}")
        return addresses

    async def _mx(self, domain: str) -> list[str]:
        try:
            answer = await self.resolver.resolve(domain, "MX", source=self.source_address)
        except dns.resolver.NXDOMAIN as exc:
            raise Unresolvable(f"{domain}: host not found (NXDOMAIN)") from exc
        except dns.resolver.NoAnswer:
            return [domain]  # RFC 5321 §5.1: no MX means the domain is its own mail exchanger
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise ResolverTrouble(f"{domain}: DNS lookup failed ({exc.__class__.__name__})") from exc
        records = sorted(answer, key=lambda r: r.preference)
        return [r.exchange.to_text(omit_final_dot=True) for r in records]

    async def _a(self, name: str) -> list[str]:
        try:
            answer = await self.resolver.resolve(name, "A", source=self.source_address)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise ResolverTrouble(f"{name}: DNS lookup failed ({exc.__class__.__name__})") from exc
        return [r.to_text() for r in answer]


async def _greet(client: aiosmtplib.SMTP) -> None:
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError as exc:
        if exc.code not in _EHLO_UNKNOWN:
            raise
        await client.helo()


def _answered(recipients: list[Recipient], name: str, exc: aiosmtplib.SMTPResponseException) -> None:
    """Keep the next hop's refusal as it gave it, for the Diagnostic-Code of a later DSN."""
    for recipient in recipients:
        recipient.remote_reply = f"{exc.code} {exc.message}"
        recipient.remote_mta = name


def _fail_as_refused(recipients: list[Recipient], exc: aiosmtplib.SMTPResponseException) -> None:
    """The next hop's own refusal, passed on as it said it (it is its text, not ours). An enhanced code
    whose class contradicts the reply's (RFC 3463 says they agree) is not believed: x.0.0 instead."""
    undefined = f"{exc.code // 100}.0.0"
    enhanced = replies.enhanced_code_of(exc.message, undefined)
    if enhanced[0] != undefined[0]:
        enhanced = undefined
    for recipient in recipients:
        recipient.fail(f"{exc.code} {exc.message}", enhanced, RP_ERROR_CONTEXT_MTA)


async def _quit(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException):
        await client.quit()


def make_resolver(address: str, port: int, timeout: float = 3.0) -> dns.asyncresolver.Resolver:
    """A resolver that asks only the given server (the lab's DNS, or the external DNS of the VS)."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [address]
    resolver.port = port
    resolver.timeout = timeout
    resolver.lifetime = timeout
    resolver.cache = None
    return resolver
