"""Promotion as deployed: checkpoints from the trainer's checkpoint directory pushed into a running
generation service (vLLM, the serving default: a new engine started off the event loop, then
swapped in) and a reward service (weights reloaded in place) under load, over real sockets."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api.cai.v1 import common_pb2, generation_pb2, generation_pb2_grpc, reward_pb2, reward_pb2_grpc
from tests.conftest import ServerProcess, metric, scrape

PROMPT = common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content="Name a colour.")])
GENERATE = generation_pb2.GenerateRequest(
    prompts=[PROMPT], sampling=common_pb2.SamplingParams(max_tokens=4, temperature=0)
)
SCORE = reward_pb2.ScoreRequest(
    items=[
        reward_pb2.ScoreItem(prompt=PROMPT, answer="Blue."),
        reward_pb2.ScoreItem(prompt=PROMPT, answer="I will not say."),
    ]
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A checkpoint directory as the trainer writes it, and a model folder outside it."""
    from services.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("promotion")
    ckpt = root / "checkpoints"
    for name, kwargs in {
        "policy-a": {},
        "policy-b": {"seed": 1},
        "reward-a": {"reward": True},
        "reward-b": {"reward": True, "seed": 1},
    }.items():
        build_tiny_model(ckpt / name, **kwargs)
    outside = build_tiny_model(root / "elsewhere" / "policy-x", seed=2)
    (ckpt / "sneaky").symlink_to(outside, target_is_directory=True)
    return ckpt, outside


def _generation(ckpt: Path, workdir: Path) -> ServerProcess:
    workdir.mkdir(parents=True)
    return ServerProcess(
        ["serve", "generation", "--engine", "vllm", "--model", str(ckpt / "policy-a"), "--checkpoint-dir", str(ckpt)],
        workdir,
    )


def _reward(ckpt: Path, workdir: Path) -> ServerProcess:
    workdir.mkdir(parents=True)
    return ServerProcess(["serve", "reward", "--model", str(ckpt / "reward-a"), "--checkpoint-dir", str(ckpt)], workdir)


class Load:
    """Calls ``call`` in a loop on a thread (and health every 100 ms) until stopped; records the
    slowest answer and every failure."""

    def __init__(self, name: str, call, every: float = 0.0):
        self.name, self.call, self.every = name, call, every
        self.failures: list[str] = []
        self.slowest = 0.0
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                self.call()
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            self.slowest = max(self.slowest, time.perf_counter() - started)
            self.count += 1
            time.sleep(self.every)

    def stop(self):
        self._stop.set()
        self._thread.join(60)


def test_promotion_under_load_is_served_refused_outside_and_remembered(checkpoints, tmp_path):
    ckpt, outside = checkpoints
    gen = _generation(ckpt, tmp_path / "gen")
    rew = _reward(ckpt, tmp_path / "rew")
    try:
        gch, rch = grpc.insecure_channel(gen.address), grpc.insecure_channel(rew.address)
        g, r = generation_pb2_grpc.GenerationStub(gch), reward_pb2_grpc.RewardStub(rch)
        before_text = g.Generate(GENERATE, timeout=60).completions[0].samples[0].text
        before_scores = list(r.Score(SCORE, timeout=60).scores)

        loads = [
            Load(
                "generation health",
                lambda: health_pb2_grpc.HealthStub(gch).Check(health_pb2.HealthCheckRequest(), timeout=5),
                0.1,
            ),
            Load(
                "reward health",
                lambda: health_pb2_grpc.HealthStub(rch).Check(health_pb2.HealthCheckRequest(), timeout=5),
                0.1,
            ),
            Load("Generate", lambda: g.Generate(GENERATE, timeout=30), 0.1),
            Load("Score", lambda: r.Score(SCORE, timeout=30), 0.1),
        ]
        try:
            loaded_g = g.LoadCheckpoint(
                common_pb2.LoadCheckpointRequest(path=str(ckpt / "policy-b"), checkpoint_id="policy-step-2"),
                timeout=300,
            )
            loaded_r = r.LoadCheckpoint(
                common_pb2.LoadCheckpointRequest(path="reward-b"), timeout=300
            )  # relative: under the directory
        finally:
            for load in loads:
                load.stop()
        assert (loaded_g.checkpoint_id, loaded_g.previous_checkpoint_id) == ("policy-step-2", "policy-a")
        assert (loaded_r.checkpoint_id, loaded_r.previous_checkpoint_id) == ("reward-b", "reward-a")
        report = {load.name: (load.count, round(load.slowest, 3), load.failures[:3]) for load in loads}
        print(
            "promotion under load (calls, slowest s, failures):",
            report,
            "load s:",
            loaded_g.load_seconds,
            loaded_r.load_seconds,
        )
        # The event loop never waited on the load: every health check met the probes' own deadline
        # (timeoutSeconds: 5 in k8s/base), so no liveness probe would have failed, and Generate and
        # Score kept answering while the new model loaded. How fast is bench/promotion.py's question.
        assert all(not load.failures for load in loads), report
        assert all(load.count >= 3 for load in loads), report

        after_text = g.Generate(GENERATE, timeout=60).completions[0].samples[0].text
        after_scores = list(r.Score(SCORE, timeout=60).scores)
        assert after_text != before_text and after_scores != pytest.approx(before_scores)
        info = g.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
        assert (info.checkpoint_id, info.promoted) == ("policy-step-2", True)
        assert metric(scrape(gen.metrics_port), "cai_model_info", checkpoint="policy-step-2") == 1
        assert metric(scrape(gen.metrics_port), "cai_model_info", checkpoint="policy-a") == 0
        record = json.loads((ckpt / "promoted" / "generation.json").read_text())
        assert record["path"] == str((ckpt / "policy-b").resolve()) and record["checkpoint_id"] == "policy-step-2"

        # Refused: outside the directory (absolute, `..`, a symlink), a model of the wrong kind.
        for path in (str(outside), str(ckpt / ".." / "elsewhere" / "policy-x"), str(ckpt / "sneaky")):
            with pytest.raises(grpc.RpcError) as err:
                g.LoadCheckpoint(common_pb2.LoadCheckpointRequest(path=path), timeout=60)
            assert (
                err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                and "outside the checkpoint directory" in err.value.details()
            )
        with pytest.raises(grpc.RpcError) as err:
            g.LoadCheckpoint(common_pb2.LoadCheckpointRequest(path=str(ckpt / "reward-a")), timeout=60)
        assert (
            err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            and "ForSequenceClassification" in err.value.details()
        )
        with pytest.raises(grpc.RpcError) as err:
            r.LoadCheckpoint(common_pb2.LoadCheckpointRequest(path=str(ckpt / "policy-a")), timeout=60)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "ForCausalLM" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            g.LoadCheckpoint(common_pb2.LoadCheckpointRequest(path="policy-c"), timeout=60)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert g.Generate(GENERATE, timeout=60).completions[0].samples[0].text == after_text  # still the promoted one
        assert list(r.Score(SCORE, timeout=60).scores) == pytest.approx(after_scores)
        gch.close()
        rch.close()

        # Restarted with the same flags: a fresh engine on the promoted checkpoint, same outputs.
        assert gen.stop() == 0 and rew.stop() == 0
        gen, rew = _generation(ckpt, tmp_path / "gen2"), _reward(ckpt, tmp_path / "rew2")
        with grpc.insecure_channel(gen.address) as gch, grpc.insecure_channel(rew.address) as rch:
            g, r = generation_pb2_grpc.GenerationStub(gch), reward_pb2_grpc.RewardStub(rch)
            info = g.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
            assert (info.checkpoint_id, info.promoted) == ("policy-step-2", True)
            assert r.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10).checkpoint_id == "reward-b"
            assert g.Generate(GENERATE, timeout=60).completions[0].samples[0].text == after_text
            assert list(r.Score(SCORE, timeout=60).scores) == pytest.approx(after_scores, abs=1e-5)
        assert "serving the promoted checkpoint policy-step-2" in gen.output()
    finally:
        gen.stop()
        rew.stop()


