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
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.config import ConfigError, load_config
from services.engines.config import EngineConfig
from services.paths import REPO_ROOT
from services.prompts import HELPFULNESS, HELPFULNESS_PAIRS, RED_TEAM, load_prompts


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


@dataclass(frozen=True)
class RunConfig:
    """The main job's configuration (``cai run --config FILE``); every field optional."""

    tiny: bool = False
    """Build tiny models on the fly instead of using ``policy.model`` (fast, for trying things)."""
    policy: EngineConfig = field(default_factory=EngineConfig)
    """The base policy and its engine (default: SmolLM2-135M-Instruct on vLLM)."""
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
    eval_prompts: int = 8
    """Prompts of each set used for evaluation: the first ones of the set's eval part of the prompt
    split (``services.prompts.split_prompts``), which no training stage uses."""
    eval_samples: int = 2
    """Answers per evaluation prompt and policy (win rates and refusal rates average over them)."""
    sl_prompts: int = 8
    """Red-team (and helpfulness) prompts for the SL-CAI data."""
    rounds: int = 4
    """Critique/revision rounds."""
    sl_max_tokens: int = 128
    """Longest answer, critique and revision in the SL stage (revisions that hit it are flagged
    and not trained on, so it must let most revisions finish)."""
    sft_epochs: float = 2.0
    """SFT passes over the data."""
    sft_learning_rate: float = 2e-5
    """SFT learning rate."""
    label_prompts: int = 16
    """Red-team prompts answered and compared for AI labels."""
    samples_per_prompt: int = 2
    """Answers per prompt to compare."""
    label_max_tokens: int = 64
    """Longest answer to compare."""
    label_batch_size: int = 4
    """Prompts per Generate/Compare call of the label stage; several batches are in flight, so the
    policy generates the next batch while the judge labels this one."""
    judge_mode: str = "logprob"
    """"logprob" or "chain-of-thought"."""
    reward_epochs: float = 2.0
    """Reward-model passes over the comparisons."""
    reward_learning_rate: float = 2e-5
    """Reward-model learning rate."""
    rl_algorithm: str = "ppo"
    """"ppo", "grpo" or "rloo"."""
    rl_steps: int = 6
    """Policy-optimisation steps."""
    rl_batch_size: int = 4
    """Prompts per policy-optimisation step."""
    rl_max_new_tokens: int = 32
    """Longest rollout answer."""
    rl_learning_rate: float = 1e-5
    """Policy learning rate."""
    kl_coef: float = 0.05
    """Initial KL penalty coefficient."""
    eval_max_tokens: int = 64
    """Longest evaluation answer."""
    queue: str = ""
    """Queue URL; empty: a SQLite file in the run folder."""
    services: ServiceAddresses = field(default_factory=ServiceAddresses)
    """Running services to use instead of in-process ones."""
    seed: int = 0
    """Seed of every stage."""

    def validate(self):
        if self.eval_prompts < 1 or self.sl_prompts < 1 or self.label_prompts < 1:
            return "eval_prompts", "prompt counts must be at least 1"
        if self.label_batch_size < 1:
            return "label_batch_size", "must be at least 1"
        if self.eval_samples < 1:
            return "eval_samples", "must be at least 1"
        if self.rl_algorithm not in ("ppo", "grpo", "rloo"):
            return "rl_algorithm", "must be ppo, grpo or rloo"
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
    from services.common.server import ServerConfig
    from services.engines.config import engine_starts
    from services.models.registry import resolve_model
    from services.pipeline.evaluate import EvalConfig, evaluate
    from services.pipeline.label import LabelConfig, run_label
    from services.pipeline.sl_data import SLDataConfig, produce_sl_data
    from services.prompts import EVAL, TRAIN, split_prompts, split_record
    from services.queue import open_queue
    from services.reward.config import RewardServiceConfig
    from services.reward.service import build_reward_service
    from services.trainer.config import PolicyTrainingConfig, TrainerConfig
    from services.trainer.worker import TrainerWorker
    from services.training.policy import optimize_policy
    from services.training.sft_config import SFTRunConfig
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
    k = cfg.eval_prompts
    sets = {"red_team": split_prompts(red, EVAL)[:k], "helpfulness": split_prompts(helpful, EVAL)[:k]}
    for name, prompts in sets.items():
        if not prompts:
            raise ValueError(f"{name} prompts: no prompt in the eval part of the split to evaluate on")
    train_red = _write_prompts(out / "prompts_red_team_train.jsonl", split_prompts(red, TRAIN))
    split = split_record({"red_team": cfg.red_team_prompts, "helpfulness": cfg.helpfulness_prompts}, TRAIN)
    stages.end("models", f"policy {base}")

    stages.start("sl_data", f"{cfg.sl_prompts} red-team prompts x {cfg.rounds} critique/revision rounds")
    sl_cfg = SLDataConfig(
        prompts=cfg.red_team_prompts,
        helpfulness=cfg.helpfulness_prompts,
        split=TRAIN,
        rounds=cfg.rounds,
        limit=cfg.sl_prompts,
        max_tokens=cfg.sl_max_tokens,
        seed=cfg.seed,
        generation=await address("generation", policy),
        critique=await address("critique", policy),
        policy=policy,
        constitution=cfg.constitution,
        batch_size=max(cfg.sl_prompts, 1),
    )
    sl_manifest = await produce_sl_data(sl_cfg, out / "sl_data", progress=False)
    stages.end("sl_data", f"{sl_manifest['files']}; quality {sl_manifest.get('quality')}")

    stages.start("sft", "supervised fine-tuning on the revisions (SL-CAI)")
    sl_policy = await asyncio.to_thread(
        train_sft,
        SFTRunConfig(
            data=str(out / "sl_data"),
            out=str(out / "checkpoints" / "sl-cai"),
            model=base,
            epochs=cfg.sft_epochs,
            learning_rate=cfg.sft_learning_rate,
            batch_size=4,
            seed=cfg.seed,
            include_flagged=cfg.tiny,
        ),
    )  # a tiny model's text is noise: its rows are all flagged
    stages.end("sft", str(sl_policy))
    sl_engine = EngineConfig(**{**asdict(policy), "model": str(sl_policy)})

    queue_url = cfg.queue or f"sqlite:///{(out / 'queue.db').resolve()}"
    stages.start(
        "label",
        f"{cfg.label_prompts} prompts x {cfg.samples_per_prompt} answers of the SL-CAI policy, judged ({cfg.judge_mode})",
    )
    if svc.generation:
        from services.trainer.worker import promote

        promote(svc.generation, "generation", sl_policy)
    label_cfg = LabelConfig(
        queue=queue_url,
        prompts=train_red,
        helpfulness_pairs=cfg.helpfulness_pairs,
        limit=cfg.label_prompts,
        samples_per_prompt=cfg.samples_per_prompt,
        max_tokens=cfg.label_max_tokens,
        mode=cfg.judge_mode,
        batch_size=cfg.label_batch_size,
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
            reward_base_model=base,
            train_every=10**9,
            max_comparisons=total,
            reward_epochs=cfg.reward_epochs,
            reward_learning_rate=cfg.reward_learning_rate,
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

    loop_server = ServerConfig(host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=5)
    reward_service = None
    reward_addr = svc.reward
    if reward_addr:
        from services.trainer.worker import promote

        promote(reward_addr, "reward", reward_path)
    else:
        reward_service = await build_reward_service(RewardServiceConfig(model=str(reward_path), server=loop_server))
        await reward_service.start()
        reward_addr = f"127.0.0.1:{reward_service.port}"
    try:
        stages.start(
            "rl", f"{cfg.rl_algorithm.upper()}: {cfg.rl_steps} steps, rewards from the reward service at {reward_addr}"
        )
        pt = PolicyTrainingConfig(
            enabled=True,
            algorithm=cfg.rl_algorithm,
            policy=str(sl_policy),
            prompts=cfg.red_team_prompts,
            helpfulness_prompts=cfg.helpfulness_prompts,
            prompt_split=TRAIN,
            steps=cfg.rl_steps,
            batch_size=cfg.rl_batch_size,
            max_new_tokens=cfg.rl_max_new_tokens,
            learning_rate=cfg.rl_learning_rate,
            kl_coef=cfg.kl_coef,
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
            f"{len(sets['helpfulness'])} helpfulness prompts x {cfg.eval_samples} samples",
        )
        policies = {"base": base, "sl-cai": str(sl_policy), "rl-cai": str(rl_policy)}
        eval_cfg = EvalConfig(max_tokens=cfg.eval_max_tokens, seed=cfg.seed, samples=cfg.eval_samples)
        if svc.generation:  # one service: the policies are swapped in with LoadCheckpoint
            generation: str | dict = svc.generation
        else:  # one engine per policy, each started once (the SL-CAI one is still up from labelling)
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
    finally:
        if reward_service is not None:
            await reward_service.stop(grace=2)

    stages.start("report", "writing report.html")
    from services.pipeline.report import write_report

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
    }
    report = write_report(out, summary, results)
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


def run_main(config_path: str | None, out_dir: str | None) -> int:
    try:
        cfg = load_config(RunConfig, config_path) if config_path else RunConfig()
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
