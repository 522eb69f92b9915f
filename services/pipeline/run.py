"""``cai run``: the whole method end to end.

Stages: SL-CAI data (generation + critique) -> SFT -> AI labels (generation with the SL-CAI
policy + judge, published to the queue) -> reward model (the trainer consumes the queue) -> RL
(PPO against the reward service) -> evaluation (base vs SL-CAI vs RL-CAI) -> report.

On the embedded default every service runs in this process on loopback and the queue is a SQLite
file in the run folder. Each engine starts once for the whole run (``EmbeddedServices``): the
base model serves SL-data generation and critique and stays the judge's feedback model; the
SL-CAI policy gets its own engine for labelling and keeps it for evaluation, where the RL-CAI
policy gets one too, so no stage restarts an engine and no checkpoint swap changes the judge.
Training and rollouts use the train part of the prompt split, evaluation the eval part
(``services.prompts.split_prompts``). The run ends with a time table per stage and the labels/s,
printed and in ``summary.json``. With service addresses and a Redis URL in the config, the same stages
drive a distributed deployment. ``tiny: true`` builds tiny models on the fly (minutes on a CPU).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from services.config import ConfigError, keeps_renamed_keys, load_config
from services.engines.config import EngineConfig
from services.paths import REPO_ROOT
from services.pipeline.evaluate import EvalConfig
from services.pipeline.label import LabelConfig
from services.pipeline.sl_data import SLDataConfig
from services.prompts import HELPFULNESS, HELPFULNESS_PAIRS, RED_TEAM, load_prompts
from services.trainer.config import PolicyTrainingConfig
from services.training.checkpoint import cpu_has_bf16
from services.training.ppo_config import PPOConfig
from services.training.reward_config import RewardRunConfig
from services.training.sft_config import SFTRunConfig

_BF16_CPU = cpu_has_bf16()
FAST_PRECISION = "bf16" if _BF16_CPU else "auto"
"""The main job's training precision: bfloat16 autocast where the CPU computes it natively
(AVX512-BF16 or AMX; on a GPU "bf16" is what "auto" gives there), else the trainers' default.
Measured here (2 cores with AVX512-BF16, SmolLM2-135M, 4x256 tokens): a forward+backward+AdamW
step 4.0-4.6 s vs 6.6-7.2 s in float32."""
FAST_DTYPE = "bfloat16" if _BF16_CPU else "auto"
"""The main job's vLLM dtype, by the same test: on these CPUs a batch of 8 SmolLM2 answers of 192
tokens took 6.3 s in bfloat16 vs 9.1 s in float32 (``auto`` is float32 on a CPU)."""


ONE_AT_A_TIME = 1 if (os.cpu_count() or 1) <= 4 else 4
"""The main job's ``label.in_flight``: on a machine of up to 4 cores, one batch at a time."""


@dataclass(frozen=True)
class ServiceAddresses:
    """Addresses of running services for a distributed run; empty ones start in-process."""

    generation: str = ""
    """Generation service (the policy being trained)."""
    critique: str = ""
    """Critique service."""
    judge: str = ""
    """Judge service (the feedback model)."""
    reward: str = ""
    """Reward service (loads each new reward model)."""


def _run_sets(defaults: Any, names: str) -> dict[str, Any]:
    """``{field: its value in defaults}`` for the space-separated ``names`` (``RunConfig.filled_in``)."""
    return {name: getattr(defaults, name) for name in names.split()}


