"""Client channels to our services: one place that decides how every client of ours dials.

Targets are gRPC targets, so one address may name several replicas:

- ``host:port`` (DNS, as before),
- ``dns:///judge-headless.cai.svc:50051`` (every address a headless Service resolves to),
- ``ipv4:127.0.0.1:5001,127.0.0.1:5002`` (a fixed list).

Every channel carries a service config: ``round_robin`` across all resolved addresses (a
ClusterIP Service resolves to one address, so there it changes nothing), retries of calls that
fail with UNAVAILABLE (a replica restarting or gone; bounded attempts with backoff, within the
call's deadline), and keepalive pings the servers accept (``server_options`` in
services/common/server.py permits them).

TLS: when ``CAI_GRPC_TLS_CA_FILE`` names a PEM bundle of trusted CAs, channels use TLS (the
servers run with ``server.tls_cert_file``/``tls_key_file``, see k8s/components/tls). For mutual
TLS (servers with ``server.tls_client_ca_file``) ``CAI_GRPC_TLS_CERT_FILE`` and
``CAI_GRPC_TLS_KEY_FILE`` name this client's certificate chain and key. The files are read once
and read again when they change (a rotated Secret), for channels opened after the change.
``CAI_GRPC_TLS_SERVER_NAME`` overrides the name checked on the servers' certificates (needed when
the target's name is not on them, as with an ``ipv4:`` list). Every client in this project dials
through here, so these settings switch a whole pipeline.
"""

from __future__ import annotations

import json
import os
import threading

import grpc

TLS_CA_ENV = "CAI_GRPC_TLS_CA_FILE"
TLS_CERT_ENV = "CAI_GRPC_TLS_CERT_FILE"
TLS_KEY_ENV = "CAI_GRPC_TLS_KEY_FILE"
TLS_SERVER_NAME_ENV = "CAI_GRPC_TLS_SERVER_NAME"

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

KEEPALIVE_TIME_MS = 30_000
"""A ping after 30 s without traffic (finds connections silently dropped by NAT or a dead node).
Servers must allow pings this often: server.py sets their minimum interval below it."""
KEEPALIVE_TIMEOUT_MS = 10_000
"""A connection whose ping is not answered in 10 s is closed; its calls move to other replicas."""

RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.2s",
    "maxBackoff": "3s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
"""Retries of a call that failed with UNAVAILABLE before any reply came (gRPC never retries a call
whose response has started). Five attempts span about 3 s of backoff; the call's deadline bounds
the whole."""

SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    # An empty name is the default for every method of every service.
    "methodConfig": [{"name": [{}], "retryPolicy": RETRY_POLICY}],
}


def channel_options(server_name: str = "") -> list[tuple[str, object]]:
    """The options of every channel we open (service config, keepalive, message sizes, TLS name:
    ``server_name``, else ``$CAI_GRPC_TLS_SERVER_NAME``, else the target's own)."""
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        # Our service config, never one from DNS TXT records.
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
        # A request is retried only while gRPC still holds a copy (default 256 KiB): batches of
        # comparisons are larger.
        ("grpc.per_rpc_retry_buffer_size", 16 * 1024 * 1024),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    server_name = server_name or os.environ.get(TLS_SERVER_NAME_ENV, "")
    if server_name and os.environ.get(TLS_CA_ENV):
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


class TLSFilesError(ValueError):
    """A TLS file named by the environment cannot be used (the message names the variable and file)."""


_cache_lock = threading.Lock()
_cache: dict[tuple, grpc.ChannelCredentials] = {}


def _stamp(env: str) -> tuple[str, int, int] | None:
    path = os.environ.get(env, "")
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TLSFilesError(f"${env}={path}: {exc.strerror or exc}") from None
    return path, st.st_mtime_ns, st.st_size


