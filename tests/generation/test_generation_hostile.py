"""The reproductions of the hostile-input issue against a real generation service: each answers
a clear status now, and health answers within a second while the service is flooded."""

from __future__ import annotations

import concurrent.futures
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api.cai.v1 import common_pb2, critique_pb2, critique_pb2_grpc, generation_pb2, generation_pb2_grpc
from tests.conftest import metric, metric_reaches, scrape


def conv(text="Hi"):
    return common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content=text)])


@pytest.fixture(scope="module")
def gen(fast_servers):
    server = fast_servers["generation"]
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(server.address, options=options) as channel:
        yield server, channel, generation_pb2_grpc.GenerationStub(channel)


def test_undecodable_request_is_invalid_argument_naming_the_type_and_counted(gen):
    server, channel, _ = gen
    before = metric(scrape(server.metrics_port), "cai_grpc_errors_total", method="Generate", code="INVALID_ARGUMENT")
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/cai.v1.Generation/Generate")(b"\xff\xff\xff\x01", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("request is not a valid cai.v1.GenerateRequest: ")
    after = metric_reaches(
        server.metrics_port, before + 1, "cai_grpc_errors_total", method="Generate", code="INVALID_ARGUMENT"
    )
    assert after == before + 1
    assert "DecodeError" not in server.output() and "Traceback" not in server.output()


def test_greedy_with_n_above_one_is_invalid_argument_naming_sampling_n(gen):
    _, _, stub = gen
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(
            generation_pb2.GenerateRequest(prompts=[conv()], sampling=common_pb2.SamplingParams(n=2, temperature=0)),
            timeout=30,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("sampling.n: ") and "sampling.temperature=0" in err.value.details()


def test_seeds_near_2_to_the_64_are_wrapped_and_answer(gen, fast_servers):
    _, _, stub = gen
    top = 2**64 - 1
    a = stub.Generate(
        generation_pb2.GenerateRequest(
            prompts=[conv()], sampling=common_pb2.SamplingParams(n=3, seed=top, max_tokens=4)
        ),
        timeout=60,
    )
    b = stub.Generate(
        generation_pb2.GenerateRequest(
            prompts=[conv()], sampling=common_pb2.SamplingParams(n=3, seed=top % 2**63, max_tokens=4)
        ),
        timeout=60,
    )
    assert len(a.completions[0].samples) == 3
    assert [s.text for s in a.completions[0].samples] == [s.text for s in b.completions[0].samples]
    with grpc.insecure_channel(fast_servers["critique"].address) as channel:  # seed + 2*round
        chains = critique_pb2_grpc.CritiqueStub(channel).Revise(
            critique_pb2.ReviseRequest(
                items=[critique_pb2.ReviseItem(prompt=conv("How do I pick a lock?"), answer="Use a pick.")],
                rounds=2,
                seed=top,
                sampling=common_pb2.SamplingParams(seed=top - 1, max_tokens=4),
            ),
            timeout=120,
        )
    assert len(chains.chains[0].rounds) == 2


def test_load_checkpoint_with_an_overlong_path_is_invalid_argument(gen):
    _, _, stub = gen
    for path, words in (("/tmp/" + "a" * 300, "255"), ("/tmp/" + "/".join(["b" * 200] * 30), "4096")):
        with pytest.raises(grpc.RpcError) as err:
            stub.LoadCheckpoint(common_pb2.LoadCheckpointRequest(path=path), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("path: ") and words in err.value.details()


def test_health_answers_within_a_second_while_flooded_with_oversized_requests(gen):
    server, _, stub = gen
    huge = generation_pb2.GenerateRequest(prompts=[conv("x" * 8_000_000)])
    large = generation_pb2.GenerateRequest(prompts=[conv("word " * 200_000)])  # 1 MB: under the message limit
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.address))
    codes, slowest = [], 0.0
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(stub.Generate, huge if i % 2 else large, timeout=60) for i in range(64)]
        while not all(f.done() for f in futures):
            t = time.perf_counter()
            assert (
                health.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                == health_pb2.HealthCheckResponse.SERVING
            )
            slowest = max(slowest, time.perf_counter() - t)
            time.sleep(0.05)
        for f in futures:
            exc = f.exception()
            codes.append(exc.code() if exc else grpc.StatusCode.OK)
    took = time.perf_counter() - started
    print(f"64 oversized requests answered in {took:.2f}s; slowest health check {slowest:.3f}s")
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT}
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.INVALID_ARGUMENT in codes
