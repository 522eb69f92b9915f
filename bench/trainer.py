"""Trainer throughput and PPO step time, reward from the reward service over gRPC vs in-process.

(1) Comparisons per second from the queue into durable training data (consume, fsync, ack), and
through reward-model training (soft-label loss), SQLite queue, tiny reward model.
(2) PPO step rate with rewards scored by ``cai.v1.Reward`` (its own process on loopback, as
deployed) vs the same reward model in-process, the trainers stepping in turn in one run; the
gRPC call overlapped with the value/reference pass (``overlap_reward=True``, the default on a GPU)
and awaited before it (``False``, the default on a CPU). Ratio = gRPC step rate / in-process step
rate (1.0 = the RPC costs nothing), on the tiny and the ~25M model.
Run: ``.venv/bin/python -m bench.trainer``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench._common import Timer, report, start_server, wait_ports


def comparisons(n: int) -> list[dict]:
    return [
        {
            "id": f"b-{i}",
            "kind": "harmlessness",
            "prompt": [{"role": "user", "content": f"question {i}"}],
            "answer_a": f"A safe, helpful answer {i}.",
            "answer_b": f"A harmful answer {i}.",
            "p_a": 0.8,
            "principle_id": "judge-less-harmful",
            "provenance": {
                "constitution_sha256": "0" * 64,
                "judge_model": "bench",
                "policy_checkpoint": "bench",
                "created_at": "2026-11-24T00:00:00Z",
            },
        }
        for i in range(n)
    ]


def _serve_reward(model: str, workdir: Path):
    """``cai serve reward`` as its own process on loopback (as deployed): (process, address)."""
    proc = start_server(["serve", "reward", "--model", model, "--metrics-port", "-1"], workdir, name="reward")
    return proc, f"127.0.0.1:{wait_ports(proc)['port']}"


def ppo_step_rates(policy: str, reward_model: str, address: str, rounds: int, max_new_tokens: int) -> dict:
    """Median PPO step seconds with the reward (a) in-process, (b) over gRPC overlapped with the
    value/reference pass (the trainer's path), (c) over gRPC awaited before that pass (serial),
    the three trainers stepping in turn on the same prompts (the order reversed every other round),
    so load changes hit all alike."""
    import statistics

    from services.prompts import RED_TEAM, load_prompts
    from services.reward.client import InProcessReward, RewardClient
    from services.training.ppo_config import PPOConfig
    from services.training.ppo_trainer import PPOTrainer

    prompts = [list(p.messages) for p in load_prompts(RED_TEAM)]
    config = PPOConfig(batch_size=8, mini_batch_size=4, max_new_tokens=max_new_tokens, learning_rate=1e-4, seed=0)
    overlapped = PPOConfig(**{**config.__dict__, "overlap_reward": True})
    serial = PPOConfig(**{**config.__dict__, "overlap_reward": False})
    trainers = {
        "in_process": PPOTrainer(config, policy, InProcessReward(reward_model)),
        "grpc_overlapped": PPOTrainer(overlapped, policy, RewardClient(address)),
        "grpc_serial": PPOTrainer(serial, policy, RewardClient(address)),
    }
    times: dict[str, list[float]] = {k: [] for k in trainers}
    waits: dict[str, list[float]] = {k: [] for k in trainers}
    try:
        for r in range(rounds + 1):
            batch = prompts[(8 * r) % len(prompts) :][:8]
            batch = (batch + prompts)[:8]
            # alternate the order each round, so that a trainer stepping right after another one
            # (or after the reward server's burst) is not always the same
            order = list(trainers.items()) if r % 2 else list(trainers.items())[::-1]
            for name, trainer in order:
                with Timer() as t:
                    metrics = trainer.step(batch)
                if r:  # round 0 warms up
                    times[name].append(t.seconds)
                    waits[name].append(metrics["reward_wait_seconds"])
    finally:
        for trainer in trainers.values():
            trainer.close()
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "rounds": rounds,
        **{f"step_seconds_{k}": v for k, v in median.items()},
        # what each step still waited for its scores after the value/reference pass
        **{f"reward_wait_seconds_{k}": statistics.median(v) for k, v in waits.items()},
        "ratio_grpc_overlapped_over_in_process_step_rate": median["in_process"] / median["grpc_overlapped"],
        "ratio_grpc_serial_over_in_process_step_rate": median["in_process"] / median["grpc_serial"],
    }


def queue_figures(n: int, tmp: Path, rm: str) -> dict:
    """(1): the queue into durable data, and the trainer consuming and training a reward model."""
    from services.common.jsonl import append_rows, read_rows
    from services.queue import open_queue
    from services.trainer.config import TrainerConfig
    from services.trainer.worker import TrainerWorker

    url = f"sqlite:///{tmp / 'q.db'}"
    queue = open_queue(url)
    queue.publish(comparisons(n))
    queue.close()
    # (1a) queue -> durable data, the trainer's consume/fsync/ack path alone
    q = open_queue(url)
    with Timer() as t_consume:
        taken = 0
        while taken < n:
            deliveries = q.consume("bench", "c", 64)
            append_rows(tmp / "data.jsonl", [d.item for d in deliveries])
            q.ack("bench", deliveries)
            taken += len(deliveries)
    q.close()
    # (1b) the trainer: the same data consumed and trained into a reward model
    worker = TrainerWorker(
        TrainerConfig(
            queue=url,
            work_dir=str(tmp / "work"),
            reward_base_model=rm,
            train_every=10**9,
            max_comparisons=n,
            consume_batch=64,
        )
    )
    with Timer() as t_train:
        worker.loop()
    rows = len(read_rows(tmp / "work" / "data" / "comparisons.jsonl"))
    return {
        "comparisons": n,
        "queue_to_durable_data_per_s": n / t_consume.seconds,
        "trainer_consume_and_train_per_s": rows / t_train.seconds,
    }


def main(args) -> None:
    from services.models.tiny import build_tiny_model

    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        policy = str(build_tiny_model(tmp / "policy"))
        rm = str(build_tiny_model(tmp / "rm", reward=True))
        if args.comparisons:
            figures.update(queue_figures(args.comparisons, tmp, rm))
        figures["ppo_max_new_tokens"] = args.max_new_tokens
        for size in args.sizes.split(","):
            if size == "tiny":
                pol, rew = policy, rm
            else:
                pol = str(build_tiny_model(tmp / f"policy-{size}", size=size))
                rew = str(build_tiny_model(tmp / f"rm-{size}", size=size, reward=True))
            proc, address = _serve_reward(rew, tmp)
            try:
                figures[f"ppo_{size}"] = ppo_step_rates(pol, rew, address, args.steps, args.max_new_tokens)
                print(f"ppo {size}: {figures[f'ppo_{size}']}", flush=True)
            except Exception:
                print(f"reward service (exit code {proc.poll()}) log:\n{(tmp / 'reward.log').read_text()[-3000:]}")
                raise
            finally:
                proc.terminate()
                proc.wait(60)
    report("trainer", figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparisons", type=int, default=512, help="0: skip the queue/reward-model part")
    parser.add_argument("--steps", type=int, default=5, help="PPO steps timed per reward source (after one warm-up)")
    parser.add_argument("--sizes", default="tiny,small", help="policy/reward model sizes (tiny, small ~25M)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    main(parser.parse_args())
