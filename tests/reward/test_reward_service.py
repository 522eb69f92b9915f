"""The reward service over a real socket: batch scores, checkpoint ids, reload without dropping
requests, bad input."""

from __future__ import annotations

import threading

import grpc
import pytest

from services.api.cai.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from tests.conftest import ServerProcess, metric, scrape


def item(q="How do I cook rice?", a="Rinse it and simmer it."):
    return reward_pb2.ScoreItem(
        prompt=common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content=q)]), answer=a
    )


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory):
    from services.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("rm")
    return str(build_tiny_model(root / "rm-a", reward=True, seed=0)), str(
        build_tiny_model(root / "rm-b", reward=True, seed=1)
    )


@pytest.fixture(scope="module")
def server(reward_models, tmp_path_factory):
    s = ServerProcess(["serve", "reward", "--model", reward_models[0]], tmp_path_factory.mktemp("reward"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield reward_pb2_grpc.RewardStub(channel)


def test_scores_a_batch_consistently(stub):
    items = [item(a=f"answer {i}") for i in range(40)]
    response = stub.Score(reward_pb2.ScoreRequest(items=items), timeout=60)
    assert len(response.scores) == 40 and response.checkpoint_id == "rm-a"
    single = [stub.Score(reward_pb2.ScoreRequest(items=[it]), timeout=60).scores[0] for it in items[:3]]
    assert single == pytest.approx(list(response.scores[:3]), abs=1e-4)
    assert len(set(round(s, 5) for s in response.scores)) > 1


def test_reload_without_dropping_requests(stub, reward_models, server):
    errors, done = [], []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                done.append(stub.Score(reward_pb2.ScoreRequest(items=[item()] * 8), timeout=60).checkpoint_id)
            except grpc.RpcError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    before = scrape(server.metrics_port)
    loaded = stub.LoadCheckpoint(common_pb2.LoadCheckpointRequest(path=reward_models[1]), timeout=120)
    after_load = stub.Score(reward_pb2.ScoreRequest(items=[item()]), timeout=60)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert loaded.checkpoint_id == "rm-b" and loaded.previous_checkpoint_id == "rm-a"
    assert after_load.checkpoint_id == "rm-b"
    assert {"rm-a", "rm-b"} >= set(done) and done
    assert stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10).checkpoint_id == "rm-b"
    after = scrape(server.metrics_port)
    assert (
        metric(after, "cai_checkpoint_loads_total", outcome="ok")
        == metric(before, "cai_checkpoint_loads_total", outcome="ok") + 1
    )
    stub.LoadCheckpoint(common_pb2.LoadCheckpointRequest(path=reward_models[0]), timeout=120)


@pytest.mark.parametrize(
    "request_, field",
    [
        (reward_pb2.ScoreRequest(), "items"),
        (reward_pb2.ScoreRequest(items=[item(), reward_pb2.ScoreItem(answer="x")]), "items[1].prompt.messages"),
        (reward_pb2.ScoreRequest(items=[item(q="word " * 5000)]), "max_prompt_tokens"),
    ],
)
def test_bad_requests(stub, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(request_, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()


def test_missing_model_is_a_clear_start_up_error(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "serve",
            "reward",
            "--model",
            str(tmp_path / "none"),
            "--port",
            "0",
            "--metrics-port",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "no config.json" in out.stderr and "Traceback" not in out.stderr
