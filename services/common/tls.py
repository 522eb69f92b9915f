"""TLS on the server side: credentials from ``ServerConfig`` (TLS, or mutual TLS with
``tls_client_ca_file``) and who the calling client is (``peer_identities``,
``require_client_identity`` for privileged RPCs such as ``LoadCheckpoint``).

The certificate files are read again when they change (cert-manager renews the Secret in place):
every new connection's handshake uses the newest files; connections already open keep theirs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection

import grpc

log = logging.getLogger(__name__)


class TLSConfigError(ValueError):
    """A TLS file of the server configuration cannot be used (the message names the field and file)."""


def read_pem(path: str, name: str, error: type[Exception]) -> bytes:
    """The PEM file ``path``; ``error("<name>: reason")`` when it cannot be read or is not PEM
    (``name`` says where the path came from)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise error(f"{name}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise error(f"{name}: not a PEM file")
    return data


def _read_pem(field: str, path: str) -> bytes:
    return read_pem(path, f"server.{field}: {path}", TLSConfigError)


class _CertificateFiles:
    """The server's key, chain and (for mutual TLS) client CA, re-read when a file changes."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = ""):
        self.files = {"tls_cert_file": cert_file, "tls_key_file": key_file}
        if client_ca_file:
            self.files["tls_client_ca_file"] = client_ca_file
        self._stamp = self._stat()
        self.initial = self._configuration()

    def _stat(self):
        stamp = []
        for field, path in self.files.items():
            try:
                st = os.stat(path)
            except OSError as exc:
                raise TLSConfigError(f"server.{field}: {path}: {exc.strerror or exc}") from None
            stamp.append((st.st_mtime_ns, st.st_size))
        return tuple(stamp)

    def _configuration(self):
        pem = {field: _read_pem(field, path) for field, path in self.files.items()}
        return grpc.ssl_server_certificate_configuration(
            [(pem["tls_key_file"], pem["tls_cert_file"])], root_certificates=pem.get("tls_client_ca_file")
        )

    def fetch(self):
        """Called by gRPC before each handshake: a new configuration once the files changed, else None."""
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return None
            config = self._configuration()
        except Exception as exc:  # a half-written Secret: keep serving the old certificate
            log.warning("TLS files changed but cannot be read (%s); keeping the current certificate", exc)
            return None
        self._stamp = stamp
        log.info("TLS certificate files changed: new connections use the new ones")
        return config


def server_credentials(cert_file: str, key_file: str, client_ca_file: str = "") -> grpc.ServerCredentials:
    """TLS server credentials; with ``client_ca_file`` clients must present a certificate signed by
    one of its CAs (mutual TLS), else the handshake fails."""
    files = _CertificateFiles(cert_file, key_file, client_ca_file)
    return grpc.dynamic_ssl_server_credentials(
        files.initial, files.fetch, require_client_authentication=bool(client_ca_file)
    )


def peer_identities(context) -> set[str]:
    """The names on the calling client's verified certificate (subject alternative names and common
    name); empty for a plaintext or TLS-without-client-certificate connection."""
    auth = context.auth_context() or {}
    names = set()
    for key in ("x509_subject_alternative_name", "x509_common_name"):
        for value in auth.get(key, ()):
            names.add(value.decode() if isinstance(value, bytes) else str(value))
    return names


async def require_client_identity(context, allowed: Collection[str]) -> None:
    """Aborts the call with PERMISSION_DENIED unless the client's certificate carries one of
    ``allowed`` (empty ``allowed``: everyone may call). For servicers of a ``grpc.aio`` server."""
    if not allowed:
        return
    names = peer_identities(context)
    if names & set(allowed):
        return
    if not names:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            "this call needs a client certificate (mutual TLS) naming an allowed client; the connection has none",
        )
    await context.abort(
        grpc.StatusCode.PERMISSION_DENIED,
        f"client certificate names {sorted(names)}, none of them is allowed for this call "
        f"(server.tls_allowed_client_names)",
    )