@keeps_renamed_keys
@dataclass(frozen=True)
class RunConfig:
    """The main job's configuration (``cai run --config FILE``); every field optional. Each stage
    has a section that is the config of the command doing that stage alone (``sl_data`` is
    ``cai sl-data``'s ``SLDataConfig``, ``sft`` is ``cai train sft``'s ...), with the run's
    defaults; the run fills in the fields it decides itself (``filled_in``)."""

    tiny: bool = False
    """Build tiny models on the fly instead of using ``policy.model`` (fast, for trying things)."""
    policy: EngineConfig = field(default_factory=lambda: EngineConfig(dtype=FAST_DTYPE))
    """The base policy and its engine (default: SmolLM2-135M-Instruct on vLLM, in bfloat16 on a
    CPU that computes it natively, ``FAST_DTYPE``)."""
    feedback_model: str = ""
    """Model of the judge (the feedback model); empty: the base policy."""
    constitution: str = ""
    """Constitution file; empty: constitutions/default.yaml."""
    red_team_prompts: str = str(RED_TEAM)
    """Red-team prompts (JSONL or a local dataset folder)."""
    helpfulness_prompts: str = str(HELPFULNESS)
    """Helpfulness prompts."""
    helpfulness_pairs: str = str(HELPFULNESS_PAIRS)
    """Helpfulness preference pairs mixed into reward-model training."""
    queue: str = ""
    """Queue URL; empty: a SQLite file in the run folder."""
    services: ServiceAddresses = field(default_factory=ServiceAddresses)
    """Running services to use instead of in-process ones."""
    seed: int = 0
    """Seed of every stage."""
    sl_data: SLDataConfig = field(
        default_factory=lambda: SLDataConfig(
            limit=16, rounds=2, batch_size=16, max_tokens=160, critique_max_tokens=64, temperature=0.7
        )
    )
    """SL-CAI data, ``cai sl-data``'s settings: ``limit`` red-team (and helpfulness) prompts,
    ``rounds`` of critique and revision (16 prompts x 2 rounds: the 32 revisions of 8 x 4 in
    5 sequential waves of generation instead of 9), ``max_tokens`` (revisions that hit it are flagged and not
    trained on, so it must let most finish), ``critique_max_tokens`` (the critiques are asked to be
    two or three sentences), ``batch_size``, ``temperature``."""
    sft: SFTRunConfig = field(
        default_factory=lambda: SFTRunConfig(
            epochs=1.0, learning_rate=2e-5, batch_size=1, gradient_accumulation_steps=4, precision=FAST_PRECISION
        )
    )
    """Supervised fine-tuning on the revisions, ``cai train sft``'s settings (``epochs``,
    ``learning_rate``, ``batch_size``, ``lora``, ...). One row per forward pass, four per update:
    on a CPU a padded batch of rows of different lengths costs the compute of its padding
    (measured: about 1,200 tokens computed for 670 real ones per batch of 4)."""
    label: LabelConfig = field(
        default_factory=lambda: LabelConfig(limit=16, max_tokens=64, batch_size=16, in_flight=ONE_AT_A_TIME)
    )
    """AI labels, ``cai label``'s settings: ``limit`` red-team prompts answered by the SL-CAI
    policy, ``samples_per_prompt`` answers compared, ``max_tokens``, ``mode`` of the judge
    ("logprob" or "chain-of-thought"), ``batch_size`` prompts per Generate/Compare call (several
    batches are in flight, so the policy generates the next batch while the judge labels this one,
    ``in_flight``). On a machine of few cores the run's default is one batch of 16 at a time
    (``ONE_AT_A_TIME``): there the policy's and the judge's engines share the cores, and two vLLM
    engines computing at once slow each other down more than the overlap saves."""
    reward: RewardRunConfig = field(
        default_factory=lambda: RewardRunConfig(epochs=1.0, learning_rate=2e-5, batch_size=8, precision=FAST_PRECISION)
    )
    """Reward-model training on the labels, the trainer's ``reward`` section (``epochs``,
    ``learning_rate``, ``batch_size``, ``helpfulness_ratio``, ``eval_fraction``, ...). Batches of
    8 comparisons, not one at a time with accumulation as for ``sft``: that measured slower here
    (45.9 s vs 35.9 s of training), the pairs' lengths being closer than the SFT rows'."""
    rl: PolicyTrainingConfig = field(
        default_factory=lambda: PolicyTrainingConfig(
            ppo=PPOConfig(
                steps=6,
                batch_size=4,
                mini_batch_size=2,
                ppo_epochs=1,
                max_new_tokens=32,
                precision=FAST_PRECISION,
            )
        )
    )
    """Policy optimisation against the reward service, the trainer's ``policy_training`` section:
    ``algorithm`` ("ppo", "grpo" or "rloo"), ``helpfulness_share``, ``num_generations`` and its
    ``ppo`` knobs (``steps``, ``batch_size``, ``learning_rate``, ``kl_coef``, ``max_new_tokens``, ...).
    The run's PPO uses each rollout once (``ppo_epochs`` 1, as OpenRLHF's default) in two
    minibatches, so the second update is clipped against the rollout's policy."""
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(prompts=8, samples=1, max_tokens=64))
    """Evaluation of base vs SL-CAI vs RL-CAI, ``cai eval``'s settings: ``prompts`` of each set (the
    first ones of the eval part of the prompt split, which no training stage uses), ``samples``
    answers per prompt and policy, ``max_tokens``, ``temperature``, ``bootstrap``, ..."""

    renamed_keys: ClassVar[dict[str, str]] = {
        "eval_prompts": "eval.prompts",
        "eval_samples": "eval.samples",
        "sl_prompts": "sl_data.limit",
        "rounds": "sl_data.rounds",
        "sl_max_tokens": "sl_data.max_tokens",
        "sft_epochs": "sft.epochs",
        "sft_learning_rate": "sft.learning_rate",
        "label_prompts": "label.limit",
        "samples_per_prompt": "label.samples_per_prompt",
        "label_max_tokens": "label.max_tokens",
        "label_batch_size": "label.batch_size",
        "judge_mode": "label.mode",
        "reward_epochs": "reward.epochs",
        "reward_learning_rate": "reward.learning_rate",
        "rl_algorithm": "rl.algorithm",
        "rl_steps": "rl.ppo.steps",
        "rl_batch_size": "rl.ppo.batch_size",
        "rl_max_new_tokens": "rl.ppo.max_new_tokens",
        "rl_learning_rate": "rl.ppo.learning_rate",
        "kl_coef": "rl.ppo.kl_coef",
        "eval_max_tokens": "eval.max_tokens",
    }
    """The flat keys of configs written before the sections (``sft_epochs`` -> ``sft.epochs``)."""
    filled_in: ClassVar[dict[str, dict[str, Any]]] = {
        "sl_data": _run_sets(
            SLDataConfig(),
            "prompts helpfulness split eval_fraction seed generation critique policy constitution",
        ),
        "sft": {**_run_sets(SFTRunConfig(), "model seed"), "data": "<run>/sl_data", "out": "<run>/sl-cai"},
        "label": {
            **_run_sets(
                LabelConfig(), "prompts helpfulness_pairs seed generation judge policy judge_model constitution"
            ),
            "queue": "sqlite:///<run>/queue.db",
        },
        "reward": {**_run_sets(RewardRunConfig(), "model seed"), "out": "<run>/reward"},
        "rl": {
            **_run_sets(PolicyTrainingConfig(), "prompts helpfulness_prompts reward_service generation_service"),
            "enabled": True,
            "policy": "<run>/sl-cai",
        },
        "eval": _run_sets(EvalConfig(), "seed split eval_fraction"),
    }
    """Fields of the sections the run sets itself: from its own fields (``seed``, the prompt
    files, ``constitution``, ``services``) or from the stage before (the SL-CAI policy, ...)."""

    def validate(self):
        if self.sl_data.limit < 1 or self.label.limit < 1:
            return ("sl_data.limit" if self.sl_data.limit < 1 else "label.limit"), "must be at least 1"
        return None


