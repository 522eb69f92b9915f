"""Graceful shutdown: SIGTERM lets in-flight requests finish, then the process exits cleanly."""

from __future__ import annotations

import threading

import grpc

from services.api.cai.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from tests.conftest import ServerProcess


def test_sigterm_finishes_in_flight_requests(tiny_model, tmp_path):
    server = ServerProcess(["serve", "generation", "--model", tiny_model, "--engine", "transformers"], tmp_path)
    result = {}
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            stub.Generate(
                generation_pb2.GenerateRequest(
                    prompts=[
                        common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content="warm up")])
                    ],
                    sampling=common_pb2.SamplingParams(max_tokens=2),
                ),
                timeout=60,
            )
            request = generation_pb2.GenerateRequest(
                prompts=[common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content="long")])] * 8,
                sampling=common_pb2.SamplingParams(n=4, max_tokens=400, temperature=1.0),
            )
            started = threading.Event()

            def call():
                started.set()
                try:
                    result["response"] = stub.Generate(request, timeout=120)
                except grpc.RpcError as exc:
                    result["error"] = exc

            worker = threading.Thread(target=call)
            worker.start()
            started.wait()
            import time

            time.sleep(1.0)  # the request is running in the engine
            code = server.stop(timeout=120)
            worker.join(120)
    finally:
        server.stop()
    assert "error" not in result, result.get("error")
    assert len(result["response"].completions) == 8
    assert code == 0
    assert "signal received" in server.output()
