"""TLS and mutual TLS with real certificates made on the fly: `cai serve` processes with
--tls-cert-file/--tls-key-file (and --tls-client-ca-file), clients configured by
CAI_GRPC_TLS_CA_FILE / CAI_GRPC_TLS_CERT_FILE / CAI_GRPC_TLS_KEY_FILE."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from services.api.cai.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from services.common import channels
from services.common.channels import open_aio_channel, open_channel
from tests.common.certs import CA
from tests.conftest import REPO, ServerProcess


def _request():
    prompt = common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content="Is tea hot?")])
    return reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt=prompt, answer="Usually.")])


def _score(address: str, timeout: float = 20):
    with open_channel(address) as channel:
        return reward_pb2_grpc.RewardStub(channel).Score(_request(), timeout=timeout)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = CA(folder / "ca")
    other = CA(folder / "other", name="other-ca")
    return {
        "ca": ca.ca_file,
        "server": ca.issue("localhost", ips=("127.0.0.1",), server=True),
        "client": ca.issue("trainer", client=True),
        "other_ca": other.ca_file,
        "stranger": other.issue("stranger", client=True),
        "ca_obj": ca,
    }


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> str:
    from services.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("rm") / "rm", reward=True, seed=0))


@pytest.fixture(scope="module")
def servers(pki, reward_model, tmp_path_factory):
    """A reward server with TLS and one with mutual TLS, on the tiny reward model."""
    model = reward_model
    cert, key = pki["server"]
    tls = ["serve", "reward", "--model", model, "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    with ThreadPoolExecutor(2) as pool:
        started = list(
            pool.map(
                lambda args: ServerProcess(args[1], tmp_path_factory.mktemp(args[0])),
                [
                    ("tls", tls),
                    ("mtls", [*tls, "--tls-client-ca-file", str(pki["ca"]), "--tls-allowed-client-name", "trainer"]),
                ],
            )
        )
    yield {"tls": started[0], "mtls": started[1]}
    for s in started:
        s.stop()


@pytest.fixture
def client_env(monkeypatch):
    def set_(ca=None, cert=None, key=None):
        for env, value in ((channels.TLS_CA_ENV, ca), (channels.TLS_CERT_ENV, cert), (channels.TLS_KEY_ENV, key)):
            if value:
                monkeypatch.setenv(env, str(value))
            else:
                monkeypatch.delenv(env, raising=False)

    set_()
    return set_


def test_a_client_with_the_ca_calls_a_tls_server(servers, pki, client_env):
    client_env(ca=pki["ca"])
    port = servers["tls"].port
    assert _score(f"localhost:{port}").scores
    assert _score(f"127.0.0.1:{port}").scores  # the IP is on the certificate too
    assert _score(f"ipv4:127.0.0.1:{port}").scores


def test_the_server_name_checked_can_be_set(servers, pki, client_env, monkeypatch):
    client_env(ca=pki["ca"])
    monkeypatch.setenv(channels.TLS_SERVER_NAME_ENV, "localhost")
    assert _score(f"ipv4:127.0.0.1:{servers['tls'].port}").scores
    monkeypatch.delenv(channels.TLS_SERVER_NAME_ENV)
    ((address, name),) = [p for p in channels.replica_addresses(f"localhost:{servers['tls'].port}") if "[" not in p[0]]
    assert name == "localhost"
    with open_channel(address, name) as channel:  # an IP to dial, the host name to check
        assert reward_pb2_grpc.RewardStub(channel).Score(_request(), timeout=20).scores
    monkeypatch.setenv(channels.TLS_SERVER_NAME_ENV, "judge.cai.svc")  # not on the certificate
    with pytest.raises(grpc.RpcError) as err:
        _score(servers["tls"].address, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "does not name the target" in err.value.details()


def test_a_plaintext_client_fails_against_a_tls_server(servers, client_env):
    with pytest.raises(grpc.RpcError) as err:
        _score(servers["tls"].address, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "this client dials plaintext" in err.value.details() and "CAI_GRPC_TLS_CA_FILE" in err.value.details()


def test_a_client_trusting_another_ca_fails_against_a_tls_server(servers, pki, client_env):
    client_env(ca=pki["other_ca"])
    with pytest.raises(grpc.RpcError) as err:
        _score(servers["tls"].address, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the server's certificate is not signed by a CA in it" in err.value.details()


async def test_mutual_tls_refuses_a_client_without_a_certificate(servers, pki, client_env):
    client_env(ca=pki["ca"])
    with pytest.raises(grpc.RpcError) as err:
        _score(servers["mtls"].address, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "without a client certificate" in err.value.details() and "CAI_GRPC_TLS_CERT_FILE" in err.value.details()
    async with open_aio_channel(servers["mtls"].address) as channel:  # the pipelines' asyncio clients
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reward_pb2_grpc.RewardStub(channel).Score(_request(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "without a client certificate" in err.value.details()
    print(f"\nno client certificate: {err.value.code().name}: {err.value.details()}")


def test_mutual_tls_refuses_a_client_certificate_from_another_ca(servers, pki, client_env):
    cert, key = pki["stranger"]
    client_env(ca=pki["ca"], cert=cert, key=key)
    with pytest.raises(grpc.RpcError) as err:
        _score(servers["mtls"].address, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_accepts_a_client_with_a_certificate(servers, pki, client_env):
    cert, key = pki["client"]
    client_env(ca=pki["ca"], cert=cert, key=key)
    assert _score(servers["mtls"].address).scores
    # A client certificate is harmless against a server that does not ask for one.
    assert _score(servers["tls"].address).scores


def test_client_tls_files_that_cannot_be_used_are_named(pki, client_env, tmp_path):
    client_env(ca=tmp_path / "missing.crt")
    with pytest.raises(channels.TLSFilesError, match=r"CAI_GRPC_TLS_CA_FILE=.*missing.crt"):
        open_channel("127.0.0.1:1")
    cert, _ = pki["client"]
    client_env(ca=pki["ca"], cert=cert)
    with pytest.raises(channels.TLSFilesError, match="CAI_GRPC_TLS_KEY_FILE"):
        open_channel("127.0.0.1:1")
    (tmp_path / "junk.crt").write_text("not a certificate")
    client_env(ca=tmp_path / "junk.crt")
    with pytest.raises(channels.TLSFilesError, match="junk.crt: not a PEM file"):
        open_channel("127.0.0.1:1")


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--tls-client-ca-file", "ca.crt"],
            "server.tls_client_ca_file: mutual TLS needs the server's own tls_cert_file",
        ),
        (["--tls-cert-file", "missing.crt", "--tls-key-file", "missing.key"], "server.tls_cert_file: missing.crt"),
        (
            ["--tls-cert-file", "s.crt", "--tls-key-file", "s.key", "--tls-allowed-client-name", "trainer"],
            "server.tls_allowed_client_names: client names can only be checked with mutual TLS",
        ),
    ],
)
def test_serve_names_a_tls_setting_that_cannot_work(flags, message, reward_model, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "serve",
            "reward",
            "--model",
            reward_model,
            "--port",
            "0",
            "--metrics-port",
            "-1",
            *flags,
        ],
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr


async def test_only_allowed_client_names_pass_require_client_identity(pki, client_env, tmp_path):
    """The helper a privileged RPC (LoadCheckpoint) calls: the client's certificate names decide;
    and a rotated server certificate is served to new connections without a restart."""
    from services.common.tls import peer_identities, require_client_identity, server_credentials

    async def whoami(request: bytes, context) -> bytes:
        await require_client_identity(context, {"trainer"})
        return ",".join(sorted(peer_identities(context))).encode()

    ca = pki["ca_obj"]
    server_cert = tmp_path / "tls.crt"
    server_key = tmp_path / "tls.key"
    cert, key = pki["server"]
    server_cert.write_bytes(cert.read_bytes())
    server_key.write_bytes(key.read_bytes())
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Who", {"Am": grpc.unary_unary_rpc_method_handler(whoami)})]
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(str(server_cert), str(server_key), str(pki["ca"])))
    await server.start()

    async def call():
        async with open_aio_channel(f"localhost:{port}") as channel:
            return await channel.unary_unary("/test.Who/Am")(b"", timeout=10)

    try:
        cert, key = pki["client"]
        client_env(ca=pki["ca"], cert=cert, key=key)
        assert await call() == b"trainer"
        # Same CA, another name: the transport lets it in, the helper does not.
        cert, key = ca.issue("label-job", client=True)
        client_env(ca=pki["ca"], cert=cert, key=key)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "label-job" in err.value.details() and "tls_allowed_client_names" in err.value.details()
        # Rotation: the server's files are replaced by a certificate from a new CA.
        new_ca = CA(tmp_path / "new-ca", name="new-ca")
        new_cert, new_key = new_ca.issue("localhost", ips=("127.0.0.1",), server=True)
        server_key.write_bytes(new_key.read_bytes())
        server_cert.write_bytes(new_cert.read_bytes())
        cert, key = pki["client"]
        client_env(ca=new_ca.ca_file, cert=cert, key=key)
        assert await call() == b"trainer"
    finally:
        await server.stop(None)
