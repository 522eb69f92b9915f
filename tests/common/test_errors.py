"""One place maps errors to statuses: the common ``CaiError`` base, the server interceptor (our
bugs as INTERNAL with an id, never a repr), fail-fast start-up (ports before models), /metrics
on the service's own host."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time

import grpc
import pytest

from services import errors
from services.api.cai.v1 import generation_pb2_grpc
from tests.conftest import REPO


def test_every_error_has_the_common_base_its_status_and_its_old_base():
    from services.common.requests import InvalidRequest
    from services.config import ConfigError
    from services.constitution import ConstitutionError
    from services.engines import EngineError, EngineInputError
    from services.judge.prompting import OptionTokenError
    from services.k8s.manifests import K8sError
    from services.models.registry import ModelNotFound
    from services.prompts import PromptFileError
    from services.queue import MalformedItem, QueueError

    expected = {
        ConfigError: ("INVALID_ARGUMENT", ValueError),
        ConstitutionError: ("INVALID_ARGUMENT", ValueError),
        EngineError: ("UNAVAILABLE", RuntimeError),
        EngineInputError: ("INVALID_ARGUMENT", ValueError),
        OptionTokenError: ("FAILED_PRECONDITION", ValueError),
        K8sError: ("FAILED_PRECONDITION", Exception),
        ModelNotFound: ("NOT_FOUND", ValueError),
        PromptFileError: ("INVALID_ARGUMENT", ValueError),
        QueueError: ("UNAVAILABLE", Exception),
        MalformedItem: ("UNAVAILABLE", ValueError),
        InvalidRequest: ("INVALID_ARGUMENT", ValueError),
    }
    for cls, (status, old_base) in expected.items():
        assert issubclass(cls, errors.CaiError) and issubclass(cls, old_base), cls
        assert cls.status == status and hasattr(grpc.StatusCode, cls.status), cls
    assert str(InvalidRequest("sampling.n", "too many")) == "sampling.n: too many"


class _Boom(generation_pb2_grpc.GenerationServicer):
    """A servicer with one bug and one domain error, registered under cai.v1.Generation."""

    async def Generate(self, request, context):
        return {}["missing"]  # our bug: KeyError

    async def GetModelInfo(self, request, context):
        raise errors.ResourceExhausted("too much: retry later")


def _serve_boom():
    from services.api.cai.v1 import generation_pb2_grpc
    from services.common.server import GrpcService, ServerConfig

    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=-1)
    return GrpcService(
        config, lambda s: generation_pb2_grpc.add_GenerationServicer_to_server(_Boom(), s), ["cai.v1.Generation"]
    )


def test_our_bug_answers_internal_with_an_id_and_one_logged_traceback(caplog):
    from services.api.cai.v1 import common_pb2, generation_pb2, generation_pb2_grpc
    from services.common import metrics

    async def main():
        service = _serve_boom()
        port = await service.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = generation_pb2_grpc.GenerationStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as bug:
                    await stub.Generate(generation_pb2.GenerateRequest(), timeout=10)
                with pytest.raises(grpc.aio.AioRpcError) as busy:
                    await stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
                return bug.value, busy.value
        finally:
            await service.stop(0)

    before = metrics.RPC_ERRORS.labels("cai.v1.Generation", "GetModelInfo", "RESOURCE_EXHAUSTED")._value.get()
    with caplog.at_level(logging.INFO, logger="services.common.server"):
        bug, busy = asyncio.run(main())
    assert bug.code() == grpc.StatusCode.INTERNAL
    assert bug.details().startswith("internal error in Generate; see the server log (id ")
    assert "KeyError" not in bug.details() and "Traceback" not in bug.details()
    error_id = bug.details().rsplit("id ", 1)[1].rstrip(")")
    tracebacks = [r for r in caplog.records if r.exc_info and error_id in r.getMessage()]
    assert len(tracebacks) == 1
    assert busy.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and busy.details() == "too much: retry later"
    assert not any(r.exc_info for r in caplog.records if "GetModelInfo" in r.getMessage())
    assert (
        metrics.RPC_ERRORS.labels("cai.v1.Generation", "GetModelInfo", "RESOURCE_EXHAUSTED")._value.get() == before + 1
    )


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("which", ["--port", "--metrics-port"])
def test_a_port_in_use_fails_at_once_before_the_model_loads(which, tmp_path):
    sock = _busy_port()
    port = sock.getsockname()[1]
    ports = {"--port": "0", "--metrics-port": "0", which: str(port)}
    started = time.perf_counter()
    try:
        # a model folder that cannot load: the port must be reported, not the model
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.cli",
                "serve",
                "generation",
                "--model",
                str(tmp_path / "no-model"),
                "--engine",
                "transformers",
                "--host",
                "127.0.0.1",
                *[x for kv in ports.items() for x in kv],
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        sock.close()
    took = time.perf_counter() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert str(port) in result.stderr and "in use" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "no-model" not in result.stderr
    print(f"port in use reported after {took:.1f}s")


def test_metrics_listen_on_the_host_of_the_service(fast_servers):
    server = fast_servers["generation"]  # started with --host 127.0.0.1
    listening = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                listening.add(local)
    assert f"0100007F:{server.metrics_port:04X}" in listening
    assert f"00000000:{server.metrics_port:04X}" not in listening
