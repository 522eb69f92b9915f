"""Policy optimisation against the reward model: our PPO, or TRL's GRPO/RLOO, one entry point.

The reward comes from one interface (``services.reward.client``): the reward service over gRPC,
or the reward model in-process. The saved policy is a plain model folder with a manifest, which
the generation service loads with ``LoadCheckpoint``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

from services.config import ConfigError
from services.trainer.config import PolicyTrainingConfig
from services.training.checkpoint import training_args, write_manifest

log = logging.getLogger(__name__)


def prompt_sets(pt: PolicyTrainingConfig) -> dict[str, list[list[dict]]]:
    """The rollout prompts by kind ("red_team", "helpfulness"), of the configured split part."""
    from services.prompts import HELPFULNESS, RED_TEAM, load_prompts, split_prompts

    if pt.prompts and not pt.helpfulness_prompts:  # one file, as configs before helpfulness_prompts
        files = {"red_team": pt.prompts}
    else:
        files = {"red_team": pt.prompts or str(RED_TEAM), "helpfulness": pt.helpfulness_prompts or str(HELPFULNESS)}
    sets = {}
    for kind, path in files.items():
        prompts = split_prompts(load_prompts(path), pt.prompt_split)
        if not prompts:
            raise ValueError(f"{path}: no prompts in the {pt.prompt_split!r} part of the prompt split")
        sets[kind] = [list(p.messages) for p in prompts]
    return sets


def rollout_prompts(
    pt: PolicyTrainingConfig,
    seed: int,
    round_index: int = 0,
    n: int | None = None,
    sets: dict[str, list[list[dict]]] | None = None,
) -> list[list[dict]]:
    """``n`` rollout prompts (default: ``pt.ppo.steps * pt.ppo.batch_size``), red-team and helpfulness
    prompts interleaved so that every ``pt.ppo.batch_size`` consecutive prompts hold
    ``round(batch_size * helpfulness_share)`` helpfulness prompts (a running quota, so any window
    holds the share up to one prompt). Each kind is shuffled with ``(seed, round_index)`` and
    cycled: the order advances from one trainer round to the next."""
    sets = prompt_sets(pt) if sets is None else sets
    n = pt.ppo.steps * pt.ppo.batch_size if n is None else n
    share = pt.helpfulness_share if "helpfulness" in sets else 0.0
    rng = random.Random(f"rollouts/{seed}/{round_index}")
    cycles = {}
    for kind, conversations in sets.items():
        order = list(conversations)
        rng.shuffle(order)
        cycles[kind] = itertools.cycle(order)
    out, helpful = [], 0
    for k in range(n):
        want = math.floor((k + 1) * share + 1e-9)  # helpfulness prompts wanted among the first k + 1
        kind = "helpfulness" if want > helpful else "red_team"
        helpful += kind == "helpfulness"
        out.append(next(cycles[kind]))
    return out


def weights_fingerprint(model) -> str:
    """SHA-256 over a model's parameters (names, shapes and values): which weights a trainer
    actually holds, e.g. as its KL reference."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def folder_fingerprint(path: str) -> str:
    """``weights_fingerprint`` of the causal LM saved in ``path``."""
    import torch
    from transformers import AutoModelForCausalLM

    return weights_fingerprint(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))


def reward_function(pt: PolicyTrainingConfig, reward_path: Path):
    from services.reward.client import InProcessReward, RewardClient

    if pt.reward_service:
        return RewardClient(pt.reward_service)
    return InProcessReward(str(reward_path))


def _reward_provenance(reward_path: Path) -> dict:
    """The reward model's id and the constitution hash(es) its labels came from (its manifest)."""
    from services.training.checkpoint import read_manifest

    try:
        m = read_manifest(reward_path)
    except (OSError, ValueError):
        return {
            "reward_model": str(reward_path),
            "reward_model_id": Path(reward_path).name,
            "constitution_sha256": "",
            "constitution_sha256s": [],
        }
    hashes = m.get("constitution_sha256s") or ([m["constitution_sha256"]] if m.get("constitution_sha256") else [])
    return {
        "reward_model": str(reward_path),
        "reward_model_id": m.get("id", Path(reward_path).name),
        "constitution_sha256": m.get("constitution_sha256") or (hashes[0] if len(hashes) == 1 else ""),
        "constitution_sha256s": hashes,
    }


