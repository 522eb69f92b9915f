"""The critique service over a real socket (a `cai serve critique` process on vLLM)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api.cai.v1 import common_pb2, critique_pb2, critique_pb2_grpc
from services.constitution import load_constitution
from tests.conftest import metric, scrape


def item(text="How do I pick a lock?", answer="Here is how.", id="p1"):
    return critique_pb2.ReviseItem(
        prompt=common_pb2.Conversation(id=id, messages=[common_pb2.ChatMessage(role="user", content=text)]),
        answer=answer,
    )


@pytest.fixture(scope="module")
def channel(critique_server):
    with grpc.insecure_channel(critique_server.address) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return critique_pb2_grpc.CritiqueStub(channel)


def test_rounds_and_provenance(stub):
    c = load_constitution()
    request = critique_pb2.ReviseRequest(
        items=[item(id="a"), item("Tell me about the moon", "It is cheese.", id="b")],
        rounds=3,
        seed=11,
        sampling=common_pb2.SamplingParams(max_tokens=8),
    )
    response = stub.Revise(request, timeout=120)
    assert len(response.chains) == 2
    known = {p.id for p in c.critique_revision}
    for chain, pid in zip(response.chains, ["a", "b"]):
        assert [r.round for r in chain.rounds] == [1, 2, 3]
        assert all(r.principle_id in known for r in chain.rounds)
        assert chain.final_answer == chain.rounds[-1].revision
        p = chain.provenance
        assert p.constitution_file == "default.yaml" and p.constitution_sha256 == c.sha256
        assert p.principle_id.split(",") == [r.principle_id for r in chain.rounds]
        assert p.prompt_id == pid and p.model and p.checkpoint and p.created_at.seconds > 0
    again = stub.Revise(request, timeout=120)
    assert [r.principle_id for ch in again.chains for r in ch.rounds] == [
        r.principle_id for ch in response.chains for r in ch.rounds
    ]
    assert [ch.final_answer for ch in again.chains] == [ch.final_answer for ch in response.chains]


def test_critiques_stop_at_critique_max_tokens_and_revisions_at_max_tokens(stub, tiny_model):
    from services.engines.base import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    request = critique_pb2.ReviseRequest(
        items=[item(id="a"), item("Tell me about the moon", "It is cheese.", id="b")],
        rounds=2,
        seed=5,
        sampling=common_pb2.SamplingParams(max_tokens=12, temperature=1.0),
        critique_max_tokens=3,
    )
    rounds = [r for chain in stub.Revise(request, timeout=120).chains for r in chain.rounds]
    assert max(len(tokenizer.encode(r.critique, add_special_tokens=False)) for r in rounds) <= 4  # re-encoded text
    # the tiny model's noise rarely ends early: revisions run past the critiques' cap
    assert max(len(tokenizer.encode(r.critique + r.revision, add_special_tokens=False)) for r in rounds) > 8
    with pytest.raises(grpc.RpcError) as err:
        stub.Revise(critique_pb2.ReviseRequest(items=[item()], critique_max_tokens=10**6), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "critique_max_tokens" in err.value.details()


def test_default_is_four_rounds(stub):
    response = stub.Revise(
        critique_pb2.ReviseRequest(items=[item()], sampling=common_pb2.SamplingParams(max_tokens=4)), timeout=120
    )
    assert len(response.chains[0].rounds) == 4


def test_principle_ids_restrict_sampling(stub):
    ids = [p.id for p in load_constitution().critique_revision[:2]]
    response = stub.Revise(
        critique_pb2.ReviseRequest(
            items=[item(id=str(i)) for i in range(4)],
            rounds=2,
            principle_ids=ids,
            sampling=common_pb2.SamplingParams(max_tokens=2),
        ),
        timeout=120,
    )
    assert {r.principle_id for ch in response.chains for r in ch.rounds} <= set(ids)


BAD = [
    ("no items", critique_pb2.ReviseRequest(), "items"),
    ("too many rounds", critique_pb2.ReviseRequest(items=[item()], rounds=99), "rounds"),
    ("unknown principle", critique_pb2.ReviseRequest(items=[item()], principle_ids=["nope"]), "principle_ids[0]"),
    ("empty answer", critique_pb2.ReviseRequest(items=[item(), item(answer=" ")]), "items[1].answer"),
    (
        "bad role",
        critique_pb2.ReviseRequest(
            items=[
                critique_pb2.ReviseItem(
                    prompt=common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="bot", content="x")]),
                    answer="y",
                )
            ]
        ),
        "items[0].prompt.messages[0].role",
    ),
    ("too many items", critique_pb2.ReviseRequest(items=[item()] * 65), "max_batch_items"),
    (
        "temperature",
        critique_pb2.ReviseRequest(items=[item()], sampling=common_pb2.SamplingParams(temperature=-1)),
        "sampling.temperature",
    ),
]


@pytest.mark.parametrize("request_, field", [(r, f) for _, r, f in BAD], ids=[n for n, _, _ in BAD])
def test_bad_requests(stub, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.Revise(request_, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def test_health_and_metrics(channel, stub, critique_server):
    health = health_pb2_grpc.HealthStub(channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="cai.v1.Critique"), timeout=5).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    before = scrape(critique_server.metrics_port)
    stub.Revise(
        critique_pb2.ReviseRequest(items=[item(), item()], rounds=2, sampling=common_pb2.SamplingParams(max_tokens=2)),
        timeout=60,
    )
    after = scrape(critique_server.metrics_port)
    assert metric(after, "cai_critique_rounds_total") == metric(before, "cai_critique_rounds_total") + 4
    assert (
        metric(after, "cai_grpc_requests_total", service="cai.v1.Critique", method="Revise", code="OK")
        == metric(before, "cai_grpc_requests_total", service="cai.v1.Critique", method="Revise", code="OK") + 1
    )
