"""Policy optimisation against the reward model: our PPO, or TRL's GRPO/RLOO, one entry point.

The reward comes from one interface (``services.reward.client``): the reward service over gRPC,
or the reward model in-process. The saved policy is a plain model folder with a manifest, which
the generation service loads with ``LoadCheckpoint``.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

from services.trainer.checkpoint import training_args, write_manifest
from services.trainer.config import PolicyTrainingConfig

log = logging.getLogger(__name__)


def rollout_prompts(pt: PolicyTrainingConfig, seed: int) -> list[list[dict]]:
    from services.prompts import HELPFULNESS, RED_TEAM, load_prompts

    prompts = load_prompts(pt.prompts) if pt.prompts else load_prompts(RED_TEAM) + load_prompts(HELPFULNESS)
    conversations = [list(p.messages) for p in prompts]
    random.Random(seed).shuffle(conversations)
    return conversations


def reward_function(pt: PolicyTrainingConfig, reward_path: Path):
    from services.reward.client import InProcessReward, RewardClient

    if pt.reward_service:
        return RewardClient(pt.reward_service)
    return InProcessReward(str(reward_path))


def train_policy(pt: PolicyTrainingConfig, start: str, reference: str, reward_path: Path, out: Path,
                 *, seed: int = 0, on_step: Callable[[int, dict], None] | None = None) -> Path:
    """Trains the policy from ``start`` (KL-anchored to ``reference``) for ``pt.steps`` steps."""
    prompts = rollout_prompts(pt, seed)
    reward_fn = reward_function(pt, reward_path)
    started = time.perf_counter()
    if pt.algorithm == "ppo":
        history = _ppo(pt, start, reference, reward_fn, prompts, out, seed, on_step)
    else:
        history = _trl(pt, start, reward_fn, prompts, out, seed, on_step)
    last = history[-1] if history else {}
    write_manifest(
        out, kind="policy", step=len(history), base_model=start,
        data={"prompts": len(prompts), "reward_model": str(reward_path), "reward_service": pt.reward_service},
        metrics={"reward_mean_first": history[0].get("reward_mean") if history else None,
                 "reward_mean_last": last.get("reward_mean"), "kl_last": last.get("kl"),
                 "seconds": time.perf_counter() - started},
        algorithm=pt.algorithm, reference=reference, history=history,
    )
    return out


def _ppo(pt, start, reference, reward_fn, prompts, out, seed, on_step) -> list[dict]:
    from services.trainer.ppo_config import PPOConfig
    from services.trainer.ppo_trainer import PPOTrainer

    config = PPOConfig(learning_rate=pt.learning_rate, batch_size=pt.batch_size,
                       mini_batch_size=max(1, pt.batch_size // 2), max_new_tokens=pt.max_new_tokens,
                       kl_coef=pt.kl_coef, lora=pt.lora, seed=seed, steps=pt.steps)
    trainer = PPOTrainer(config, start, reward_fn, ref_path=reference)
    cycle = itertools.cycle(prompts)
    batches = ([next(cycle) for _ in range(pt.batch_size)] for _ in itertools.count())
    try:
        history = trainer.train(batches, pt.steps, callback=on_step)
        trainer.save(out)
    finally:
        trainer.close()
    return history


def _trl(pt, start, reward_fn, prompts, out, seed, on_step) -> list[dict]:
    """TRL's GRPO or RLOO with the same reward function (beta = the KL coefficient)."""
    import datasets
    from transformers import TrainerCallback

    common = dict(
        output_dir=str(out.with_name(out.name + ".work")), per_device_train_batch_size=pt.batch_size,
        num_generations=2, max_completion_length=pt.max_new_tokens, learning_rate=pt.learning_rate,
        max_steps=pt.steps, beta=pt.kl_coef, seed=seed, disable_tqdm=True, **training_args(),
    )
    if pt.algorithm == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer
    history: list[dict] = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                m = {"reward_mean": logs["reward"], "kl": logs.get("kl", 0.0), "policy_loss": logs.get("loss")}
                history.append(m)
                if on_step:
                    on_step(state.global_step, m)

    dataset = datasets.Dataset.from_list([{"prompt": p} for p in prompts[: max(pt.steps * pt.batch_size, pt.batch_size)]])
    peft_config = None
    if pt.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = Trainer(model=start, reward_funcs=[reward_fn], args=Config(**common), train_dataset=dataset,
                      callbacks=[Record()], peft_config=peft_config)
    trainer.train()
    model = trainer.model.merge_and_unload() if pt.lora else trainer.model
    model.save_pretrained(out, safe_serialization=True)
    trainer.processing_class.save_pretrained(out)
    return history