def optimize_policy(
    pt: PolicyTrainingConfig,
    start: str,
    reference: str,
    reward_path: Path,
    out: Path,
    *,
    seed: int = 0,
    round_index: int = 0,
    on_step: Callable[[int, dict], None] | None = None,
) -> Path:
    """Trains the policy from ``start`` (KL-anchored to ``reference``, the SL-CAI policy, whatever
    ``start`` is) for ``pt.ppo.steps`` steps. ``round_index`` counts the trainer's RL rounds: it advances
    the prompt order and the sampling seed. A PPO ``start`` saved by an earlier round carries its
    value head and KL coefficient, which this round continues from."""
    if problem := pt.validate():
        raise ConfigError(f"policy_training: {problem[0]}: {problem[1]}")
    sets = prompt_sets(pt)
    if pt.algorithm == "ppo":
        n = pt.ppo.steps * pt.ppo.batch_size
    else:  # a step takes batch_size / num_generations distinct prompts, each sampled num_generations times
        n = max(pt.ppo.steps, 1) * (pt.ppo.batch_size // pt.num_generations)
    prompts = rollout_prompts(pt, seed, round_index, n=n, sets=sets)
    reward_fn = reward_function(pt, reward_path)
    started = time.perf_counter()
    info: dict = {}
    if pt.algorithm == "ppo":
        history = _ppo(pt, start, reference, reward_fn, prompts, out, seed + round_index, on_step, info)
    else:
        history = _trl(pt, start, reference, reward_fn, prompts, out, seed + round_index, on_step, info)
    last = history[-1] if history else {}
    counts = {kind: 0 for kind in sets}
    lookup = {json.dumps(c, sort_keys=True): kind for kind, convs in sets.items() for c in convs}
    for c in prompts:
        counts[lookup[json.dumps(c, sort_keys=True)]] += 1
    provenance = _reward_provenance(reward_path)
    write_manifest(
        out,
        kind="policy",
        step=len(history),
        base_model=start,
        constitution_sha256=provenance["constitution_sha256"],
        data={
            "prompts": len(prompts),
            "red_team_prompts": counts.get("red_team", 0),
            "helpfulness_prompts": counts.get("helpfulness", 0),
            "helpfulness_share": counts.get("helpfulness", 0) / len(prompts) if prompts else 0.0,
            "helpfulness_share_target": pt.helpfulness_share if "helpfulness" in sets else 0.0,
            "prompt_split": pt.prompt_split,
            "round": round_index,
            "reward_model": str(reward_path),
            "reward_service": pt.reward_service,
        },
        metrics={
            "reward_mean_first": history[0].get("reward_mean") if history else None,
            "reward_mean_last": last.get("reward_mean"),
            "kl_last": last.get("kl"),
            "seconds": time.perf_counter() - started,
        },
        algorithm=pt.algorithm,
        reference=reference,
        start=start,
        round=round_index,
        num_generations=pt.num_generations if pt.algorithm != "ppo" else None,
        reward_model_id=provenance["reward_model_id"],
        reward_constitution_sha256s=provenance["constitution_sha256s"],
        history=history,
        **info,
    )
    return out


def _ppo(pt, start, reference, reward_fn, prompts, out, seed, on_step, info) -> list[dict]:
    from services.training.ppo_trainer import STATE_FILE, PPOTrainer

    config = dataclasses.replace(pt.ppo, seed=seed)
    if problem := config.validate():
        raise ConfigError(f"policy_training.ppo: {problem[0]}: {problem[1]}")
    trainer = PPOTrainer(config, start, reward_fn, ref_path=reference)
    info["resumed_ppo_state"] = (Path(start) / STATE_FILE).is_file()
    if info["resumed_ppo_state"]:  # an earlier round's value head and KL coefficient
        trainer.load_state(start)
        log.info(
            "PPO continues from %s: step %d, kl_coef %.4f", start, trainer.global_step, trainer.kl_controller.value
        )
    info["kl_coef_start"] = trainer.kl_controller.value
    info["value_head_fingerprint_start"] = weights_fingerprint(
        trainer.accelerator.unwrap_model(trainer.model).value_head
    )
    if trainer.ref_model is not None:
        info["reference_fingerprint"] = weights_fingerprint(trainer.ref_model)
    batches = (prompts[i : i + pt.ppo.batch_size] for i in range(0, len(prompts), pt.ppo.batch_size))
    try:
        history = trainer.train(batches, pt.ppo.steps, callback=on_step)
        trainer.save(out)
    finally:
        trainer.close()
    info["kl_coef_end"] = trainer.kl_controller.value
    return history


def _trl(pt, start, reference, reward_fn, prompts, out, seed, on_step, info) -> list[dict]:
    """TRL's GRPO or RLOO with the same reward function (beta = the KL coefficient), groups of
    ``pt.num_generations`` completions per prompt, KL-anchored to ``reference``.

    TRL 1.16 takes no reference model: it loads one from the policy's ``config._name_or_path``.
    The policy is therefore passed as a model loaded from ``start`` whose ``_name_or_path`` names
    ``reference``, so that a round started from an earlier RL checkpoint stays anchored to the
    SL-CAI policy (the reference's weights are fingerprinted into the manifest)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    common = dict(
        output_dir=str(out.with_name(out.name + ".work")),
        per_device_train_batch_size=pt.ppo.batch_size,
        num_generations=pt.num_generations,
        max_completion_length=pt.ppo.max_new_tokens,
        learning_rate=pt.ppo.learning_rate,
        max_steps=pt.ppo.steps,
        beta=pt.ppo.kl_coef,
        seed=seed,
        disable_tqdm=True,
        **training_args(pt.ppo.precision),
    )
    if pt.algorithm == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    history: list[dict] = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                m = {"reward_mean": logs["reward"], "kl": logs.get("kl", 0.0), "policy_loss": logs.get("loss")}
                history.append(m)
                if on_step:
                    on_step(state.global_step, m)

    dataset = datasets.Dataset.from_list([{"prompt": p} for p in prompts])
    peft_config = None
    if pt.ppo.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=pt.ppo.lora_r, lora_alpha=pt.ppo.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32)
    model.config._name_or_path = str(reference)  # TRL builds its reference model from this path
    tokenizer = AutoTokenizer.from_pretrained(start, padding_side="left", truncation_side="left")
    trainer = Trainer(
        model=model,
        reward_funcs=[reward_fn],
        args=Config(**common),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Record()],
        peft_config=peft_config,
    )
    ref = getattr(trainer, "ref_model", None)
    if ref is not None:
        info["reference_fingerprint"] = weights_fingerprint(trainer.accelerator.unwrap_model(ref))
    trainer.train()
    model = trainer.model.merge_and_unload() if pt.ppo.lora else trainer.model
    model.config._name_or_path = str(out)
    model.save_pretrained(out, safe_serialization=True)
    trainer.processing_class.save_pretrained(out)
    return history
