"""The generation service over a real socket (a `cai serve generation` process on vLLM)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api.cai.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from tests.conftest import metric, scrape


def conv(*texts: str, roles=None, id: str = "") -> common_pb2.Conversation:
    roles = roles or ["user", "assistant"] * len(texts)
    return common_pb2.Conversation(
        id=id, messages=[common_pb2.ChatMessage(role=r, content=t) for r, t in zip(roles, texts)]
    )


@pytest.fixture(scope="module")
def stub(generation_channel):
    return generation_pb2_grpc.GenerationStub(generation_channel)


def test_generate_returns_n_samples_per_prompt(stub):
    request = generation_pb2.GenerateRequest(
        prompts=[conv("How do I cook rice?", id="p1"), conv("hi", "Hello!", "Tell me a joke", id="p2")],
        sampling=common_pb2.SamplingParams(n=3, max_tokens=8, seed=1),
    )
    response = stub.Generate(request, timeout=60)
    assert [c.prompt_id for c in response.completions] == ["p1", "p2"]
    for c in response.completions:
        assert c.prompt_token_count > 0
        assert len(c.samples) == 3
        for s in c.samples:
            assert 1 <= s.token_count <= 8
            assert s.finish_reason in (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH)
    assert response.checkpoint_id and response.model
    again = stub.Generate(request, timeout=60)
    assert [s.text for c in again.completions for s in c.samples] == [
        s.text for c in response.completions for s in c.samples
    ]


def test_defaults_when_sampling_unset(stub):
    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
    response = stub.Generate(generation_pb2.GenerateRequest(prompts=[conv("hello")]), timeout=120)
    (completion,) = response.completions
    assert len(completion.samples) == 1
    assert completion.samples[0].token_count <= info.max_new_tokens


def test_stream_yields_every_sample_to_its_end(stub):
    request = generation_pb2.GenerateRequest(
        prompts=[conv("a"), conv("b")], sampling=common_pb2.SamplingParams(n=2, max_tokens=5, seed=2)
    )
    texts, ended = {}, {}
    for chunk in stub.GenerateStream(request, timeout=60):
        key = (chunk.prompt_index, chunk.sample_index)
        texts[key] = texts.get(key, "") + chunk.text_delta
        if chunk.finished:
            ended[key] = chunk.token_count
    assert set(ended) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all(1 <= n <= 5 for n in ended.values())
    unary = stub.Generate(request, timeout=60)
    assert texts == {(p, s): unary.completions[p].samples[s].text for p in range(2) for s in range(2)}


def test_health_serving(generation_channel):
    health = health_pb2_grpc.HealthStub(generation_channel)
    for name in ("", "cai.v1.Generation"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_foreign_client_discovers_and_calls_by_reflection(generation_server):
    """A client with none of our generated code: descriptors come from server reflection."""
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(generation_server.address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"cai.v1.Generation", "grpc.health.v1.Health"} <= services
        pool = descriptor_pool.DescriptorPool(db)
        method = pool.FindServiceByName("cai.v1.Generation").FindMethodByName("Generate")
        Request = message_factory.GetMessageClass(method.input_type)
        Response = message_factory.GetMessageClass(method.output_type)
        request = json_format.ParseDict(
            {"prompts": [{"messages": [{"role": "user", "content": "Hi!"}]}], "sampling": {"n": 2, "max_tokens": 4}},
            Request(),
        )
        call = channel.unary_unary(
            "/cai.v1.Generation/Generate",
            request_serializer=Request.SerializeToString,
            response_deserializer=Response.FromString,
        )
        response = json_format.MessageToDict(call(request, timeout=60))
    assert len(response["completions"][0]["samples"]) == 2


BAD = [
    ("no prompts", generation_pb2.GenerateRequest(), "prompts"),
    ("too many prompts", generation_pb2.GenerateRequest(prompts=[conv("x")] * 65), "max_batch_items"),
    (
        "n over max",
        generation_pb2.GenerateRequest(prompts=[conv("x")], sampling=common_pb2.SamplingParams(n=17)),
        "sampling.n",
    ),
    (
        "max_tokens over max",
        generation_pb2.GenerateRequest(prompts=[conv("x")], sampling=common_pb2.SamplingParams(max_tokens=100000)),
        "sampling.max_tokens",
    ),
    (
        "temperature",
        generation_pb2.GenerateRequest(prompts=[conv("x")], sampling=common_pb2.SamplingParams(temperature=3)),
        "sampling.temperature",
    ),
    (
        "top_p zero",
        generation_pb2.GenerateRequest(prompts=[conv("x")], sampling=common_pb2.SamplingParams(top_p=0)),
        "sampling.top_p",
    ),
    (
        "too many stops",
        generation_pb2.GenerateRequest(prompts=[conv("x")], sampling=common_pb2.SamplingParams(stop=["a"] * 9)),
        "sampling.stop",
    ),
    (
        "bad role",
        generation_pb2.GenerateRequest(prompts=[conv("x"), conv("y", roles=["robot"])]),
        "prompts[1].messages[0].role",
    ),
    ("empty message", generation_pb2.GenerateRequest(prompts=[conv("")]), "prompts[0].messages[0].content"),
    ("no messages", generation_pb2.GenerateRequest(prompts=[common_pb2.Conversation()]), "prompts[0].messages"),
    ("ends with assistant", generation_pb2.GenerateRequest(prompts=[conv("hi", "hello")]), "prompts[0].messages"),
    ("prompt too long", generation_pb2.GenerateRequest(prompts=[conv("word " * 5000)]), "max_prompt_tokens"),
]


@pytest.mark.parametrize("request_, field", [(r, f) for _, r, f in BAD], ids=[n for n, _, _ in BAD])
@pytest.mark.parametrize("rpc", ["Generate", "GenerateStream"])
def test_bad_requests_are_invalid_argument_naming_the_field(stub, rpc, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        result = getattr(stub, rpc)(request_, timeout=30)
        if rpc == "GenerateStream":
            list(result)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def test_deadline_is_honoured(stub, generation_channel):
    request = generation_pb2.GenerateRequest(
        prompts=[conv("tell me everything")] * 16,
        sampling=common_pb2.SamplingParams(n=16, max_tokens=1024, temperature=1.0),
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(request, timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server is still healthy and answers the next request.
    ok = stub.Generate(
        generation_pb2.GenerateRequest(prompts=[conv("x")], sampling=common_pb2.SamplingParams(max_tokens=2)),
        timeout=30,
    )
    assert len(ok.completions) == 1


def test_metrics_move(stub, generation_server):
    before = scrape(generation_server.metrics_port)
    stub.Generate(
        generation_pb2.GenerateRequest(
            prompts=[conv("x"), conv("y")], sampling=common_pb2.SamplingParams(n=2, max_tokens=3)
        ),
        timeout=30,
    )
    with pytest.raises(grpc.RpcError):
        stub.Generate(generation_pb2.GenerateRequest(), timeout=30)
    after = scrape(generation_server.metrics_port)
    labels = dict(service="cai.v1.Generation", method="Generate")
    assert (
        metric(after, "cai_grpc_requests_total", code="OK", **labels)
        == metric(before, "cai_grpc_requests_total", code="OK", **labels) + 1
    )
    assert (
        metric(after, "cai_grpc_errors_total", code="INVALID_ARGUMENT", **labels)
        == metric(before, "cai_grpc_errors_total", code="INVALID_ARGUMENT", **labels) + 1
    )
    assert metric(after, "cai_generation_samples_total") == metric(before, "cai_generation_samples_total") + 4
    assert metric(after, "cai_generation_tokens_total") >= metric(before, "cai_generation_tokens_total") + 4
    assert metric(after, "cai_grpc_request_duration_seconds_count", **labels) > metric(
        before, "cai_grpc_request_duration_seconds_count", **labels
    )
    assert (
        metric(after, "cai_generation_samples_per_request_count")
        == metric(before, "cai_generation_samples_per_request_count") + 1
    )


def test_load_checkpoint_without_restart(stub, tiny_model, tiny_model_b, tmp_path):
    request = generation_pb2.GenerateRequest(
        prompts=[conv("same prompt")], sampling=common_pb2.SamplingParams(max_tokens=6, temperature=0)
    )
    before = stub.Generate(request, timeout=60)
    # Bad checkpoints are refused and the old one keeps serving.
    with pytest.raises(grpc.RpcError) as err:
        stub.LoadCheckpoint(common_pb2.LoadCheckpointRequest(path=str(tmp_path / "missing")), timeout=60)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "path" in err.value.details()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(grpc.RpcError) as err:
        stub.LoadCheckpoint(common_pb2.LoadCheckpointRequest(path=str(broken)), timeout=120)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10).checkpoint_id == before.checkpoint_id

    loaded = stub.LoadCheckpoint(
        common_pb2.LoadCheckpointRequest(path=tiny_model_b, checkpoint_id="policy-step-1"), timeout=300
    )
    assert loaded.checkpoint_id == "policy-step-1"
    assert loaded.previous_checkpoint_id == before.checkpoint_id
    after = stub.Generate(request, timeout=60)
    assert after.checkpoint_id == "policy-step-1"
    assert after.completions[0].samples[0].text != before.completions[0].samples[0].text
    assert stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10).checkpoint_id == "policy-step-1"
    # and back, so other tests see the first model
    stub.LoadCheckpoint(
        common_pb2.LoadCheckpointRequest(path=tiny_model, checkpoint_id=before.checkpoint_id), timeout=300
    )
    assert stub.Generate(request, timeout=60).completions[0].samples[0].text == before.completions[0].samples[0].text
