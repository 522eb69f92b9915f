"""Configuration of the trainer service (``cai serve trainer --config FILE``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.server import ServerConfig
from services.models.registry import DEFAULT_MODEL


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
    steps: int = 20
    """Policy-optimisation steps per reward-model checkpoint."""
    batch_size: int = 8
    """Prompts per step."""
    max_new_tokens: int = 48
    """Longest rollout answer, in tokens."""
    learning_rate: float = 1e-5
    """Policy learning rate."""
    kl_coef: float = 0.05
    """Initial KL penalty coefficient (adaptive by default)."""
    lora: bool = False
    """Train LoRA adapters (merged into the saved policy)."""
    reward_service: str = ""
    """Score rollouts through this reward service (gRPC); empty: the new reward model in-process."""
    generation_service: str = ""
    """Promote each new policy checkpoint to this generation service (LoadCheckpoint); empty: no."""


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
    reward_base_model: str = DEFAULT_MODEL
    """Model the reward model is trained from (causal LM or sequence classifier)."""
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
    reward_epochs: float = 1.0
    """Passes over the data per reward-model training."""
    reward_max_steps: int = -1
    """Cap on optimizer steps per reward-model training (-1: the epochs)."""
    reward_learning_rate: float = 1e-5
    """Reward-model learning rate."""
    reward_batch_size: int = 8
    """Comparisons per step."""
    helpfulness_ratio: float = 0.25
    """Share of helpfulness comparisons mixed into reward-model training (its target: when the
    helpfulness comparisons run out, the share reached is reported and warned about)."""
    constitution_sha256: str = ""
    """Train on the harmlessness labels of this constitution hash (full hex, or a prefix of 8 or
    more); "": the newest hash seen in the data; "any": labels of every constitution. Labels of
    other hashes stay in the durable data, untrained on."""
    eval_fraction: float = 0.1
    """Comparisons held out to measure reward-model accuracy against the soft labels."""
    reward_service: str = ""
    """Promote each new reward model to this reward service (LoadCheckpoint); empty: no."""
    policy_training: PolicyTrainingConfig = field(default_factory=PolicyTrainingConfig)
    """The RL phase."""
    seed: int = 0
    """Seed of data order and initialisation."""
    server: ServerConfig = field(default_factory=lambda: ServerConfig(port=50055, metrics_port=9094))
    """Ports for Trainer.Status and /metrics."""

    def validate(self):
        if not self.queue:
            return "queue", "is required (sqlite:///path.db or redis://host:port/db)"
        if not self.work_dir:
            return "work_dir", "is required (a folder on a persistent volume)"
        if self.train_every < 1:
            return "train_every", "must be at least 1"
        if not 0 <= self.helpfulness_ratio < 1:
            return "helpfulness_ratio", "must be in [0, 1)"
        if self.policy_training.algorithm not in ("ppo", "grpo", "rloo"):
            return "policy_training.algorithm", "must be ppo, grpo or rloo"
        pt = self.policy_training
        if not 0 <= pt.helpfulness_share <= 1:
            return "policy_training.helpfulness_share", "must be in [0, 1]"
        if pt.prompt_split not in ("train", "eval", "all"):
            return "policy_training.prompt_split", "must be train, eval or all"
        if pt.num_generations < 2:
            return "policy_training.num_generations", "must be at least 2 (a group compares its completions)"
        if pt.algorithm in ("grpo", "rloo") and pt.batch_size % pt.num_generations:
            return "policy_training.batch_size", (
                f"must be a multiple of num_generations ({pt.num_generations}) for {pt.algorithm}"
            )
        sha = self.constitution_sha256
        if sha not in ("", "any") and (len(sha) < 8 or any(c not in "0123456789abcdef" for c in sha)):
            return "constitution_sha256", 'must be "", "any" or 8 or more lowercase hex digits of a hash'
        if self.policy_training.enabled and not self.policy_training.policy:
            return "policy_training.policy", "is required when policy training is enabled"
        return None