def _read(env: str, stamp) -> bytes | None:
    if stamp is None:
        return None
    from services.common.tls import read_pem

    return read_pem(stamp[0], f"${env}={stamp[0]}", TLSFilesError)


def credentials() -> grpc.ChannelCredentials | None:
    """TLS credentials from the environment, or None for plaintext. Raises ``TLSFilesError`` for a
    missing or unreadable file, or a certificate without its key."""
    ca = _stamp(TLS_CA_ENV)
    cert, key = _stamp(TLS_CERT_ENV), _stamp(TLS_KEY_ENV)
    if ca is None:
        if cert or key:
            raise TLSFilesError(
                f"${TLS_CERT_ENV}/${TLS_KEY_ENV} are set but ${TLS_CA_ENV} is not: "
                "client certificates are only sent over TLS"
            )
        return None
    if bool(cert) != bool(key):
        raise TLSFilesError(f"${TLS_CERT_ENV} and ${TLS_KEY_ENV} go together (one is set, not the other)")
    stamp = (ca, cert, key)
    with _cache_lock:
        creds = _cache.get(stamp)
        if creds is None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(TLS_CA_ENV, ca),
                private_key=_read(TLS_KEY_ENV, key),
                certificate_chain=_read(TLS_CERT_ENV, cert),
            )
            _cache.clear()  # files changed: only the newest credentials are kept
            _cache[stamp] = creds
    return creds


def _hint(details: str | None, tls: tuple[str, str] | None) -> str:
    """A sentence naming this client's TLS settings, for the failures they cause: gRPC reports a
    TLS server meeting a plaintext client, or a mutual-TLS server meeting a client without a
    certificate, only as "Socket closed"."""
    details = details or ""
    verify = any(p in details for p in ("CERTIFICATE_VERIFY_FAILED", "Hostname Verification", "Peer name"))
    if not verify and "Socket closed" not in details and "andshake" not in details:
        return ""
    if tls is not None and verify:
        return (
            f" (this client trusts ${TLS_CA_ENV}={tls[0]}: the server's certificate is not signed by a CA "
            f"in it, or does not name the target; ${TLS_SERVER_NAME_ENV} sets the name to check)"
        )
    if tls is None:
        return (
            f" (this client dials plaintext: if the server serves TLS, set ${TLS_CA_ENV} to the CA bundle "
            "that signed its certificate)"
        )
    ca, cert = tls
    if not cert:
        return (
            f" (this client dials TLS trusting ${TLS_CA_ENV}={ca}, without a client certificate: if the "
            f"server requires mutual TLS (--tls-client-ca-file), set ${TLS_CERT_ENV} and ${TLS_KEY_ENV})"
        )
    return (
        f" (this client dials TLS trusting ${TLS_CA_ENV}={ca} with the client certificate "
        f"${TLS_CERT_ENV}={cert}: check that the server's CA signed the server certificate and its "
        "--tls-client-ca-file signed the client's)"
    )


class _ExplainedFailure(grpc.RpcError, grpc.Call, grpc.Future):
    """A failed blocking call whose details carry ``_hint``'s sentence."""

    def __init__(self, failed, hint: str):
        super().__init__()
        self._failed, self._details = failed, (failed.details() or "") + hint

    def code(self):
        return self._failed.code()

    def details(self):
        return self._details

    def initial_metadata(self):
        return self._failed.initial_metadata()

    def trailing_metadata(self):
        return self._failed.trailing_metadata()

    def debug_error_string(self):
        return getattr(self._failed, "debug_error_string", lambda: "")()

    def __str__(self):
        return f"<RPC failed: status = {self.code()}, details = {self._details!r}>"

    def cancel(self):
        return False

    def cancelled(self):
        return False

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def running(self):
        return False

    def done(self):
        return True

    def result(self, timeout=None):
        raise self

    def exception(self, timeout=None):
        return self

    def traceback(self, timeout=None):
        return None

    def add_callback(self, callback):
        return False

    def add_done_callback(self, fn):
        fn(self)


