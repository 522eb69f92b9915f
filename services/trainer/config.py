"""Configuration of the trainer service (``cai serve trainer --config FILE``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from services.common.server import ServerConfig
from services.config import keeps_renamed_keys
from services.training.ppo_config import PPOConfig
from services.training.reward_config import RewardRunConfig

ALGORITHMS = ("ppo", "grpo", "rloo")
PPO_KEYS = ("steps", "batch_size", "max_new_tokens", "learning_rate", "kl_coef", "lora")
"""Keys of ``policy_training`` that moved into its ``ppo`` section."""
REWARD_KEYS = {
    "reward_base_model": "reward.model",
    "reward_epochs": "reward.epochs",
    "reward_max_steps": "reward.max_steps",
    "reward_learning_rate": "reward.learning_rate",
    "reward_batch_size": "reward.batch_size",
    "helpfulness_ratio": "reward.helpfulness_ratio",
    "eval_fraction": "reward.eval_fraction",
}
"""Keys of the trainer config that moved into its ``reward`` section."""


@keeps_renamed_keys
@dataclass(frozen=True)
class PolicyTrainingConfig:
    """The RL phase run after each reward-model checkpoint (optional)."""

    enabled: bool = False
    """Run policy optimisation after each new reward model."""
    algorithm: str = "ppo"
    """"ppo" (ours), or TRL's "grpo" / "rloo" with the same reward source."""
    policy: str = ""
    """The SL-CAI policy folder to start from. It stays the KL reference of every round: later
    rounds start from the previous RL checkpoint (PPO also from its value head and KL coefficient)
    but are anchored to this policy."""
    prompts: str = ""
    """Red-team prompts for rollouts (JSONL); empty: the shipped red-team prompts."""
    helpfulness_prompts: str = ""
    """Helpfulness prompts for rollouts (JSONL); empty: the shipped helpfulness prompts, unless
    ``prompts`` is set (then only that file, the behaviour of configs written before this field)."""
    helpfulness_share: float = 0.5
    """Share of helpfulness prompts in every rollout batch (the rest are red-team prompts): RL on
    red-team prompts alone pushes the policy towards evasiveness."""
    prompt_split: str = "train"
    """Part of the prompt split rollouts use ("train", "eval" or "all"): by default never the
    prompts ``cai eval`` scores."""
    num_generations: int = 4
    """GRPO/RLOO group size: completions per prompt whose rewards are compared (at least 2; with 2
    the advantages collapse to their sign). ``batch_size`` must be a multiple of it."""
    reward_service: str = ""
    """Score rollouts through this reward service (gRPC); empty: the new reward model in-process."""
    generation_service: str = ""
    """Promote each new policy checkpoint to this generation service (LoadCheckpoint); empty: no."""
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(max_new_tokens=48))
    """The optimisation's knobs: steps per reward-model checkpoint, prompts per step
    (``batch_size``), ``learning_rate``, ``kl_coef``, ``max_new_tokens``, LoRA (``lora``,
    ``lora_r``, ``lora_alpha``), PPO's ``mini_batch_size`` and the rest of ``PPOConfig``. GRPO and
    RLOO read the same steps, batch size, learning rate, token limit, LoRA settings and
    ``kl_coef`` (their beta). Its seed is the trainer's."""

    renamed_keys: ClassVar[dict[str, str]] = {key: f"ppo.{key}" for key in PPO_KEYS}
    filled_in: ClassVar[dict[str, dict[str, Any]]] = {"ppo": {"seed": 0}}

    def validate(self):
        if self.algorithm not in ALGORITHMS:
            return "algorithm", "must be ppo, grpo or rloo"
        if not 0 <= self.helpfulness_share <= 1:
            return "helpfulness_share", "must be in [0, 1]"
        if self.prompt_split not in ("train", "eval", "all"):
            return "prompt_split", "must be train, eval or all"
        if self.num_generations < 2:
            return "num_generations", "must be at least 2 (a group compares its completions)"
        if self.algorithm in ("grpo", "rloo") and self.ppo.batch_size % self.num_generations:
            return (
                "ppo.batch_size",
                f"must be a multiple of num_generations ({self.num_generations}) for {self.algorithm}",
            )
        if self.enabled and not self.policy:
            return "policy", "is required when policy training is enabled"
        return None


@keeps_renamed_keys
@dataclass(frozen=True)
class TrainerConfig:
    """A YAML file with the fields and sections below."""

    queue: str = ""
    """Queue URL of the labeled comparisons (sqlite:///path.db or redis://host:port/db). Required."""
    group: str = "trainer"
    """Consumer group; trainers sharing it share the work."""
    consumer: str = ""
    """This trainer's consumer name; empty: the host name (stable across restarts of a pod)."""
    work_dir: str = ""
    """Folder for the durable training data and checkpoints (a persistent volume). Required."""
    train_every: int = 64
    """Train a new reward model when this many new comparisons have been taken."""
    max_comparisons: int = 0
    """Stop consuming after this many comparisons in total (0: no limit)."""
    exit_when_idle_seconds: float = 0.0
    """Finish (train on what is left, then stop) after the queue has been empty this long; 0: never."""
    consume_batch: int = 32
    """Comparisons taken from the queue per read."""
    claim_idle_ms: int = 60_000
    """Take over comparisons another consumer of the group took but did not acknowledge for this long."""
    constitution_sha256: str = ""
    """Train on the harmlessness labels of this constitution hash (full hex, or a prefix of 8 or
    more); "": the newest hash seen in the data; "any": labels of every constitution. Labels of
    other hashes stay in the durable data, untrained on."""
    reward: RewardRunConfig = field(default_factory=lambda: RewardRunConfig(batch_size=8))
    """Reward-model training: the base ``model`` it starts from, ``epochs``, ``max_steps``,
    ``learning_rate``, ``batch_size``, ``helpfulness_ratio`` (its target: when the helpfulness
    comparisons run out, the share reached is reported and warned about), ``eval_fraction`` (held
    out to measure accuracy against the soft labels), LoRA, ... Each checkpoint's folder and the
    seed are the trainer's."""
    reward_service: str = ""
    """Promote each new reward model to this reward service (LoadCheckpoint); empty: no."""
    policy_training: PolicyTrainingConfig = field(default_factory=PolicyTrainingConfig)
    """The RL phase."""
    seed: int = 0
    """Seed of data order and initialisation."""
    server: ServerConfig = field(default_factory=lambda: ServerConfig(port=50055, metrics_port=9094))
    """Ports for Trainer.Status and /metrics."""

    renamed_keys: ClassVar[dict[str, str]] = REWARD_KEYS
    filled_in: ClassVar[dict[str, dict[str, Any]]] = {"reward": {"out": "<work_dir>/reward-models/rm-N", "seed": 0}}

    def validate(self):
        if not self.queue:
            return "queue", "is required (sqlite:///path.db or redis://host:port/db)"
        if not self.work_dir:
            return "work_dir", "is required (a folder on a persistent volume)"
        if self.train_every < 1:
            return "train_every", "must be at least 1"
        sha = self.constitution_sha256
        if sha not in ("", "any") and (len(sha) < 8 or any(c not in "0123456789abcdef" for c in sha)):
            return "constitution_sha256", 'must be "", "any" or 8 or more lowercase hex digits of a hash'
        return None
