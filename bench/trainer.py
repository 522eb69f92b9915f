"""Trainer throughput and PPO step time, reward from the reward service over gRPC vs in-process.

(1) Comparisons per second from the queue into durable training data (consume, fsync, ack), and
through reward-model training (soft-label loss), SQLite queue, tiny reward model.
(2) PPO step time on a tiny policy with rewards scored by ``cai.v1.Reward`` on loopback vs the
same reward model in-process; ratio in-process/gRPC of step time (1.0 = no cost).
Run: ``.venv/bin/python -m bench.trainer``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
from pathlib import Path

from bench._common import Timer, report


def comparisons(n: int) -> list[dict]:
    return [{
        "id": f"b-{i}", "kind": "harmlessness", "prompt": [{"role": "user", "content": f"question {i}"}],
        "answer_a": f"A safe, helpful answer {i}.", "answer_b": f"A harmful answer {i}.", "p_a": 0.8,
        "principle_id": "judge-less-harmful",
        "provenance": {"constitution_sha256": "0" * 64, "judge_model": "bench", "policy_checkpoint": "bench",
                       "created_at": "2026-11-24T00:00:00Z"},
    } for i in range(n)]


def ppo_step_seconds(policy: str, reward_fn, steps: int) -> float:
    from services.prompts import RED_TEAM, load_prompts
    from services.trainer.ppo_config import PPOConfig
    from services.trainer.ppo_trainer import PPOTrainer

    prompts = [list(p.messages) for p in load_prompts(RED_TEAM)]
    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=4, max_new_tokens=16, learning_rate=1e-4,
                                   seed=0), policy, reward_fn)
    try:
        trainer.step(prompts[:8])  # warm up
        with Timer() as t:
            for s in range(steps):
                trainer.step(prompts[8 * (s + 1): 8 * (s + 2)])
    finally:
        trainer.close()
    return t.seconds / steps


def main(args) -> None:
    from services.common.jsonl import append_rows, read_rows
    from services.common.server import ServerConfig
    from services.models.tiny import build_tiny_model
    from services.queue import open_queue
    from services.reward.client import InProcessReward, RewardClient
    from services.reward.config import RewardConfig
    from services.reward.service import build_reward_service
    from services.trainer.config import TrainerConfig
    from services.trainer.worker import TrainerWorker

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        policy = str(build_tiny_model(tmp / "policy"))
        rm = str(build_tiny_model(tmp / "rm", reward=True))
        url = f"sqlite:///{tmp / 'q.db'}"
        queue = open_queue(url)
        queue.publish(comparisons(args.comparisons))
        queue.close()
        # (1a) queue -> durable data, the trainer's consume/fsync/ack path alone
        q = open_queue(url)
        with Timer() as t_consume:
            taken = 0
            while taken < args.comparisons:
                deliveries = q.consume("bench", "c", 64)
                append_rows(tmp / "data.jsonl", [d.item for d in deliveries])
                q.ack("bench", deliveries)
                taken += len(deliveries)
        q.close()
        # (1b) the trainer: the same data consumed and trained into a reward model
        worker = TrainerWorker(TrainerConfig(queue=url, work_dir=str(tmp / "work"), reward_base_model=rm,
                                             train_every=10**9, max_comparisons=args.comparisons, consume_batch=64))
        with Timer() as t_train:
            worker.loop()
        rows = len(read_rows(tmp / "work" / "data" / "comparisons.jsonl"))

        async def start_reward():
            service = await build_reward_service(RewardConfig(model=rm, server=ServerConfig(
                host="127.0.0.1", port=0, metrics_port=-1)))
            await service.start()
            return service

        loop = asyncio.new_event_loop()  # the reward service runs on its own loop thread
        threading.Thread(target=loop.run_forever, daemon=True).start()
        service = asyncio.run_coroutine_threadsafe(start_reward(), loop).result()
        grpc_step = ppo_step_seconds(policy, RewardClient(f"127.0.0.1:{service.port}"), args.steps)
        local_step = ppo_step_seconds(policy, InProcessReward(rm), args.steps)
        asyncio.run_coroutine_threadsafe(service.stop(grace=1), loop).result()
        loop.call_soon_threadsafe(loop.stop)
    figures = {
        "comparisons": args.comparisons,
        "queue_to_durable_data_per_s": args.comparisons / t_consume.seconds,
        "trainer_consume_and_train_per_s": rows / t_train.seconds,
        "ppo_steps": args.steps,
        "ppo_step_seconds_reward_grpc": grpc_step,
        "ppo_step_seconds_reward_in_process": local_step,
        "ratio_in_process_over_grpc_step_time": local_step / grpc_step,
    }
    report("trainer", figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparisons", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    main(parser.parse_args())
