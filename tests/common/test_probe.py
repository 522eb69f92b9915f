"""The in-pod health probe (services/common/probe.py): exit 0 only when the server says SERVING,
over TLS with the name the certificate carries."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.probe import main


@contextmanager
def health_server():
    """A gRPC health server on loopback: the whole server SERVING, cai.v1.Judge NOT_SERVING; yields its port."""
    server = grpc.server(ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("cai.v1.Judge", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        yield port
    finally:
        server.stop(0)


def test_probe_reports_serving_and_not_serving():
    with health_server() as port:
        assert main(["--port", str(port)]) == 0
        assert main(["--port", str(port), "--service", "cai.v1.Judge"]) == 1
        assert main(["--port", str(port), "--service", "cai.v1.Unknown", "--timeout", "2"]) == 1


def test_unreadable_tls_files_are_a_clear_error(tmp_path, capsys):
    assert main(["--port", "1", "--tls-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cai: error: probe: ") and "Traceback" not in err


@pytest.mark.skipif(not __import__("shutil").which("openssl"), reason="needs the openssl command")
def test_probe_checks_health_over_tls_with_the_service_name(tmp_path, monkeypatch):
    """The tls component's exec probe: a certificate for <service>.<namespace>.svc, checked on
    127.0.0.1 with the name from $CAI_TLS_SERVER_NAME."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=judge.cai.svc",
            "-addext",
            "subjectAltName=DNS:judge,DNS:judge.cai.svc",
            "-keyout",
            str(tmp_path / "tls.key"),
            "-out",
            str(tmp_path / "tls.crt"),
        ],
        check=True,
        capture_output=True,
    )
    server = grpc.server(ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials([((tmp_path / "tls.key").read_bytes(), (tmp_path / "tls.crt").read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        monkeypatch.setenv("CAI_TLS_SERVER_NAME", "judge.cai.svc")
        assert main(["--port", str(port), "--tls-dir", str(tmp_path)]) == 0
        monkeypatch.setenv("CAI_TLS_SERVER_NAME", "reward.cai.svc")  # not on the certificate
        assert main(["--port", str(port), "--tls-dir", str(tmp_path), "--timeout", "3"]) == 1
        assert main(["--port", str(port), "--timeout", "3"]) == 1  # plaintext to a TLS port
    finally:
        server.stop(0)
