"""Configuration of our PPO (RLHF/RLAIF policy optimisation against a reward function)."""

from __future__ import annotations

from dataclasses import dataclass

from services.training.checkpoint import precision_problem

KL_MODES = ("adaptive", "fixed")


@dataclass(frozen=True)
class PPOConfig:
    learning_rate: float = 1e-5
    """Learning rate of the policy (and value head) optimiser, AdamW."""
    batch_size: int = 8
    """Prompts per rollout batch, i.e. per ``PPOTrainer.step`` (over all processes; each process
    generates for ``batch_size / num_processes`` of them)."""
    mini_batch_size: int = 4
    """Rollouts per optimiser step inside a PPO epoch (over all processes); the last minibatch of an
    epoch is smaller when it does not divide ``batch_size``."""
    ppo_epochs: int = 4
    """Passes over each rollout batch, in freshly shuffled minibatches."""
    gamma: float = 1.0
    """Discount factor of the per-token rewards in GAE."""
    lam: float = 0.95
    """GAE lambda: 1 gives Monte-Carlo returns, 0 one-step TD."""
    cliprange: float = 0.2
    """Clip range of the policy probability ratio: ``ratio`` is clipped to ``[1 - c, 1 + c]``."""
    cliprange_value: float = 0.2
    """Clip range of the value prediction around its rollout-time value."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss ``policy_loss + vf_coef * value_loss``."""
    kl_coef: float = 0.05
    """KL penalty coefficient (its initial value in ``adaptive`` mode): each token's reward is
    ``-kl_coef * (log pi(token) - log pi_ref(token))``."""
    kl_mode: str = "adaptive"
    """``adaptive`` (Ziegler et al. 2019: the coefficient moves so that the KL tracks ``target_kl``)
    or ``fixed`` (the coefficient stays ``kl_coef``)."""
    target_kl: float = 6.0
    """Target sequence KL to the reference, in nats (``adaptive`` mode)."""
    kl_horizon: int = 10000
    """Horizon of the adaptive KL controller, in rollouts: the larger, the slower it moves."""
    max_new_tokens: int = 64
    """Longest rollout completion, in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts; log-probabilities are computed at the same temperature."""
    top_p: float = 1.0
    """Nucleus-sampling mass of the rollouts (1: the full distribution, which PPO assumes)."""
    whiten_rewards: bool = False
    """Scale the per-token rewards to unit variance over the batch before GAE (mean kept)."""
    lora: bool = False
    """Train LoRA adapters (and the value head) instead of all weights; the reference is then the
    base model with the adapters disabled, and the adapters are merged into the saved policy."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling."""
    seed: int = 0
    """Seed of sampling, shuffling and the value head (offset by the process index for sampling)."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm before each optimiser step."""
    missing_eos_penalty: float | None = None
    """Subtracted from the score of a completion that ends without an end-of-sequence token (cut at
    ``max_new_tokens``); None: no penalty."""
    overlap_reward: bool | None = None
    """True: start an asynchronous reward call (the reward service over gRPC) as soon as the
    completions are decoded and await it after the value and reference passes, which run
    meanwhile; False: await the scores before those passes; None: overlap on a GPU only. On a CPU
    the reward service usually shares the trainer's cores, and the two computing at once slow
    each other down more than the overlap saves (bench/trainer.py: on 2 cores, tiny model, 0.60
    of the in-process step rate overlapped vs 0.88 awaited)."""
    precision: str = "auto"
    """"auto" (accelerate's own mixed-precision setting on a GPU, float32 on a CPU), "bf16"
    (autocast to bfloat16, on a CPU too: faster where the CPU has AVX512-BF16 or AMX) or "fp32".
    GRPO and RLOO run in TRL, where "auto" is bf16 on a GPU that supports it."""
    steps: int = 20
    """PPO iterations that ``PPOTrainer.train`` runs when it is not given a number."""

    def validate(self) -> tuple[str, str] | None:
        """The first problem as (field, message), or None."""
        if self.learning_rate <= 0:
            return "learning_rate", "must be positive"
        if self.batch_size < 1:
            return "batch_size", "must be at least 1"
        if not 1 <= self.mini_batch_size <= self.batch_size:
            return "mini_batch_size", "must be between 1 and batch_size"
        if self.ppo_epochs < 1:
            return "ppo_epochs", "must be at least 1"
        if not 0 <= self.gamma <= 1:
            return "gamma", "must be in [0, 1]"
        if not 0 <= self.lam <= 1:
            return "lam", "must be in [0, 1]"
        if self.cliprange <= 0:
            return "cliprange", "must be positive"
        if self.cliprange_value <= 0:
            return "cliprange_value", "must be positive"
        if self.vf_coef < 0:
            return "vf_coef", "must be 0 or more"
        if self.kl_coef < 0:
            return "kl_coef", "must be 0 or more"
        if self.kl_mode not in KL_MODES:
            return "kl_mode", f"must be one of {', '.join(KL_MODES)}"
        if self.target_kl <= 0:
            return "target_kl", "must be positive"
        if self.kl_horizon < 1:
            return "kl_horizon", "must be at least 1"
        if self.max_new_tokens < 1:
            return "max_new_tokens", "must be at least 1"
        if self.temperature <= 0:
            return "temperature", "must be positive"
        if not 0 < self.top_p <= 1:
            return "top_p", "must be in (0, 1]"
        if self.lora_r < 1:
            return "lora_r", "must be at least 1"
        if self.lora_alpha <= 0:
            return "lora_alpha", "must be positive"
        if self.max_grad_norm <= 0:
            return "max_grad_norm", "must be positive"
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            return "missing_eos_penalty", "must be 0 or more (it is subtracted), or None"
        if self.steps < 0:
            return "steps", "must be 0 or more"
        return precision_problem(self.precision)