class Stages:
    """Times and reports the stages as they run."""

    def __init__(self, total: int):
        self.total = total
        self.done: dict[str, float] = {}
        self._t = 0.0

    def start(self, name: str, what: str) -> None:
        self._t = time.perf_counter()
        print(f"[{len(self.done) + 1}/{self.total}] {name}: {what}", flush=True)

    def end(self, name: str, note: str = "") -> None:
        self.done[name] = time.perf_counter() - self._t
        print(f"      done in {self.done[name]:.1f}s{'; ' + note if note else ''}", flush=True)


def time_table(
    stage_seconds: dict[str, float],
    labels: int,
    labels_per_second: float,
    labelling_per_second: float,
    engine_starts: int,
) -> str:
    """The run's time per stage, its share of the total, and the label throughput, as text."""
    total = sum(stage_seconds.values()) or 1e-9
    lines = [f"{'stage':<14}{'seconds':>9}{'share':>8}"]
    for name, seconds in stage_seconds.items():
        lines.append(f"{name:<14}{seconds:>9.1f}{seconds / total:>8.0%}")
    lines.append(f"{'total':<14}{total:>9.1f}")
    lines.append(
        f"labels: {labels} AI comparisons, {labels_per_second:.2f} labels/s over the label stage "
        f"(with the SL-CAI engine's start), {labelling_per_second:.2f} labels/s once it runs; "
        f"engines started: {engine_starts}"
    )
    return "\n".join(lines)


