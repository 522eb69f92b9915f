"""`cai label` throughput end to end: the pipelined loop (``in_flight`` batches at once) vs the
sequential one (``in_flight=1``), and end-to-end labels/s ÷ the judge's own labels/s on the same
comparisons.

One run, same services for every pass: a generation and a judge service started once in-process on
loopback (gRPC, as in the embedded default), each on its own vLLM engine (``--shared-engine``: one
engine for both, the embedded default when the judge model is the policy), on the ~25M-parameter
local model (``--model smollm2-135m-instruct`` for the packaged SmolLM2). Every timed pass labels the
same prompts with its own seed (fresh answers, so no pass profits from another's judged texts); a
warm-up pass first puts the prompts in the prefix cache for all. Passes alternate sequential /
pipelined, ``--repeats`` times.

The judge's own labels/s: the comparisons a pipelined pass published, sent straight to the judge
service in requests of the same size as `cai label`'s Compare requests (one at a time, and
``in_flight`` at once), under another seed (other principles and few-shot examples, so not served
from the cache of the labeling pass). Run: ``.venv/bin/python -m bench.label``.

``--judge-replicas 2`` measures instead what a second judge replica buys: the judge as deployed,
``cai serve judge`` processes, each bound to its own core (``VLLM_CPU_OMP_THREADS_BIND``, a pod
with fixed resources), and `cai label` (pipelined, generation embedded) addressing one replica or
all of them (``ipv4:A,B``, round robin), alternating, ``--repeats`` times. Reports labels/s of
each, the ratio, and each replica's share of the Compare calls (from its ``/metrics``). On a
2-core machine the generation engine shares the replicas' cores, so the ratio says how much a
second replica gains there, not on a cluster. Written to ``label-judge-replicas-*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from bench._common import Timer, report, small_model
from services.api.cai.v1 import common_pb2, judge_pb2, judge_pb2_grpc
from services.common.channels import open_aio_channel
from services.engines.config import EngineConfig
from services.pipeline.embedded import EmbeddedSpec, embedded_services
from services.pipeline.label import LabelConfig, _label, pair_indices
from services.queue import open_queue


def _harmlessness(url: str) -> list[dict]:
    queue = open_queue(url)
    items = []
    try:
        while deliveries := queue.consume("bench", "c1", count=1000):
            items += [d.item for d in deliveries]
            queue.ack("bench", deliveries)
    finally:
        queue.close()
    return [i for i in items if i["kind"] == "harmlessness"]


async def _judge_alone(
    address: str, items: list[dict], per_request: int, concurrency: int, swap: bool, seed: int
) -> float:
    """Seconds the judge service takes to label ``items`` in requests of ``per_request``."""
    requests = [
        judge_pb2.CompareRequest(
            seed=seed,
            swap_debias=swap,
            mode=judge_pb2.JUDGE_MODE_LOGPROB,
            comparisons=[
                judge_pb2.Comparison(
                    prompt=common_pb2.Conversation(
                        id=i["prompt_id"], messages=[common_pb2.ChatMessage(**m) for m in i["prompt"]]
                    ),
                    answer_a=i["answer_a"],
                    answer_b=i["answer_b"],
                    id=i["id"],
                )
                for i in items[k : k + per_request]
            ],
        )
        for k in range(0, len(items), per_request)
    ]
    async with open_aio_channel(address) as channel:
        stub = judge_pb2_grpc.JudgeStub(channel)
        pending = iter(requests)

        async def worker():
            for request in pending:
                await stub.Compare(request, timeout=3600)

        with Timer() as t:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return t.seconds


async def _label_pass(args, tmp: Path, name: str, addresses: dict, **config) -> dict:
    """One `cai label` pass over ``args.prompts`` into its own SQLite queue ``tmp/NAME.db``;
    ``config``: the LabelConfig fields the pass sets (seed, in_flight)."""
    url = f"sqlite:///{tmp / f'{name}.db'}"
    queue = open_queue(url)
    try:
        cfg = LabelConfig(
            queue=url,
            limit=args.prompts,
            batch_size=args.batch_size,
            max_tokens=args.max_tokens,
            helpfulness_pairs="",
            swap_debias=not args.no_swap,
            **config,
        )
        return await _label(cfg, queue, addresses, progress=False)
    finally:
        queue.close()


async def main(args) -> None:
    import os

    load_at_start = os.getloadavg()[0]
    model = args.model or small_model()
    policy = EngineConfig(model=model, kind=args.engine)
    judge = None if args.shared_engine else EngineConfig(model=model, kind=args.engine, checkpoint_id="judge")
    spec = EmbeddedSpec(policy=policy, judge=judge)
    tmp = Path(tempfile.mkdtemp(prefix="bench-label-"))
    seconds = {1: 0.0, args.in_flight: 0.0}
    labels = {1: 0, args.in_flight: 0}
    stages = {1: {}, args.in_flight: {}}
    async with embedded_services(spec, ("generation", "judge")) as addresses:

        async def label(name: str, in_flight: int, seed: int) -> dict:
            return await _label_pass(args, tmp, name, addresses, in_flight=in_flight, seed=seed)

        await label("warm-up", args.in_flight, seed=1000)
        for r in range(args.repeats):
            for in_flight in (1, args.in_flight):
                stats = await label(f"pass-{r}-{in_flight}", in_flight, seed=1 + 2 * r + (in_flight > 1))
                seconds[in_flight] += stats["seconds"]
                labels[in_flight] += stats["comparisons_published"]
                for k in ("setup_seconds", "done_check_seconds", "generate_seconds", "compare_seconds"):
                    stages[in_flight][k] = stages[in_flight].get(k, 0.0) + stats[k]
        items = _harmlessness(f"sqlite:///{tmp / f'pass-{args.repeats - 1}-{args.in_flight}.db'}")
        per_request = args.batch_size * len(pair_indices(2, "adjacent"))
        judge_one = await _judge_alone(addresses["judge"], items, per_request, 1, not args.no_swap, seed=7777)
        judge_many = await _judge_alone(
            addresses["judge"], items, per_request, args.in_flight, not args.no_swap, seed=8888
        )
    sequential = labels[1] / seconds[1]
    pipelined = labels[args.in_flight] / seconds[args.in_flight]
    judge_own = max(len(items) / judge_one, len(items) / judge_many)
    figures = {
        "model": args.model or "bench-small-25m",
        "engine": args.engine,
        "engines": "one shared" if args.shared_engine else "one per service",
        "prompts": args.prompts,
        "batch_size": args.batch_size,
        "max_tokens": args.max_tokens,
        "swap_debias": not args.no_swap,
        "repeats": args.repeats,
        "in_flight": args.in_flight,
        "sequential_labels_per_s": sequential,
        "pipelined_labels_per_s": pipelined,
        "ratio_pipelined_over_sequential": pipelined / sequential,
        "sequential_seconds": seconds[1],
        "pipelined_seconds": seconds[args.in_flight],
        "sequential_call_seconds": stages[1],
        "pipelined_call_seconds_summed_over_calls": stages[args.in_flight],
        "judge_alone_labels_per_s_one_request_at_a_time": len(items) / judge_one,
        "judge_alone_labels_per_s_in_flight": len(items) / judge_many,
        "ratio_label_end_to_end_over_judge_alone": pipelined / judge_own,
        "note": "end to end includes Generate, the judge probe, the done-check and publishing to SQLite; "
        "the machine's load is recorded beside the figures",
    }
    import os
    import platform

    import torch
    import vllm

    figures["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "load_average_1m_at_start_and_end": [load_at_start, os.getloadavg()[0]],
    }
    report(f"label-{args.engine}" + ("-" + Path(args.model).name if args.model else ""), figures)


def _compare_calls(metrics_port: int) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("cai_grpc_requests_total{") and 'method="Compare"' in line and 'code="OK"' in line
    )


async def judge_replicas(args) -> None:
    """`cai label` against one judge replica and against ``args.judge_replicas`` of them."""
    import os
    import signal

    from bench._common import start_server, wait_ports

    cores = os.cpu_count() or 1
    model = args.model or small_model()
    tmp = Path(tempfile.mkdtemp(prefix="bench-label-replicas-"))
    procs = []
    try:
        for r in range(args.judge_replicas):
            (tmp / f"judge{r}").mkdir()
            env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": str(r % cores)}
            cmd = ["serve", "judge", "--model", model, "--engine", args.engine, "--metrics-port", "0"]
            procs.append(start_server(cmd, tmp / f"judge{r}", env=env))
        ports = [await asyncio.to_thread(wait_ports, p) for p in procs]
        targets = {
            "one": f"127.0.0.1:{ports[0]['port']}",
            "all": "ipv4:" + ",".join(f"127.0.0.1:{p['port']}" for p in ports),
        }
        spec = EmbeddedSpec(policy=EngineConfig(model=model, kind=args.engine))
        seconds = {"one": 0.0, "all": 0.0}
        labels = {"one": 0, "all": 0}
        shares = []
        async with embedded_services(spec, ("generation",)) as addresses:

            async def label(name: str, judge: str, seed: int) -> dict:
                judged_by = {**addresses, "judge": judge}
                return await _label_pass(args, tmp, name, judged_by, in_flight=args.in_flight, seed=seed)

            await label("warm-up", targets["all"], seed=1000)  # every replica's few-shot prefix cached
            for r in range(args.repeats):
                for k, (name, target) in enumerate(targets.items()):
                    before = [_compare_calls(p["metrics_port"]) for p in ports]
                    stats = await label(f"pass-{r}-{name}", target, seed=1 + 2 * r + k)
                    seconds[name] += stats["seconds"]
                    labels[name] += stats["comparisons_published"]
                    if name == "all":
                        taken = [_compare_calls(p["metrics_port"]) - b for p, b in zip(ports, before)]
                        shares.append([round(t / max(sum(taken), 1), 3) for t in taken])
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            await asyncio.to_thread(p.wait, 60)
    one, many = labels["one"] / seconds["one"], labels["all"] / seconds["all"]
    figures = {
        "model": args.model or "bench-small-25m",
        "engine": args.engine,
        "judge_replicas": args.judge_replicas,
        "replica_cores": [r % cores for r in range(args.judge_replicas)],
        "prompts": args.prompts,
        "batch_size": args.batch_size,
        "in_flight": args.in_flight,
        "repeats": args.repeats,
        "labels_per_s_one_replica": one,
        "labels_per_s_all_replicas": many,
        "ratio_all_over_one": many / one,
        "compare_call_share_per_replica": shares,
        "note": "cai serve judge processes, each bound to one core; generation embedded in the bench "
        "process shares those cores; pipelined cai label (in_flight batches at once)",
        "load_average_1m_at_end": os.getloadavg()[0],
    }
    name = "label-judge-replicas" + ("-" + Path(args.model).name if args.model else "")
    report(name, figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model (default: the local ~25M bench model)")
    parser.add_argument("--engine", default="vllm", choices=["vllm", "transformers"])
    parser.add_argument("--shared-engine", action="store_true", help="one engine for generation and judge")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--no-swap", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--judge-replicas", type=int, default=1, help="N > 1: one judge replica vs N (cai serve judge processes)"
    )
    args = parser.parse_args()
    asyncio.run(judge_replicas(args) if args.judge_replicas > 1 else main(args))
