"""TLS certificates for a lab: a throw-away certificate authority, and a certificate for each server
that offers STARTTLS. Nothing is ever written to the repository; the CA certificate is put in the lab's
folder (`lab-ca.pem`) so that a client outside the harness — swaks, openssl s_client, a real MTA — can
trust the lab's servers.

trustme makes the CA and the certificates. A process makes them once per lab name and keeps them, with
their SSL contexts, for every later lab of that name: a corpus run starts a lab per trace, and making a
key pair and a context each time cost more than the rest of a lab's start.
"""

from __future__ import annotations

import os
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import trustme

CA_FILE = "lab-ca.pem"


@dataclass
class _Authority:
    ca: trustme.CA
    server_contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)


_AUTHORITIES: dict[str, _Authority] = {}
# Labs of one process can start in several threads at once; each name gets one CA all the same.
_LOCK = threading.Lock()


def _authority(lab_name: str) -> _Authority:
    with _LOCK:
        if lab_name not in _AUTHORITIES:
            _AUTHORITIES[lab_name] = _Authority(trustme.CA(organization_name=f"mailflow lab {lab_name}"))
        return _AUTHORITIES[lab_name]


class LabCertificates:
    def __init__(self, workdir: Path, lab_name: str) -> None:
        self.workdir = workdir
        self.lab_name = lab_name
        self._written = False

    @property
    def ca(self) -> trustme.CA:
        authority = _authority(self.lab_name)
        if not self._written:
            authority.ca.cert_pem.write_to_path(str(self.workdir / CA_FILE))
            self._written = True
        return authority.ca

    def server_context(self, fqdn: str) -> ssl.SSLContext:
        """The context a virtual server of `fqdn` answers STARTTLS with."""
        ca = self.ca
        authority = _authority(self.lab_name)
        with _LOCK:
            if fqdn not in authority.server_contexts:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ca.issue_cert(fqdn).configure_cert(context)
                authority.server_contexts[fqdn] = context
            return authority.server_contexts[fqdn]

    def write_chain(self, fqdn: str, path: Path) -> Path:
        """A key and certificate chain for `fqdn` in one PEM file, for a real MTA's TLS settings."""
        self.ca.issue_cert(fqdn).private_key_and_cert_chain_pem.write_to_path(str(path))
        path.chmod(0o600)
        return path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the lab's CA, and only it: a new one for each caller, who may
        loosen it (a test that checks no host name). Not create_default_context, which would read the
        system's CA bundle, at every session, only to trust more than the lab."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        keylog = os.environ.get("SSLKEYLOGFILE")
        if keylog:  # as create_default_context does: to read a capture of the lab's TLS in Wireshark
            context.keylog_filename = keylog
        self.ca.configure_trust(context)
        return context
