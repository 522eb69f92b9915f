"""The trainer's side of promotion (services/trainer/worker.py): every replica behind a target,
recorded only when all confirmed, retried until a replica that was down comes back; a lost Redis
connection retried and reported, not fatal; a failed work loop exits the process non-zero."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from services.api.cai.v1 import common_pb2, reward_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from services.queue import open_queue
from services.trainer.config import TrainerConfig
from services.trainer.worker import TrainerWorker, replica_addresses
from services.training.reward_config import RewardRunConfig
from tests.conftest import REPO, ServerProcess, metric, scrape
from tests.ports import free_port
from tests.trainer.test_trainer_service import comparisons

REDIS_PORT = 6379


@pytest.fixture(scope="module")
def base_reward_model(tmp_path_factory) -> str:
    from services.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "rm-base", reward=True))


def reward_replica(model: str, checkpoint_dir: Path, workdir: Path, port: int = 0) -> ServerProcess:
    """`cai serve reward` on loopback; on ``port`` when given (a replica that comes back there)."""
    workdir.mkdir(parents=True)
    args = ["serve", "reward", "--model", model, "--checkpoint-dir", str(checkpoint_dir)]
    if not port:
        return ServerProcess(args, workdir)
    # ServerProcess asks for a free port; this replica must come back on the one it had.
    server = ServerProcess.__new__(ServerProcess)
    server.log_path = workdir / "server.log"
    server.log = open(server.log_path, "w")
    port_file = workdir / "ports.json"
    server.proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            *args,
            "--host",
            "127.0.0.1",
            "--metrics-port",
            "0",
            "--port-file",
            str(port_file),
            "--port",
            str(port),
        ],
        cwd=REPO,
        stdout=server.log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 300
    while not port_file.exists():
        assert server.proc.poll() is None and time.time() < deadline, server.output()
        time.sleep(0.2)
    server.port, server.address = port, f"127.0.0.1:{port}"
    return server


def model_info(address: str) -> common_pb2.ModelInfo:
    with grpc.insecure_channel(address) as channel:
        return reward_pb2_grpc.RewardStub(channel).GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)


def test_replica_addresses_resolve_every_replica_of_a_target():
    assert replica_addresses("ipv4:127.0.0.1:5001,127.0.0.1:5002") == [("127.0.0.1:5001", ""), ("127.0.0.1:5002", "")]
    assert replica_addresses("dns:///localhost:5003") == replica_addresses("localhost:5003")
    assert ("127.0.0.1:5003", "localhost") in replica_addresses("dns:///localhost:5003")
    with pytest.raises(OSError):
        replica_addresses("no-such-host.invalid:5004")


def test_promotion_reaches_every_replica_is_recorded_only_when_all_confirmed_and_waits_for_a_replica_that_is_down(
    base_reward_model, tmp_path
):
    work = tmp_path / "work"
    checkpoints = work / "checkpoints"
    checkpoints.mkdir(parents=True)
    up = reward_replica(base_reward_model, checkpoints, tmp_path / "r1")
    down_port = free_port()  # the second replica is down while the trainer promotes
    back = None
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    queue = open_queue(url)
    queue.create_group("trainer")
    queue.publish(comparisons(8, "promo"))
    queue.close()
    worker = TrainerWorker(
        TrainerConfig(
            queue=url,
            work_dir=str(work),
            reward=RewardRunConfig(model=base_reward_model, max_steps=1, batch_size=4, eval_fraction=0.25),
            train_every=8,
            reward_service=f"ipv4:127.0.0.1:{up.port},127.0.0.1:{down_port}",
        )
    )
    worker.start()
    try:
        deadline = time.time() + 300
        pending_file = work / "promotions.json"
        while not (pending_file.exists() and json.loads(pending_file.read_text()).get("reward", {}).get("confirmed")):
            assert time.time() < deadline and not worker.finished.is_set(), worker.status()
            time.sleep(0.5)
        assert worker.status()["promotions_pending"]
        checkpoint = Path(worker.status()["last_checkpoint"])
        assert model_info(up.address).checkpoint_id == checkpoint.name  # the replica that is up has it
        state = json.loads((work / "state.json").read_text())
        assert "reward" not in state.get("promoted", {})  # not recorded: one replica has not confirmed
        pending = json.loads((work / "promotions.json").read_text())
        assert pending["reward"]["confirmed"] == [up.address]

        back = reward_replica(base_reward_model, checkpoints, tmp_path / "r2", port=down_port)
        assert model_info(back.address).checkpoint_id == checkpoint.name  # it restarted on the promoted record
        deadline = time.time() + 120
        while worker.status()["promotions_pending"]:  # the trainer retries with backoff and completes
            assert time.time() < deadline and not worker.finished.is_set(), worker.status()
            time.sleep(0.5)
        state = json.loads((work / "state.json").read_text())
        assert state["promoted"]["reward"]["path"] == str(checkpoint.resolve())
        assert sorted(state["promoted"]["reward"]["replicas"]) == sorted([up.address, back.address])
        assert json.loads((work / "promotions.json").read_text()) == {}
    finally:
        worker.stop()
        up.stop()
        if back is not None:
            back.stop()
    assert not worker.failed


class Proxy:
    """A TCP forwarder to Redis that can be cut (every connection dropped) and restored."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.start()

    def start(self):
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(16)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if listener is not self._listener:  # cut meanwhile
                client.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        listener, self._listener = self._listener, None
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        listener.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self._conns.clear()


