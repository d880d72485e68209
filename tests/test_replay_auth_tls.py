"""The replay client's STARTTLS and AUTH steps against a real aiosmtpd server on loopback."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from harness.corpus.script import parse_script
from harness.run.replay import SessionResult, run_session


class Handler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"ann", b"s3cret")
    return AuthResult(success=ok, handled=False)


def run(steps: list[dict[str, Any]], *, require_tls: bool = True, trust: bool = True) -> SessionResult:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.test").configure_cert(server_context)
    client_context = ssl.create_default_context()
    if trust:
        ca.configure_trust(client_context)

    async def scenario() -> SessionResult:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(
                Handler(),
                hostname="mx.test",
                tls_context=server_context,
                authenticator=authenticator,
                auth_require_tls=require_tls,
            ),
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        try:
            return await run_session(
                parse_script(steps),
                host="127.0.0.1",
                port=port,
                source_address=None,
                base_dir=Path("."),
                timeout=5,
                tls_context=client_context,
                server_hostname="mx.test",
            )
        finally:
            server.close()

    return asyncio.run(scenario())


def test_starttls_then_auth_login() -> None:
    result = run(
        [
            {"expect": 220},
            {"send": "EHLO client.test"},
            {"expect": {"contains": "STARTTLS"}},
            {"starttls": True},
            {"send": "EHLO client.test"},
            {"expect": {"contains": "AUTH"}},
            {"auth": {"mechanism": "LOGIN", "user": "ann", "password": "s3cret"}},
            {"expect": 235},
            {"send": "QUIT"},
            {"expect": 221},
        ]
    )
    assert result.passed, result.transcript
    assert "TLS established (TLSv1.3, server mx.test)" in result.transcript


def test_auth_plain_with_a_wrong_password_is_refused() -> None:
    result = run(
        [
            {"expect": 220},
            {"send": "EHLO client.test"},
            {"expect": 250},
            {"starttls": True},
            {"send": "EHLO client.test"},
            {"expect": 250},
            {"auth": {"mechanism": "PLAIN", "user": "ann", "password": "nope"}},
            {"expect": 535},
        ]
    )
    assert result.passed, result.transcript


def test_a_refused_auth_login_leaves_its_reply_to_the_next_expect() -> None:
    result = run(
        [
            {"expect": 220},
            {"send": "EHLO client.test"},
            {"expect": 250},
            {"auth": {"mechanism": "LOGIN", "user": "ann", "password": "s3cret"}},
            {"expect": {"code": 538}},
        ]
    )
    assert result.passed, result.transcript
    assert result.exchanges[3].failures == []


def test_an_untrusted_certificate_fails_the_starttls_step() -> None:
    result = run(
        [{"expect": 220}, {"send": "EHLO client.test"}, {"expect": 250}, {"starttls": True}], trust=False
    )
    assert not result.passed
    (failure,) = result.exchanges[-1].failures
    assert failure.startswith("TLS handshake failed") and "CERTIFICATE_VERIFY_FAILED" in failure