def _write_prompts(path: Path, prompts) -> str:
    with open(path, "w") as f:
        for p in prompts:
            f.write(json.dumps({"id": p.id, "category": p.category, "messages": list(p.messages), **p.meta}) + "\n")
    return str(path)


async def run_pipeline(cfg: RunConfig, out: Path) -> dict:
    from services.pipeline.embedded import EmbeddedServices

    async with EmbeddedServices(cfg.constitution) as embedded:
        return await _run(cfg, out, embedded)


async def _run(cfg: RunConfig, out: Path, embedded) -> dict:
    from services.engines.config import engine_starts
    from services.models.registry import resolve_model
    from services.pipeline.embedded import start_reward_here
    from services.pipeline.evaluate import evaluate
    from services.pipeline.label import run_label
    from services.pipeline.sl_data import produce_sl_data
    from services.prompts import EVAL, TRAIN, split_prompts, split_record
    from services.queue import open_queue
    from services.trainer.config import TrainerConfig
    from services.trainer.worker import TrainerWorker
    from services.training.policy import optimize_policy
    from services.training.sft_trainer import train_sft

    stages = Stages(8)
    starts_before = engine_starts()
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    svc = cfg.services

    async def address(name: str, engine: EngineConfig) -> str:
        """The configured service, or the embedded one serving ``engine`` (started once)."""
        return getattr(svc, name) or await embedded.address(name, engine)

    stages.start("models", "tiny models" if cfg.tiny else f"resolving {cfg.policy.model}")
    if cfg.tiny:
        from services.models.tiny import build_tiny_model

        base = str(build_tiny_model(out / "models" / "tiny-policy"))
    else:
        base = await asyncio.to_thread(resolve_model, cfg.policy.model)
    policy = EngineConfig(**{**asdict(cfg.policy), "model": base})
    feedback = EngineConfig(**{**asdict(cfg.policy), "model": cfg.feedback_model or base})
    red = load_prompts(cfg.red_team_prompts)
    helpful = load_prompts(cfg.helpfulness_prompts)
    k = cfg.eval.prompts
    sets = {"red_team": split_prompts(red, EVAL)[:k], "helpfulness": split_prompts(helpful, EVAL)[:k]}
    for name, prompts in sets.items():
        if not prompts:
            raise ValueError(f"{name} prompts: no prompt in the eval part of the split to evaluate on")
    train_red = _write_prompts(out / "prompts_red_team_train.jsonl", split_prompts(red, TRAIN))
    split = split_record({"red_team": cfg.red_team_prompts, "helpfulness": cfg.helpfulness_prompts}, TRAIN)
    stages.end("models", f"policy {base}")

    stages.start("sl_data", f"{cfg.sl_data.limit} red-team prompts x {cfg.sl_data.rounds} critique/revision rounds")
    sl_cfg = replace(
        cfg.sl_data,
        prompts=cfg.red_team_prompts,
        helpfulness=cfg.helpfulness_prompts,
        split=TRAIN,
        seed=cfg.seed,
        generation=await address("generation", policy),
        critique=await address("critique", policy),
        policy=policy,
        constitution=cfg.constitution,
    )
    sl_manifest = await produce_sl_data(sl_cfg, out / "sl_data", progress=False)
    stages.end("sl_data", f"{sl_manifest['files']}; quality {sl_manifest.get('quality')}")

    stages.start("sft", "supervised fine-tuning on the revisions (SL-CAI)")
    sl_policy = await asyncio.to_thread(
        train_sft,
        replace(
            cfg.sft,
            data=str(out / "sl_data"),
            out=str(out / "checkpoints" / "sl-cai"),
            model=base,
            seed=cfg.seed,
            include_flagged=cfg.sft.include_flagged or cfg.tiny,
        ),
    )  # a tiny model's text is noise: its rows are all flagged
    stages.end("sft", str(sl_policy))
    sl_engine = EngineConfig(**{**asdict(policy), "model": str(sl_policy)})

    queue_url = cfg.queue or f"sqlite:///{(out / 'queue.db').resolve()}"
    stages.start(
        "label",
        f"{cfg.label.limit} prompts x {cfg.label.samples_per_prompt} answers of the SL-CAI policy, "
        f"judged ({cfg.label.mode})",
    )
    if svc.generation:
        from services.trainer.worker import promote

        promote(svc.generation, "generation", sl_policy)
    label_cfg = replace(
        cfg.label,
        queue=queue_url,
        prompts=train_red,
        helpfulness_pairs=cfg.helpfulness_pairs,
        seed=cfg.seed,
        generation=await address("generation", sl_engine),
        judge=await address("judge", feedback),
        policy=sl_engine,
        judge_model=feedback,
        constitution=cfg.constitution,
    )
    with open_queue(queue_url) as queue:  # the group exists before labelling, so trimming keeps its items
        queue.create_group(f"run-{out.name}")
    label_stats = await run_label(label_cfg, progress=False)
    stages.end(
        "label",
        f"{label_stats['comparisons_published']} AI labels "
        f"({label_stats['comparisons_per_second']:.2f}/s), {label_stats['helpfulness_published']} helpfulness",
    )

    stages.start("reward_model", "the trainer consumes the queue and trains the reward model (soft labels)")
    queue = open_queue(queue_url)
    total = queue.depth()
    queue.close()
    worker = TrainerWorker(
        TrainerConfig(
            queue=queue_url,
            group=f"run-{out.name}",
            consumer="cai-run",
            work_dir=str(out / "trainer"),
            train_every=10**9,
            max_comparisons=total,
            reward=replace(cfg.reward, model=base),
            seed=cfg.seed,
        )
    )
    await asyncio.to_thread(worker.loop)
    status = worker.status()
    reward_path = Path(status["last_checkpoint"])
    stages.end(
        "reward_model",
        f"{status['items_consumed']} comparisons; {reward_path.name}; "
        f"held-out accuracy {status['metrics'].get('eval_accuracy')}",
    )

    reward_service = None
    reward_addr = svc.reward
    if reward_addr:
        from services.trainer.worker import promote

        promote(reward_addr, "reward", reward_path)
    else:
        # in bfloat16 where the CPU computes it natively, as the engines (``FAST_DTYPE``)
        reward_service, reward_addr = await start_reward_here(str(reward_path), "bfloat16" if _BF16_CPU else "float32")
    try:
        stages.start(
            "rl",
            f"{cfg.rl.algorithm.upper()}: {cfg.rl.ppo.steps} steps, rewards from the reward service at {reward_addr}",
        )
        pt = replace(
            cfg.rl,
            enabled=True,
            policy=str(sl_policy),
            prompts=cfg.red_team_prompts,
            helpfulness_prompts=cfg.helpfulness_prompts,
            reward_service=reward_addr,
        )
        rl_policy = await asyncio.to_thread(
            optimize_policy,
            pt,
            str(sl_policy),
            str(sl_policy),
            reward_path,
            out / "checkpoints" / "rl-cai",
            seed=cfg.seed,
        )
        stages.end("rl", str(rl_policy))

        stages.start(
            "eval",
            f"base vs SL-CAI vs RL-CAI on {len(sets['red_team'])} held-out red-team and "
            f"{len(sets['helpfulness'])} helpfulness prompts x {cfg.eval.samples} samples",
        )
        policies = {"base": base, "sl-cai": str(sl_policy), "rl-cai": str(rl_policy)}
        eval_cfg = replace(cfg.eval, seed=cfg.seed)
        if svc.generation:  # one service: the policies are swapped in with LoadCheckpoint
            generation: str | dict = svc.generation
        else:  # one engine per policy, each started once (the SL-CAI one is still up from labelling)
            # started before evaluating, not while the others answer and are judged: on a 2-core
            # machine two vLLM engines computing at once slow each other down more than that saves
            # (measured: the eval stage took 87-90 s overlapped vs 70-72 s in turn)
            rl_engine = EngineConfig(**{**asdict(policy), "model": str(rl_policy)})
            generation = {
                "base": await embedded.address("generation", policy),
                "sl-cai": await embedded.address("generation", sl_engine),
                "rl-cai": await embedded.address("generation", rl_engine),
            }
        results = await evaluate(
            policies,
            sets,
            {"generation": generation, "judge": await address("judge", feedback), "reward": reward_addr},
            eval_cfg,
        )
        results["split"] = {**split, "part": EVAL}
        (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
        stages.end("eval")

        stages.start("report", "writing report.html")
        from services.pipeline.report import reward_agreement, write_report
        from services.reward.client import RewardClient

        # scored by the reward service while it is still up (its model is loaded already)
        async with RewardClient(reward_addr) as scorer:
            agreement = await reward_agreement(scorer, out / "trainer" / "data" / "comparisons.jsonl")
    finally:
        if reward_service is not None:
            await reward_service.stop(grace=2)

    starts = engine_starts() - starts_before
    labels_per_second = label_stats["comparisons_published"] / max(stages.done["label"], 1e-9)
    summary = {
        "config": asdict(cfg),
        "base_model": base,
        "queue": queue_url,
        "stage_seconds": stages.done,
        "labels_per_second": labels_per_second,
        "engine_starts": starts,
        "split": split,
        "sl_data": sl_manifest,
        "label": label_stats,
        "reward_model": status,
        "checkpoints": {"sl-cai": str(sl_policy), "reward": str(reward_path), "rl-cai": str(rl_policy)},
        "eval_seconds": results.get("seconds"),
    }
    report = write_report(out, summary, results, agreement)
    stages.end("report", str(report))
    summary["stage_seconds"] = stages.done
    summary["total_seconds"] = sum(stages.done.values())
    summary["time_table"] = time_table(
        stages.done,
        label_stats["comparisons_published"],
        labels_per_second,
        label_stats["comparisons_per_second"],
        starts,
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(summary["time_table"], flush=True)
    return summary


def run_main(config: RunConfig | str | None, out_dir: str | None) -> int:
    """Runs the pipeline with ``config`` (a RunConfig, or the path of its YAML file) into ``out_dir``."""
    try:
        cfg = config if isinstance(config, RunConfig) else load_config(RunConfig, config) if config else RunConfig()
    except ConfigError as exc:
        print(f"cai run: {exc}", file=sys.stderr)
        return 2
    out = Path(out_dir) if out_dir else REPO_ROOT / "runs" / time.strftime("%Y%m%d-%H%M%S")
    try:
        summary = asyncio.run(run_pipeline(cfg, out))
    except (ValueError, OSError) as exc:
        print(f"cai run: {exc}", file=sys.stderr)
        return 2
    total = sum(summary["stage_seconds"].values())
    print(f"finished in {total:.0f}s: run folder {out} (report: {out / 'report.html'})")
    return 0
