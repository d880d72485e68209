"""TLS certificates for a lab: a throw-away certificate authority made when the lab starts, and a
certificate for each server that offers STARTTLS. Nothing is ever written to the repository; the CA
certificate is put in the lab's folder (`lab-ca.pem`) so that a client outside the harness — swaks,
openssl s_client, a real MTA — can trust the lab's servers.

trustme makes the CA and the certificates (ECDSA keys: fast enough to make at every lab start).
"""

from __future__ import annotations

import ssl
from functools import cached_property
from pathlib import Path

import trustme

CA_FILE = "lab-ca.pem"


class LabCertificates:
    def __init__(self, workdir: Path, lab_name: str) -> None:
        self.workdir = workdir
        self.lab_name = lab_name
        self._contexts: dict[str, ssl.SSLContext] = {}

    @cached_property
    def ca(self) -> trustme.CA:
        ca = trustme.CA(organization_name=f"mailflow lab {self.lab_name}")
        ca.cert_pem.write_to_path(str(self.workdir / CA_FILE))
        return ca

    def server_context(self, fqdn: str) -> ssl.SSLContext:
        """The context a virtual server of `fqdn` answers STARTTLS with (made once per name)."""
        if fqdn not in self._contexts:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert(fqdn).configure_cert(context)
            self._contexts[fqdn] = context
        return self._contexts[fqdn]

    def write_chain(self, fqdn: str, path: Path) -> Path:
        """A key and certificate chain for `fqdn` in one PEM file, for a real MTA's TLS settings."""
        self.ca.issue_cert(fqdn).private_key_and_cert_chain_pem.write_to_path(str(path))
        path.chmod(0o600)
        return path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the lab's CA, and only it."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(context)
        return context
