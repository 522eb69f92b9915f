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
        cmd = [sys.executable, "-m", "services.cli", *args, "--host", "127.0.0.1", "--port", "0",
               "--metrics-port", "0", "--port-file", str(port_file)]
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


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
