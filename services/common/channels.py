"""Client channels to our services, plaintext or TLS.

TLS is used when ``CAI_GRPC_TLS_CA_FILE`` names a PEM file of trusted CA certificates (the
servers then run with ``server.tls_cert_file``/``tls_key_file``; see k8s/components/tls). Every
client in this project dials through here, so one setting switches a whole pipeline.
"""

from __future__ import annotations

import os

import grpc

TLS_CA_ENV = "CAI_GRPC_TLS_CA_FILE"
_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def _credentials():
    path = os.environ.get(TLS_CA_ENV)
    if not path:
        return None
    with open(path, "rb") as f:
        return grpc.ssl_channel_credentials(root_certificates=f.read())


def open_channel(address: str) -> grpc.Channel:
    """A blocking channel to ``address``."""
    creds = _credentials()
    if creds is None:
        return grpc.insecure_channel(address, options=_OPTIONS)
    return grpc.secure_channel(address, creds, options=_OPTIONS)


def open_aio_channel(address: str) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` (create it inside the event loop that uses it)."""
    creds = _credentials()
    if creds is None:
        return grpc.aio.insecure_channel(address, options=_OPTIONS)
    return grpc.aio.secure_channel(address, creds, options=_OPTIONS)
