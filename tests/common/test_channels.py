"""Client channels (services/common/channels.py) against real server processes: one client dialing
two replicas spreads its calls over both (round_robin), keeps working when one replica dies
(retry of UNAVAILABLE), and every address field accepts gRPC target syntax."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from services.api.cai.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from services.common.channels import TargetError, open_aio_channel, open_channel, replica_addresses
from tests.conftest import REPO, ServerProcess, metric, scrape

CALLS = 40


def _request():
    prompt = common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content="How do I boil an egg?")])
    return reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt=prompt, answer="Simmer it for nine minutes.")])


def _scores(server: ServerProcess) -> float:
    return metric(scrape(server.metrics_port), "cai_grpc_requests_total", service="cai.v1.Reward", method="Score")


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> str:
    from services.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("rm") / "rm", reward=True, seed=0))


@pytest.fixture(scope="module")
def replicas(reward_model, tmp_path_factory):
    """Two `cai serve reward` processes on the tiny reward model (started side by side)."""
    with ThreadPoolExecutor(2) as pool:
        servers = list(
            pool.map(
                lambda i: ServerProcess(
                    ["serve", "reward", "--model", reward_model], tmp_path_factory.mktemp(f"replica{i}")
                ),
                range(2),
            )
        )
    yield servers
    for s in servers:
        s.stop()


def test_two_replicas_each_take_a_fair_share_of_one_clients_calls(replicas):
    target = f"ipv4:127.0.0.1:{replicas[0].port},127.0.0.1:{replicas[1].port}"
    before = [_scores(s) for s in replicas]
    with open_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = reward_pb2_grpc.RewardStub(channel)
        for _ in range(CALLS):
            stub.Score(_request(), timeout=30)
    taken = [_scores(s) - b for s, b in zip(replicas, before)]
    shares = [t / CALLS for t in taken]
    print(f"\nshare of {CALLS} calls per replica: {shares}")
    assert sum(taken) == CALLS
    assert all(0.4 <= share <= 0.6 for share in shares), shares


async def test_an_asyncio_client_with_calls_in_flight_spreads_them_too(replicas):
    import asyncio

    target = f"ipv4:127.0.0.1:{replicas[0].port},127.0.0.1:{replicas[1].port}"
    before = [_scores(s) for s in replicas]
    async with open_aio_channel(target) as channel:
        await channel.channel_ready()
        stub = reward_pb2_grpc.RewardStub(channel)
        await stub.Score(_request(), timeout=30)  # both connections up before the timed burst
        await asyncio.gather(*(stub.Score(_request(), timeout=30) for _ in range(CALLS - 1)))
    taken = [_scores(s) - b for s, b in zip(replicas, before)]
    assert sum(taken) == CALLS and min(taken) >= 0.3 * CALLS, taken


def test_every_address_takes_grpc_target_syntax(replicas):
    port = replicas[0].port
    for target in (f"127.0.0.1:{port}", f"localhost:{port}", f"dns:///127.0.0.1:{port}", f"ipv4:127.0.0.1:{port}"):
        with open_channel(target) as channel:
            assert reward_pb2_grpc.RewardStub(channel).Score(_request(), timeout=30).scores, target


def test_address_fields_of_the_configs_accept_grpc_targets():
    from services.config import build_config
    from services.pipeline.label import LabelConfig
    from services.trainer.config import TrainerConfig

    targets = {"generation": "dns:///generation-headless.cai.svc:50051", "judge": "ipv4:127.0.0.1:5001,127.0.0.1:5002"}
    label = build_config(LabelConfig, {**targets, "queue": "sqlite:///q.db"}, "label.yaml")
    assert (label.generation, label.judge) == (targets["generation"], targets["judge"])
    trainer = build_config(
        TrainerConfig,
        {"queue": "sqlite:///q.db", "work_dir": "/tmp/w", "reward_service": targets["judge"]},
        "trainer.yaml",
    )
    assert trainer.reward_service == targets["judge"]


def test_calls_still_succeed_with_one_replica_killed(reward_model, replicas, tmp_path):
    """Killed (SIGKILL) while calls are in flight: none fails, the survivor takes them all."""
    import threading

    # A third replica of our own to kill (the module's two stay up for the other tests).
    doomed = ServerProcess(["serve", "reward", "--model", reward_model], tmp_path)
    survivor = replicas[0]
    target = f"ipv4:127.0.0.1:{survivor.port},127.0.0.1:{doomed.port}"
    errors, done = [], []
    try:
        with open_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = reward_pb2_grpc.RewardStub(channel)
            stop = threading.Event()

            def hammer():
                while not stop.is_set():
                    try:
                        done.append(bool(stub.Score(_request(), timeout=30).scores))
                    except grpc.RpcError as exc:
                        errors.append(f"{exc.code().name}: {exc.details()}")

            threads = [threading.Thread(target=hammer) for _ in range(4)]
            for t in threads:
                t.start()
            while len(done) < 20:
                time.sleep(0.05)
            assert _scores(doomed) > 0  # it was taking calls
            doomed.proc.send_signal(signal.SIGKILL)
            doomed.proc.wait(30)
            at_kill = len(done)
            while len(done) < at_kill + CALLS and not errors:
                time.sleep(0.05)
            stop.set()
            for t in threads:
                t.join()
            before = _scores(survivor)
            for _ in range(CALLS):
                assert stub.Score(_request(), timeout=30).scores
            assert _scores(survivor) - before == CALLS
        assert errors == [] and all(done)
    finally:
        doomed.stop()


def test_each_replica_of_a_target_can_be_called_on_its_own(replicas):
    """``replica_addresses`` splits a target into its replicas (LoadCheckpoint must reach all)."""
    target = f"ipv4:127.0.0.1:{replicas[0].port},127.0.0.1:{replicas[1].port}"
    pairs = replica_addresses(target)
    assert pairs == [(f"ipv4:127.0.0.1:{s.port}", "") for s in replicas]
    before = [_scores(s) for s in replicas]
    for address, name in pairs:
        with open_channel(address, name) as channel:
            reward_pb2_grpc.RewardStub(channel).Score(_request(), timeout=30)
    assert [_scores(s) - b for s, b in zip(replicas, before)] == [1, 1]
    assert (f"ipv4:127.0.0.1:{replicas[0].port}", "localhost") in replica_addresses(
        f"dns:///localhost:{replicas[0].port}"
    )
    with pytest.raises(TargetError, match="'judge': expected host:port"):
        replica_addresses("judge")


def test_keepalive_pings_are_accepted_by_our_servers():
    """The clients' ping interval is one the servers permit (else GOAWAY too_many_pings)."""
    from services.common import channels
    from services.common.server import KEEPALIVE_SERVER_OPTIONS

    server = dict(KEEPALIVE_SERVER_OPTIONS)
    client = dict(channels.channel_options())
    assert server["grpc.keepalive_permit_without_calls"] == 1 and client["grpc.keepalive_permit_without_calls"] == 1
    assert client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
    config = json.loads(client["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_every_client_dials_through_channels():
    """No client in services/ or bench/ opens a channel of its own (it would miss the service
    config and TLS)."""
    out = subprocess.run(
        ["git", "grep", "--untracked", "-n", "-E", r"(insecure|secure)_channel\(", "--", "services", "bench"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout
    offenders = [
        line
        for line in out.splitlines()
        if not line.startswith(("services/common/channels.py", "services/common/probe.py"))
        and "services/k8s/cli.py" not in line
    ]  # the exec probe (services/common/probe.py, once in k8s/cli.py): the server's own files
    assert offenders == [], offenders
