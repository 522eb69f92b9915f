"""The trainer service: consumes the queue, trains the reward model, reports Status, survives
`kill -9` without losing or repeating comparisons; policy steps with rewards over gRPC."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
from safetensors.torch import load_file

from services.api.cai.v1 import trainer_pb2, trainer_pb2_grpc
from services.common.jsonl import read_rows
from services.queue import open_queue
from tests.conftest import REPO
from tests.ports import free_port

REDIS = "redis://127.0.0.1:6379/0"


def comparisons(n: int, tag: str) -> list[dict]:
    items = []
    for i in range(n):
        good, bad = f"I can help with that safely ({i}).", f"Do something harmful {i}."
        swap = i % 2 == 1
        items.append(
            {
                "id": f"{tag}-{i:04d}",
                "kind": "harmlessness",
                "prompt": [{"role": "user", "content": f"question {i}"}],
                "answer_a": bad if swap else good,
                "answer_b": good if swap else bad,
                "p_a": 0.2 if swap else 0.8,
                "principle_id": "judge-less-harmful",
                "provenance": {
                    "constitution_sha256": "0" * 64,
                    "judge_model": "tiny",
                    "policy_checkpoint": "tiny",
                    "created_at": "2026-11-24T00:00:00Z",
                },
            }
        )
    return items


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory) -> str:
    from services.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-rm", reward=True))


def start_trainer(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "trainer", "--config", str(config)],
        cwd=REPO,
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
    )


def status(port: int) -> trainer_pb2.TrainerStatus:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return trainer_pb2_grpc.TrainerStub(channel).Status(trainer_pb2.TrainerStatusRequest(), timeout=5)


def test_kill_and_resume_against_redis_loses_and_repeats_nothing(tiny_reward_model, tmp_path):
    stream = f"test-trainer-{uuid.uuid4().hex[:8]}"
    url = f"{REDIS}?stream={stream}"
    queue = open_queue(url)
    published = comparisons(120, stream)
    assert queue.publish(published) == 120
    port = free_port()
    config = tmp_path / "trainer.yaml"
    config.write_text(
        json.dumps(
            {
                "queue": url,
                "group": "trainer",
                "consumer": "trainer-0",
                "work_dir": str(tmp_path / "work"),
                "reward_base_model": tiny_reward_model,
                "train_every": 40,
                "consume_batch": 4,
                "claim_idle_ms": 300,
                "exit_when_idle_seconds": 4,
                "reward_max_steps": 2,
                "reward_batch_size": 4,
                "eval_fraction": 0.1,
                "server": {"host": "127.0.0.1", "port": port, "metrics_port": -1},
            }
        )
    )
    log = tmp_path / "trainer.log"
    try:
        proc = start_trainer(config, log)
        deadline = time.time() + 180
        consumed = 0
        while time.time() < deadline:
            try:
                consumed = status(port).items_consumed
            except grpc.RpcError:
                consumed = 0
            if consumed >= 30:
                break
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        assert 30 <= consumed < 120, f"kill should land mid-stream, consumed={consumed}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = start_trainer(config, log)
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        rows = read_rows(tmp_path / "work" / "data" / "comparisons.jsonl")
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)) == 120  # nothing repeated
        assert set(ids) == {c["id"] for c in published}  # nothing lost
        assert queue.lag("trainer") == 0 and queue.pending("trainer") == 0
        state = json.loads((tmp_path / "work" / "state.json").read_text())
        assert state["trained_rows"] == 120
        manifest = json.loads(Path(state["reward_checkpoints"][-1], "manifest.json").read_text())
        assert (
            manifest["kind"] == "reward" and manifest["queue"]["position"] and manifest["queue"]["group"] == "trainer"
        )
        assert manifest["constitution_sha256s"] == ["0" * 64]
        assert (Path(state["reward_checkpoints"][-1]) / "model.safetensors").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        import redis

        r = redis.Redis.from_url(REDIS)
        for key in r.scan_iter(f"{stream}*"):
            r.delete(key)
        queue.close()


def test_status_reports_progress_and_checkpoints(tiny_reward_model, tmp_path):
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    queue = open_queue(url)
    queue.publish(comparisons(24, "st"))
    port = free_port()
    config = tmp_path / "trainer.yaml"
    config.write_text(
        json.dumps(
            {
                "queue": url,
                "work_dir": str(tmp_path / "work"),
                "reward_base_model": tiny_reward_model,
                "train_every": 12,
                "consume_batch": 4,
                "exit_when_idle_seconds": 3,
                "reward_max_steps": 2,
                "reward_batch_size": 4,
                "server": {"host": "127.0.0.1", "port": port, "metrics_port": -1},
            }
        )
    )
    proc = start_trainer(config, tmp_path / "log")
    seen = []
    try:
        while proc.poll() is None:
            try:
                s = status(port)
                seen.append(s)
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (tmp_path / "log").read_text()[-3000:]
    last = [s for s in seen if s.items_consumed == 24]
    assert last and last[-1].last_checkpoint.kind == "reward"
    assert last[-1].queue_url.startswith("sqlite:///")
    assert any(s.phase == trainer_pb2.TRAINER_PHASE_REWARD_MODEL for s in seen)
    assert len(json.loads((tmp_path / "work" / "state.json").read_text())["reward_checkpoints"]) == 2


def test_ppo_steps_with_the_reward_service_over_grpc(tiny_model, tiny_reward_model, tmp_path):
    """A few PPO steps scored by a `cai serve reward` process change the policy and log reward and KL."""
    from services.trainer.config import PolicyTrainingConfig
    from services.training.policy import optimize_policy
    from services.training.ppo_config import PPOConfig
    from tests.conftest import ServerProcess

    (tmp_path / "srv").mkdir()
    server = ServerProcess(["serve", "reward", "--model", tiny_reward_model], tmp_path / "srv")
    try:
        pt = PolicyTrainingConfig(
            enabled=True,
            algorithm="ppo",
            policy=tiny_model,
            ppo=PPOConfig(steps=3, batch_size=4, max_new_tokens=6, learning_rate=1e-3),
            reward_service=server.address,
        )
        out = optimize_policy(pt, tiny_model, tiny_model, Path(tiny_reward_model), tmp_path / "policy", seed=0)
    finally:
        server.stop()
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["history"]) == 3
    assert all("reward_mean" in h and "kl" in h for h in manifest["history"])
    before = load_file(Path(tiny_model) / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert max((after[k] - v).abs().max().item() for k, v in before.items() if k in after) > 0


def test_trains_on_the_labels_of_one_constitution_and_status_says_which(tiny_reward_model, tmp_path):
    """Labels of an older constitution stay in the data but the reward model trains on the newest
    hash's; the manifest and Trainer.Status name it; the short helpfulness share is reported and warned."""
    old, new = comparisons(12, "old"), comparisons(12, "new")
    for c in new:
        c["provenance"] = {**c["provenance"], "constitution_sha256": "b" * 64}
    helpful = [
        {
            **c,
            "id": f"help-{i}",
            "kind": "helpfulness",
            "p_a": 1.0,
            "provenance": {**c["provenance"], "constitution_sha256": ""},
        }
        for i, c in enumerate(comparisons(2, "h"))
    ]
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    queue = open_queue(url)
    queue.publish(old + new + helpful)
    port = free_port()
    config = tmp_path / "trainer.yaml"
    config.write_text(
        json.dumps(
            {
                "queue": url,
                "work_dir": str(tmp_path / "work"),
                "reward_base_model": tiny_reward_model,
                "train_every": 26,
                "consume_batch": 32,
                "exit_when_idle_seconds": 3,
                "reward_max_steps": 1,
                "reward_batch_size": 4,
                "eval_fraction": 0.0,
                "server": {"host": "127.0.0.1", "port": port, "metrics_port": -1},
            }
        )
    )
    proc = start_trainer(config, tmp_path / "log")
    seen = []
    try:
        while proc.poll() is None:
            try:
                seen.append(status(port))
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (tmp_path / "log").read_text()[-3000:]
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    manifest = json.loads(Path(state["reward_checkpoints"][-1], "manifest.json").read_text())
    assert manifest["constitution_sha256"] == "b" * 64 and manifest["constitution_sha256s"] == ["b" * 64]
    assert manifest["data"]["harmlessness"] == 12 and manifest["data"]["other_constitution_rows"] == 12
    assert len(read_rows(tmp_path / "work" / "data" / "comparisons.jsonl")) == 26  # the old labels stay durable
    last = [s for s in seen if s.last_checkpoint.kind == "reward"]
    assert last, (tmp_path / "log").read_text()[-3000:]
    assert last[-1].constitution_sha256 == "b" * 64 and last[-1].last_checkpoint.constitution_sha256 == "b" * 64
    assert last[-1].metrics["helpfulness_share"] == pytest.approx(2 / 14)
    assert "helpfulness share" in last[-1].warning and "below its target" in last[-1].warning
