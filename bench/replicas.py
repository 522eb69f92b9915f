"""Replicas share the load: one client (services/common/channels.py, round_robin) against one
reward-service replica and against two, same run.

Two ``cai serve reward`` processes on a tiny reward model, each limited to one CPU thread
(``OMP_NUM_THREADS=1``: a replica is a pod with its own fixed resources). One asyncio client keeps
``--in-flight`` Score calls of ``--items`` answers each in flight and makes ``--calls`` calls, to
``127.0.0.1:P1`` (one replica) and to ``ipv4:127.0.0.1:P1,127.0.0.1:P2`` (two), alternating, best
of ``--repeats``. Reports calls/s for each, the ratio two/one, and the share of the two-replica
calls each replica served (from its ``cai_grpc_requests_total``). The ratio needs cores to spare
(two replicas use two); on a busy machine it says more about the neighbours than about gRPC, so
the 1-minute load average is reported beside it.

Run: ``.venv/bin/python -m bench.replicas [--calls 400] [--in-flight 8] [--items 8] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from bench._common import Timer, report, start_server, wait_ports
from services.api.cai.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from services.common.channels import open_aio_channel

REPO = Path(__file__).resolve().parents[1]


def start_replica(model: str, workdir: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return start_server(["serve", "reward", "--model", model, "--metrics-port", "0"], workdir, env=env)


def score_calls(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("cai_grpc_requests_total{") and 'method="Score"' in line and 'code="OK"' in line:
            total += float(line.rpartition(" ")[2])
    return total


def request(items: int) -> reward_pb2.ScoreRequest:
    prompt = common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content="How do I cook rice?")])
    return reward_pb2.ScoreRequest(
        items=[
            reward_pb2.ScoreItem(prompt=prompt, answer=f"Rinse it, then simmer it covered, variant {i}.")
            for i in range(items)
        ]
    )


async def drive(target: str, calls: int, in_flight: int, items: int) -> float:
    """Seconds for ``calls`` Score calls with ``in_flight`` at once."""
    async with open_aio_channel(target) as channel:
        await channel.channel_ready()
        stub = reward_pb2_grpc.RewardStub(channel)
        await asyncio.gather(*(stub.Score(request(items), timeout=120) for _ in range(in_flight)))  # warm up
        todo = iter(range(calls))

        async def worker():
            for _ in todo:
                await stub.Score(request(items), timeout=120)

        with Timer() as t:
            await asyncio.gather(*(worker() for _ in range(in_flight)))
    return t.seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--items", type=int, default=8, help="answers per Score call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from services.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        tmp = Path(tmp)
        model = str(build_tiny_model(tmp / "rm", reward=True, seed=0))
        procs = []
        try:
            for i in range(2):
                (tmp / f"r{i}").mkdir()
                procs.append(start_replica(model, tmp / f"r{i}"))
            ports = [wait_ports(p) for p in procs]
            one = f"127.0.0.1:{ports[0]['port']}"
            two = f"ipv4:127.0.0.1:{ports[0]['port']},127.0.0.1:{ports[1]['port']}"
            best = {"one": float("inf"), "two": float("inf")}
            shares = []
            for _ in range(args.repeats):
                for name, target in (("one", one), ("two", two)):
                    before = [score_calls(p["metrics_port"]) for p in ports]
                    seconds = asyncio.run(drive(target, args.calls, args.in_flight, args.items))
                    best[name] = min(best[name], seconds)
                    if name == "two":
                        taken = [score_calls(p["metrics_port"]) - b for p, b in zip(ports, before)]
                        shares.append([round(t / sum(taken), 3) for t in taken])
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
    one_rate, two_rate = args.calls / best["one"], args.calls / best["two"]
    report(
        "replicas",
        {
            "calls": args.calls,
            "in_flight": args.in_flight,
            "items_per_call": args.items,
            "cpu_cores": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 1),
            "calls_per_s_one_replica": round(one_rate, 2),
            "calls_per_s_two_replicas": round(two_rate, 2),
            "ratio_two_over_one": round(two_rate / one_rate, 3),
            "share_per_replica_two": shares,
        },
    )


if __name__ == "__main__":
    main()