def test_without_checkpoint_dir_a_public_server_refuses_load_checkpoint(checkpoints, tmp_path):
    """No --checkpoint-dir and listening beyond loopback: LoadCheckpoint is off, the error names the flag."""

    from services.common.served_model import CheckpointAccess, check_checkpoint
    from services.errors import FailedPrecondition

    ckpt, _ = checkpoints
    with pytest.raises(FailedPrecondition, match="--checkpoint-dir"):
        check_checkpoint(CheckpointAccess("generation", "causal-lm", loopback_only=False), str(ckpt / "policy-a"))
    assert check_checkpoint(CheckpointAccess("generation", "causal-lm", loopback_only=True), str(ckpt / "policy-a"))


def test_with_mutual_tls_only_allowed_clients_may_load_a_checkpoint(checkpoints, tmp_path, monkeypatch):
    from services.common import channels
    from services.common.channels import open_channel
    from tests.common.certs import CA

    ckpt, _ = checkpoints
    ca = CA(tmp_path / "ca")
    cert, key = ca.issue("localhost", ips=("127.0.0.1",), server=True)
    config = tmp_path / "reward.yaml"
    config.write_text(
        json.dumps(
            {
                "model": str(ckpt / "reward-a"),
                "checkpoint_dir": str(ckpt / "mtls"),
                "server": {
                    "tls_cert_file": str(cert),
                    "tls_key_file": str(key),
                    "tls_client_ca_file": str(ca.ca_file),
                    "tls_allowed_client_names": ["trainer"],
                },
            }
        )
    )
    (ckpt / "mtls").mkdir()
    (tmp_path / "svc").mkdir()
    server = ServerProcess(["serve", "reward", "--config", str(config)], tmp_path / "svc")
    try:
        monkeypatch.setenv(channels.TLS_CA_ENV, str(ca.ca_file))

        def load(client: str, path: str):
            cert, key = ca.issue(client, client=True)
            monkeypatch.setenv(channels.TLS_CERT_ENV, str(cert))
            monkeypatch.setenv(channels.TLS_KEY_ENV, str(key))
            with open_channel(server.address) as channel:
                return reward_pb2_grpc.RewardStub(channel).LoadCheckpoint(
                    common_pb2.LoadCheckpointRequest(path=path), timeout=60
                )

        with pytest.raises(grpc.RpcError) as err:
            load("label-job", str(ckpt / "mtls" / "anything"))
        assert (
            err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "tls_allowed_client_names" in err.value.details()
        )
        with pytest.raises(grpc.RpcError) as err:  # allowed client, path outside: still refused
            load("trainer", str(ckpt / "reward-b"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "outside" in err.value.details()
        import shutil

        shutil.copytree(ckpt / "reward-b", ckpt / "mtls" / "reward-b")
        assert load("trainer", str(ckpt / "mtls" / "reward-b")).checkpoint_id == "reward-b"
    finally:
        server.stop()