class _Explain(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, tls):
        self._tls = tls

    def intercept_unary_unary(self, continuation, client_call_details, request):
        outcome = continuation(client_call_details, request)
        if outcome.done():  # a blocking call (a .future() is left as it is)
            exc = outcome.exception()
            if isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE:
                hint = _hint(exc.details(), self._tls)
                if hint:
                    return _ExplainedFailure(exc, hint)
        return outcome


class _ExplainAio(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, tls):
        self._tls = tls

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        call = await continuation(client_call_details, request)
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            hint = _hint(exc.details(), self._tls) if exc.code() == grpc.StatusCode.UNAVAILABLE else ""
            if not hint:
                raise
            raise grpc.aio.AioRpcError(
                exc.code(),
                exc.initial_metadata(),
                exc.trailing_metadata(),
                (exc.details() or "") + hint,
                exc.debug_error_string(),
            ) from None
        return call


def _tls_names() -> tuple[str, str] | None:
    ca = os.environ.get(TLS_CA_ENV, "")
    return (ca, os.environ.get(TLS_CERT_ENV, "")) if ca else None


def open_channel(address: str, server_name: str = "") -> grpc.Channel:
    """A blocking channel to ``address`` (any gRPC target); ``server_name``: the name to check on
    the server's certificate (see ``replica_addresses``)."""
    creds = credentials()
    if creds is None:
        channel = grpc.insecure_channel(address, options=channel_options())
    else:
        channel = grpc.secure_channel(address, creds, options=channel_options(server_name))
    return grpc.intercept_channel(channel, _Explain(_tls_names()))


def open_aio_channel(address: str, server_name: str = "") -> grpc.aio.Channel:
    """An asyncio channel to ``address`` (any gRPC target; create it inside the event loop that
    uses it); ``server_name`` as for ``open_channel``."""
    creds = credentials()
    interceptors = [_ExplainAio(_tls_names())]
    if creds is None:
        return grpc.aio.insecure_channel(address, options=channel_options(), interceptors=interceptors)
    return grpc.aio.secure_channel(address, creds, options=channel_options(server_name), interceptors=interceptors)


class TargetError(ValueError):
    """A gRPC target that names no replica (the message names the target)."""


def replica_addresses(target: str) -> list[tuple[str, str]]:
    """Every replica a gRPC target names, as ``(address, server_name)`` pairs to dial one by one
    (``open_channel(address, server_name)``), for calls that must reach every replica, such as
    LoadCheckpoint. ``ipv4:``/``ipv6:`` lists are split; a DNS name (``host:port``,
    ``dns:///host:port``) is resolved now, each address keeping the host name as the name to check
    on its TLS certificate; ``unix:`` targets are one replica. Raises ``TargetError``."""
    import ipaddress
    import socket

    scheme, sep, rest = target.partition(":")
    if sep and scheme in ("ipv4", "ipv6"):
        parts = [p.strip() for p in rest.split(",") if p.strip()]
        if not parts:
            raise TargetError(f"{target!r}: no addresses after {scheme}:")
        return [(f"{scheme}:{p}", "") for p in parts]
    if sep and scheme in ("unix", "unix-abstract"):
        return [(target, "")]
    if target.startswith("dns:"):
        rest = target[4:]
        if rest.startswith("//"):  # dns://[authority]/host:port
            rest = rest[2:].partition("/")[2]
    else:
        rest = target
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise TargetError(f"{target!r}: expected host:port, dns:///host:port or ipv4:a:port,b:port")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        return [(f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}", "")]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetError(f"{target!r}: cannot resolve {host}: {exc}") from None
    addresses = dict.fromkeys(
        f"ipv6:[{info[4][0]}]:{port}" if info[0] == socket.AF_INET6 else f"ipv4:{info[4][0]}:{port}" for info in infos
    )
    return [(address, host) for address in addresses]
