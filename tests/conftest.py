"""Shared fixtures: tiny models built once per session, and real servers on loopback.

Expensive things are session-scoped: one tiny model folder, one generation server process (vLLM
on the tiny model), one in-process engine pair for the engine tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from services.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


@pytest.fixture(scope="session")
def tiny_model_b(tmp_path_factory) -> str:
    """A second tiny policy (other weights), to load as a new checkpoint."""
    from services.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-b", seed=1))


class ServerProcess:
    """A ``cai serve ...`` subprocess on loopback, with the ports it bound."""

    def __init__(self, args: list[str], workdir: Path, timeout: float = 300.0):
        port_file = workdir / "ports.json"
        self.log_path = workdir / "server.log"
        self.log = open(self.log_path, "w")
        cmd = [
            sys.executable,
            "-m",
            "services.cli",
            *args,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--port-file",
            str(port_file),
        ]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while not port_file.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                self.proc.kill()
                raise RuntimeError(f"server did not start: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        ports = json.loads(port_file.read_text())
        self.port = ports["port"]
        self.metrics_port = ports["metrics_port"]
        self.address = f"127.0.0.1:{self.port}"

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def _policy_service(name: str, tiny_model: str, factory):
    """A `cai serve NAME` process on vLLM with the tiny model (and the default constitution)."""
    return ServerProcess(["serve", name, "--model", tiny_model, "--engine", "vllm"], factory.mktemp(name))


@pytest.fixture(scope="session")
def generation_server(tiny_model, tmp_path_factory):
    server = _policy_service("generation", tiny_model, tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def critique_server(tiny_model, tmp_path_factory):
    server = _policy_service("critique", tiny_model, tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def judge_server(tiny_model, tmp_path_factory):
    server = _policy_service("judge", tiny_model, tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def generation_channel(generation_server):
    with grpc.insecure_channel(generation_server.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel


def scrape(port: int) -> dict[str, float]:
    """Reads a Prometheus endpoint into {'name{labels}': value}."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in values.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def metric_reaches(port: int, target: float, name: str, deadline_s: float = 10.0, **labels: str) -> float:
    """``metric`` of ``name`` scraped until it reaches ``target`` or ``deadline_s`` passes; the last
    value. A server counts a call when its handler ends, which may be just after the client has
    the status, so a scrape right after a call can miss it."""
    import time

    give_up = time.monotonic() + deadline_s
    while True:
        value = metric(scrape(port), name, **labels)
        if value >= target or time.monotonic() > give_up:
            return value
        time.sleep(0.05)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- small, fast services on the transformers engine (hostile-input and fuzz tests) ----------

FAST_LIMITS = {
    "generation": "limits: {default_max_tokens: 8, max_new_tokens: 16}\n",
    "critique": (
        "limits: {max_batch_items: 8, max_n: 1, default_max_tokens: 8, max_new_tokens: 16}\n"
        "default_rounds: 1\nmax_rounds: 2\ncritique_max_tokens: 8\nrevision_max_tokens: 8\n"
    ),
    "judge": "limits: {max_batch_items: 16, max_n: 1, default_max_tokens: 8, max_new_tokens: 16}\ncot_max_tokens: 8\n",
    "reward": "limits: {max_batch_items: 64}\n",
}
"""Deployed configs with small token limits, so requests that pass validation finish fast."""


def fast_service(name: str, model: str, factory, *extra: str) -> ServerProcess:
    """`cai serve NAME` on the transformers engine with ``FAST_LIMITS`` (a real config file)."""
    workdir = factory.mktemp(f"{name}-fast")
    config = workdir / f"{name}.yaml"
    config.write_text(FAST_LIMITS.get(name, ""))
    args = ["serve", name, "--model", model, "--config", str(config), *extra]
    if name in ("generation", "critique", "judge"):
        args += ["--engine", "transformers"]
    return ServerProcess(args, workdir)


@pytest.fixture(scope="session")
def tiny_reward_model_path(tmp_path_factory) -> str:
    from services.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-rm", reward=True))


@pytest.fixture(scope="session")
def fast_servers(tiny_model, tiny_reward_model_path, tmp_path_factory):
    """One process per service on tiny models (generation, critique, judge on transformers;
    reward on a tiny reward model; trainer on a SQLite queue), started together, stopped at the end."""
    import concurrent.futures

    queue = tmp_path_factory.mktemp("fast-queue") / "q.db"
    plan = {
        "generation": (tiny_model,),
        "critique": (tiny_model,),
        "judge": (tiny_model,),
        "reward": (tiny_reward_model_path,),
        "trainer": (
            tiny_reward_model_path,
            "--queue",
            f"sqlite:///{queue}",
            "--work-dir",
            str(tmp_path_factory.mktemp("fast-trainer")),
        ),
    }
    with concurrent.futures.ThreadPoolExecutor(len(plan)) as pool:
        futures = {
            name: pool.submit(fast_service, name, args[0], tmp_path_factory, *args[1:]) for name, args in plan.items()
        }
        servers = {}
        errors = []
        for name, f in futures.items():
            try:
                servers[name] = f.result()
            except Exception as exc:
                errors.append(f"{name}: {exc}")
    if errors:
        for s in servers.values():
            s.stop()
        raise RuntimeError("; ".join(errors))
    yield servers
    for s in servers.values():
        s.stop()