def test_lost_redis_is_retried_with_backoff_reported_and_not_fatal(base_reward_model, tmp_path):
    stream = f"promotion-helper-{uuid.uuid4().hex[:8]}"
    proxy = Proxy(REDIS_PORT)
    url = f"redis://127.0.0.1:{proxy.port}/0?stream={stream}"
    direct = open_queue(f"redis://127.0.0.1:{REDIS_PORT}/0?stream={stream}")
    port = free_port()
    config = tmp_path / "trainer.yaml"
    config.write_text(
        json.dumps(
            {
                "queue": url,
                "work_dir": str(tmp_path / "work"),
                "reward_base_model": base_reward_model,
                "train_every": 1000,
                "consume_batch": 4,
                "server": {"host": "127.0.0.1", "port": port, "metrics_port": 0},
            }
        )
    )
    workdir = tmp_path / "svc"
    workdir.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            "serve",
            "trainer",
            "--config",
            str(config),
            "--port-file",
            str(workdir / "ports.json"),
        ],
        cwd=REPO,
        stdout=open(workdir / "log", "w"),
        stderr=subprocess.STDOUT,
    )
    try:

        def status() -> trainer_pb2.TrainerStatus:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                return trainer_pb2_grpc.TrainerStub(channel).Status(trainer_pb2.TrainerStatusRequest(), timeout=5)

        def wait(predicate, what: str, seconds: float = 120):
            deadline = time.time() + seconds
            while True:
                assert proc.poll() is None, (workdir / "log").read_text()[-3000:]
                try:
                    s = status()
                    if predicate(s):
                        return s
                except grpc.RpcError:
                    pass
                assert time.time() < deadline, f"{what}: {(workdir / 'log').read_text()[-3000:]}"
                time.sleep(0.3)

        direct.publish(comparisons(4, stream + "-a"))
        wait(lambda s: s.items_consumed == 4 and s.queue_connected, "consumed the first items")
        metrics_port = json.loads((workdir / "ports.json").read_text())["metrics_port"]
        proxy.cut()  # Redis goes away under the trainer
        s = wait(lambda s: not s.queue_connected, "reported the lost queue")
        time.sleep(2)  # a few retries against nothing: still down
        s = status()
        assert not s.queue_connected
        assert s.queue_error and s.phase != trainer_pb2.TRAINER_PHASE_FAILED
        values = scrape(metrics_port)
        assert metric(values, "cai_trainer_queue_up") == 0 and metric(values, "cai_trainer_queue_reconnects_total") >= 1
        direct.publish(comparisons(4, stream + "-b"))
        proxy.start()  # and comes back
        wait(lambda s: s.queue_connected and s.items_consumed == 8, "reconnected and consumed the rest")
        assert metric(scrape(metrics_port), "cai_trainer_queue_up") == 1
    finally:
        proc.terminate()
        proc.wait(60)
        if proxy._listener is not None:
            proxy.cut()
        client = getattr(direct, "_r", None)
        if client is not None:
            for key in client.scan_iter(f"{stream}*"):
                client.delete(key)
        direct.close()


def test_a_failed_work_loop_exits_non_zero(tmp_path):
    """A worker failure (here: no work folder can be made) ends `cai serve trainer` with status 1."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = tmp_path / "trainer.yaml"
    config.write_text(
        json.dumps(
            {
                "queue": f"sqlite:///{tmp_path / 'q.db'}",
                "work_dir": str(blocker / "work"),
                "server": {"host": "127.0.0.1", "port": 0, "metrics_port": -1},
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", "trainer", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
