"""The global catalog over real LDAP: an asyncio LDAPv3 server in front of a loaded `MockGlobalCatalog`.

When the lab's hosts run apart (each in a container of its own), the reference servers and an MTA under
test reach the directory over TCP at the global catalog's address and port 389 + the lab's port offset.
This server answers them from the same catalog the in-process lab searches, so results, their order
and the query log are the same whichever way a server reaches it.

Why a server of our own: no well-kept Python LDAP server library exists (ldaptor is Twisted-only and
barely maintained), and slapd would need Active Directory's schema for objectClass user,
proxyAddresses and the msExch* attributes, and would not log each query as the harness judges it.
The protocol itself is not hand-written: PDUs are framed by ldap3's BER length rule and encoded and
decoded by pyasn1's BER codec with ldap3's RFC 4511 ASN.1 definitions.

Theory of operation, per connection:
- bind (simple, LDAPv3): the categorizer account by its DN and password; an empty name and password
  is an anonymous bind; any other name is an account name (sAMAccountName, mail or SMTP proxy address,
  as Active Directory takes a user principal name in a simple bind) checked by
  `MockGlobalCatalog.authenticate`, which logs its look-up as SMTP AUTH's. A name with an empty
  password is refused with unwillingToPerform (RFC 4513 5.1.2); SASL with authMethodNotSupported.
- search: BASE, LEVEL or SUBTREE, a filter, the attributes asked for, a size limit. It runs through
  `GcConnection.answer`, so the catalog's log records it with the client named by the peer's address.
  Searches need no bind: an MTA's LDAP tables often search anonymously.
- the Who am I? extended operation (RFC 4532) tells a client the DN it bound as; any other extended
  operation is answered with protocolError (RFC 4511 4.12), other updates and compare with
  unwillingToPerform; abandon is ignored, unbind closes.
- a PDU that cannot be decoded ends that connection with a Notice of Disconnection (RFC 4511 4.4.1);
  other connections and the server go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from ldap3.core.exceptions import LDAPException
from ldap3.operation.bind import bind_response_operation
from ldap3.protocol import rfc4511
from ldap3.protocol.rfc4511 import (
    LDAPDN,
    AddResponse,
    AttributeDescription,
    AttributeValue,
    CompareResponse,
    DelResponse,
    ExtendedResponse,
    LDAPMessage,
    LDAPString,
    MessageID,
    ModifyDNResponse,
    ModifyResponse,
    PartialAttribute,
    PartialAttributeList,
    ProtocolOp,
    ResponseName,
    ResponseValue,
    ResultCode,
    SearchResultDone,
    SearchResultEntry,
    Vals,
)
from ldap3.strategy.base import BaseStrategy
from ldap3.utils.conv import escape_filter_chars
from pyasn1.codec.ber import decoder, encoder  # type: ignore[import-untyped]
from pyasn1.error import PyAsn1Error  # type: ignore[import-untyped]

from harness.lab.gc import GcConnection, GlobalCatalogError, MockGlobalCatalog
from reference_mta.directory import DirectoryEntry, DirectoryUnavailable

__all__ = ["LdapServer", "LdapServerThread"]

_log = logging.getLogger(__name__)
T = TypeVar("T")

SUCCESS = 0
OPERATIONS_ERROR = 1
PROTOCOL_ERROR = 2
SIZE_LIMIT_EXCEEDED = 4
AUTH_METHOD_NOT_SUPPORTED = 7
NO_SUCH_OBJECT = 32
INVALID_CREDENTIALS = 49
UNAVAILABLE = 52
UNWILLING_TO_PERFORM = 53
OTHER = 80

WHO_AM_I = "1.3.6.1.4.1.4203.1.11.3"
NOTICE_OF_DISCONNECTION = "1.3.6.1.4.1.1466.20036"
_SCOPES = {0: "BASE", 1: "LEVEL", 2: "SUBTREE"}
# An LDAP message (SEQUENCE) starts with this tag; anything else is not LDAP.
_SEQUENCE_TAG = 0x30
# A directory request is a few hundred bytes; a length beyond this is a hostile or broken client.
MAX_PDU = 1 << 20
_READ = 65536
_STOP_WAIT = 5.0  # seconds a stopping server gives a session to finish its search
_REASON = 200  # pyasn1's messages quote whole schemas: the client gets the start of one
# Requests answered with unwillingToPerform, by the response each one takes.
_UNWILLING = {
    "modifyRequest": ("modifyResponse", ModifyResponse),
    "addRequest": ("addResponse", AddResponse),
    "delRequest": ("delResponse", DelResponse),
    "modDNRequest": ("modDNResponse", ModifyDNResponse),
    "compareRequest": ("compareResponse", CompareResponse),
}


def _mend_filter() -> None:
    """ldap3 completes `And`, `Or` and `Not` (their members, Not's tag [2]) only after `Filter` has
    taken an instance of each as its alternatives, so those carry no member type and no tag, and pyasn1
    cannot decode an AND, OR or NOT filter (ldap3 itself only encodes filters, which reads both from
    the value). The alternatives are set up again, in place, with complete instances: every `Filter`
    (inside AND, OR, NOT and the search request) shares them. Encoding is unchanged."""
    complete = {"and": rfc4511.And, "or": rfc4511.Or, "notFilter": rfc4511.Not}
    alternatives = rfc4511.Filter.componentType
    named = [
        rfc4511.NamedType(item.name, complete[item.name]()) if item.name in complete else item
        for item in alternatives.namedTypes
    ]
    alternatives.__init__(*named)


_mend_filter()


class _Malformed(Exception):
    """The client sent something that is not an LDAP message: its connection ends."""


class LdapServer:
    """LDAP on `address:port` for `catalog`; `names` maps a client's address to its lab host name,
    which the query log records as the client (the address itself when no host has it)."""

    def __init__(self, catalog: MockGlobalCatalog, address: str, port: int, names: Mapping[str, str]) -> None:
        self.catalog = catalog
        self.address = address
        self.port = port
        self.names = dict(names)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        # One catalog connection per client name, as each reference server holds its own.
        self._connections: dict[str, GcConnection] = {}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.address, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Closing a client's transport ends its session at the next read; one stuck in a search is
        # cancelled after a while.
        for writer in list(self._writers):
            writer.close()
        if self._sessions:
            _, stuck = await asyncio.wait(set(self._sessions), timeout=_STOP_WAIT)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    # --- one client --------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._sessions.add(task)
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        session = _Session(self, self.names.get(address, address))
        try:
            await session.run(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except _Malformed as exc:
            _log.debug("LDAP client %s sent a malformed PDU: %s", address, exc)
            with contextlib.suppress(ConnectionError):
                writer.write(_notice_of_disconnection(str(exc)))
                await writer.drain()
        except asyncio.CancelledError:
            pass  # the server stops
        except Exception:  # one client's failure must not stop the directory for the others
            _log.exception("LDAP client %s: unexpected error", address)
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._sessions.discard(task)
            writer.close()
            # Not even a cancellation leaves here: asyncio (3.11) logs a connection task that ends
            # cancelled as an error.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    def connection(self, client: str) -> GcConnection:
        if client not in self._connections:
            self._connections[client] = self.catalog.connect(client)
        return self._connections[client]


class LdapServerThread:
    """An `LdapServer` on an event loop of its own thread.

    For a process whose LDAP clients block their own loop: the reference servers search synchronously
    from the lab's loop, so a server on that loop could never answer them.
    """

    def __init__(self, server: LdapServer) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="lab-ldap", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the LDAP server's thread is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            loop.close()


class _Session:
    def __init__(self, server: LdapServer, client: str) -> None:
        self.server = server
        self.client = client
        self.bound_as = ""  # the DN this connection is bound as; "" is anonymous

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        while True:
            pdu, buffer = _split(buffer)
            if pdu is None:
                chunk = await reader.read(_READ)
                if not chunk:
                    return
                buffer += chunk
                continue
            message_id, name, request = _decode(pdu)
            if name == "unbindRequest":
                return
            for reply in await self.handle(name, request):
                writer.write(_encode(message_id, reply))
            await writer.drain()

    async def handle(self, name: str, request: Any) -> list[tuple[str, Any]]:
        if name == "bindRequest":
            return [("bindResponse", await self.bind(request))]
        if name == "searchRequest":
            return await self.search(request)
        if name == "extendedReq":
            return [("extendedResp", self.extended(request))]
        if name == "abandonRequest":
            return []  # every answer is complete before the next request is read
        if name in _UNWILLING:
            response, kind = _UNWILLING[name]
            return [(response, _result(kind(), UNWILLING_TO_PERFORM, "the global catalog is read-only"))]
        # A response sent as a request, or an operation this protocol version does not have.
        raise _Malformed(f"unexpected {name}")

    async def bind(self, request: Any) -> Any:
        self.bound_as = ""
        if int(request["version"]) != 3:
            return bind_response_operation(PROTOCOL_ERROR, diagnostic_message="only LDAPv3 is supported")
        authentication = request["authentication"]
        if authentication.getName() != "simple":
            return bind_response_operation(
                AUTH_METHOD_NOT_SUPPORTED, diagnostic_message="only simple bind is supported"
            )
        try:
            name = str(request["name"])
            password = bytes(authentication["simple"]).decode("utf-8")
        except UnicodeDecodeError:
            return bind_response_operation(INVALID_CREDENTIALS)
        if not password:
            if name:
                return bind_response_operation(
                    UNWILLING_TO_PERFORM, diagnostic_message="unauthenticated bind is not allowed"
                )
            return bind_response_operation(SUCCESS)  # anonymous
        catalog = self.server.catalog
        try:
            if catalog.is_account(name, password):
                dn: str | None = catalog.config.bind_dn
            else:
                dn = await asyncio.to_thread(catalog.authenticate, name, password)
        except DirectoryUnavailable as exc:
            return bind_response_operation(UNAVAILABLE, diagnostic_message=str(exc))
        except GlobalCatalogError as exc:
            return bind_response_operation(OTHER, diagnostic_message=str(exc))
        if dn is None:
            return bind_response_operation(INVALID_CREDENTIALS)
        self.bound_as = dn
        return bind_response_operation(SUCCESS)

    async def search(self, request: Any) -> list[tuple[str, Any]]:
        try:
            base = str(request["baseObject"])
            scope = _SCOPES[int(request["scope"])]
            ldap_filter = filter_text(request["filter"])
            attributes = _attributes([str(a) for a in request["attributes"]])
        except (KeyError, UnicodeDecodeError, PyAsn1Error, LDAPException) as exc:
            return [("searchResDone", _result(SearchResultDone(), PROTOCOL_ERROR, f"bad search: {exc}"))]
        limit = int(request["sizeLimit"])
        types_only = bool(request["typesOnly"])
        connection = self.server.connection(self.client)
        try:
            answer = await asyncio.to_thread(connection.answer, base, ldap_filter, attributes, scope=scope)
        except DirectoryUnavailable as exc:
            return [("searchResDone", _result(SearchResultDone(), UNAVAILABLE, str(exc)))]
        except GlobalCatalogError as exc:
            return [("searchResDone", _result(SearchResultDone(), OTHER, str(exc)))]
        if not answer.base_exists:
            return [("searchResDone", _result(SearchResultDone(), NO_SUCH_OBJECT, f"no entry {base}"))]
        entries = answer.entries
        code = SUCCESS
        if 0 < limit < len(entries):
            entries, code = entries[:limit], SIZE_LIMIT_EXCEEDED
        replies: list[tuple[str, Any]] = [("searchResEntry", _entry(e, types_only)) for e in entries]
        replies.append(("searchResDone", _result(SearchResultDone(), code)))
        return replies

    def extended(self, request: Any) -> Any:
        oid = str(request["requestName"])
        if oid != WHO_AM_I:
            return _result(ExtendedResponse(), PROTOCOL_ERROR, f"unsupported extended operation {oid}")
        response = _result(ExtendedResponse(), SUCCESS)
        response["responseValue"] = ResponseValue(f"dn:{self.bound_as}" if self.bound_as else "")
        return response


# --- PDUs --------------------------------------------------------------------------------------------


def _split(buffer: bytes) -> tuple[bytes | None, bytes]:
    """The first whole PDU in `buffer` and what follows it, or None while it is incomplete."""
    if not buffer:
        return None, buffer
    if buffer[0] != _SEQUENCE_TAG:
        raise _Malformed(f"not an LDAP message (first octet 0x{buffer[0]:02x})")
    if len(buffer) > 1 and buffer[1] == 0x80:
        raise _Malformed("indefinite length is not allowed in LDAP (RFC 4511 5.1)")
    if len(buffer) > 1 and buffer[1] > 0x84:
        raise _Malformed("length field too long")
    size = int(BaseStrategy.compute_ldap_message_size(buffer))
    if size > MAX_PDU:
        raise _Malformed(f"message of {size} octets")
    if size < 0 or len(buffer) < size:
        return None, buffer
    return buffer[:size], buffer[size:]


def _decode(pdu: bytes) -> tuple[int, str, Any]:
    try:
        message, rest = decoder.decode(pdu, asn1Spec=LDAPMessage())
        if rest:
            raise _Malformed("octets after the message")
        operation = message["protocolOp"]
        name = operation.getName()
        return int(message["messageID"]), name, operation.getComponent()
    except _Malformed:
        raise
    except Exception as exc:  # whatever the decoder raises on hostile octets ends only this connection
        raise _Malformed(f"cannot decode: {exc}"[:_REASON]) from exc


def _encode(message_id: int, reply: tuple[str, Any]) -> bytes:
    name, component = reply
    message = LDAPMessage()
    message["messageID"] = MessageID(message_id)
    operation = ProtocolOp()
    operation.setComponentByName(name, component)
    message["protocolOp"] = operation
    return bytes(encoder.encode(message))


def _notice_of_disconnection(reason: str) -> bytes:
    response = _result(ExtendedResponse(), PROTOCOL_ERROR, reason)
    response["responseName"] = ResponseName(NOTICE_OF_DISCONNECTION)
    return _encode(0, ("extendedResp", response))


def _result(response: Any, code: int, message: str = "") -> Any:
    response["resultCode"] = ResultCode(code)
    response["matchedDN"] = LDAPDN("")
    response["diagnosticMessage"] = LDAPString(message)
    return response


def _entry(entry: DirectoryEntry, types_only: bool) -> Any:
    attributes = PartialAttributeList()
    for index, (name, values) in enumerate(entry.attributes.items()):
        attribute = PartialAttribute()
        attribute["type"] = AttributeDescription(name)
        vals = Vals()
        for position, value in enumerate([] if types_only else values):
            vals.setComponentByPosition(position, AttributeValue(value.encode("utf-8")))
        attribute["vals"] = vals
        attributes.setComponentByPosition(index, attribute)
    response = SearchResultEntry()
    response["object"] = LDAPDN(entry.dn)
    response["attributes"] = attributes
    return response


def _attributes(requested: list[str]) -> tuple[str, ...]:
    # "1.1" asks for no attributes (RFC 4511 4.5.1.8); an empty list asks for all user attributes.
    if not requested:
        return ("*",)
    return tuple(name for name in requested if name != "1.1")


# --- filters -----------------------------------------------------------------------------------------


def filter_text(item: Any) -> str:
    """The RFC 4515 string of a Filter, as `reference_mta.directory.proxy_filter` and the categorizer
    write it, so the query log shows what the client asked.

    ldap3's `filter_to_string` escapes equality values but writes substring pieces as they are, which
    would turn an escaped `*` into a wildcard, and writes an extensible match as pyasn1's repr; this
    renders every value through `escape_filter_chars`.
    """
    kind = item.getName()
    if kind in ("and", "or"):
        return "(" + ("&" if kind == "and" else "|") + "".join(filter_text(f) for f in item[kind]) + ")"
    if kind == "notFilter":
        return "(!" + filter_text(item["notFilter"]["innerNotFilter"]) + ")"
    if kind in ("equalityMatch", "greaterOrEqual", "lessOrEqual", "approxMatch"):
        operator = {"equalityMatch": "=", "greaterOrEqual": ">=", "lessOrEqual": "<=", "approxMatch": "~="}
        ava = item[kind]
        return f"({_text(ava['attributeDesc'])}{operator[kind]}{_value(ava['assertionValue'])})"
    if kind == "present":
        return f"({_text(item['present'])}=*)"
    if kind == "substringFilter":
        initial = final = ""
        middle: list[str] = []
        for substring in item["substringFilter"]["substrings"]:
            part = substring.getName()
            value = _value(substring[part])
            if part == "initial":
                initial = value
            elif part == "any":
                middle.append(value)
            else:
                final = value
        return f"({_text(item['substringFilter']['type'])}=" + "*".join([initial, *middle, final]) + ")"
    if kind == "extensibleMatch":
        match = item["extensibleMatch"]
        text = _text(match["type"]) if match["type"].hasValue() else ""
        if match["dnAttributes"].hasValue() and bool(match["dnAttributes"]):
            text += ":dn"
        if match["matchingRule"].hasValue():
            text += ":" + _text(match["matchingRule"])
        return f"({text}:={_value(match['matchValue'])})"
    raise LDAPException(f"unknown filter choice {kind}")


def _text(value: Any) -> str:
    return bytes(value).decode("utf-8")


def _value(value: Any) -> str:
    raw = bytes(value)
    try:
        return str(escape_filter_chars(raw.decode("utf-8")))
    except UnicodeDecodeError:
        # Octets that are not UTF-8 are written as \hh escapes, every one of them.
        return "".join(f"\\{octet:02x}" for octet in raw)
