"""The in-pod health probe: ``grpc.health.v1`` of a local server, exit 0 when SERVING.

Kubelet's native gRPC probes speak plaintext only, so with TLS (k8s/components/tls) the probes are
exec probes running this module inside the container::

    python -m services.common.probe --port 50051 --tls-dir /etc/cai/tls

With ``--tls-dir`` it trusts the folder's ``ca.crt`` (else ``tls.crt``), expects the name in
``--server-name`` or ``$CAI_TLS_SERVER_NAME`` on the certificate, and presents ``tls.crt``/``tls.key``
as its client certificate (needed with k8s/components/mtls, ignored otherwise). Exit status: 0
SERVING, 1 not serving or unreachable, 2 unusable TLS files.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.channels import open_channel


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _tls_channel(address: str, tls_dir: str, server_name: str) -> grpc.Channel:
    """A TLS channel with the folder's files; OSError when one cannot be read."""
    cert, key, ca = (os.path.join(tls_dir, name) for name in ("tls.crt", "tls.key", "ca.crt"))
    roots = _read(ca if os.path.isfile(ca) else cert)
    chain = private_key = None
    if os.path.isfile(key) and os.path.isfile(cert):
        chain, private_key = _read(cert), _read(key)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    creds = grpc.ssl_channel_credentials(root_certificates=roots, private_key=private_key, certificate_chain=chain)
    return grpc.secure_channel(address, creds, options)


def probe(args: argparse.Namespace) -> int:
    """Checks health once; the exit status (0 SERVING, 1 not, 2 unusable TLS files)."""
    address = f"{args.host}:{args.port}"
    if args.tls_dir:
        try:
            channel = _tls_channel(address, args.tls_dir, args.server_name or os.environ.get("CAI_TLS_SERVER_NAME", ""))
        except OSError as exc:
            print(f"cai: error: probe: {exc}", file=sys.stderr)
            return 2
    else:
        channel = open_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"{address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        print(f"{address} {args.service or '(server)'}: {state}", file=sys.stderr)
        return 1
    return 0


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--service", default="", help="service name to check (default: the whole server)")
    p.add_argument("--tls-dir", help="folder with tls.crt (and ca.crt, tls.key): connect over TLS")
    p.add_argument("--server-name", help="name expected on the certificate (default $CAI_TLS_SERVER_NAME)")
    p.add_argument("--timeout", type=float, default=5.0)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m services.common.probe", description=__doc__))
    return probe(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
