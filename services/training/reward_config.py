"""Configuration of reward-model training on AI-labeled comparisons (soft-label Bradley-Terry)."""

from __future__ import annotations

from dataclasses import dataclass

from services.models.registry import DEFAULT_MODEL
from services.training.checkpoint import precision_problem


@dataclass(frozen=True)
class RewardRunConfig:
    model: str = DEFAULT_MODEL
    """Model to start from: folder, hub id or packaged name of a causal LM (loaded as a sequence
    classifier with one output, the reward head newly initialised) or of a reward model."""
    out: str = ""
    """Folder for the trained reward model (created; replaced if it exists)."""
    epochs: float = 1.0
    """Passes over the training comparisons (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the epochs)."""
    learning_rate: float = 1e-5
    """Peak learning rate."""
    batch_size: int = 4
    """Comparisons per device per step (each is two sequences: answer A and answer B)."""
    gradient_accumulation_steps: int = 1
    """Steps whose gradients are summed before an update."""
    max_length: int = 1024
    """Longest sequence (prompt + answer), in tokens; comparisons with a longer one are left out."""
    helpfulness_ratio: float = 0.25
    """Fraction of the training comparisons that are helpfulness comparisons (0.25: one per three
    harmlessness comparisons), sampled with the seed; all of them when fewer are available."""
    eval_fraction: float = 0.1
    """Fraction of the comparisons held out to report the soft-label loss and accuracy (0: none)."""
    lora: bool = False
    """Train LoRA adapters (and the reward head) instead of all weights; merged into the saved model."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling."""
    precision: str = "auto"
    """"auto" (bf16 on a GPU that supports it, float32 on a CPU), "bf16" (autocast to bfloat16,
    on a CPU too: faster where the CPU has AVX512-BF16 or AMX) or "fp32"."""
    seed: int = 0
    """Seed of the helpfulness sample, the held-out split, shuffling and the reward head's initialisation."""

    def validate(self) -> tuple[str, str] | None:
        """The first problem as (field, message), or None."""
        if not self.model:
            return "model", "is required"
        if not self.out:
            return "out", "is required"
        if self.epochs <= 0 and self.max_steps <= 0:
            return "epochs", "must be positive (or set max_steps)"
        if self.max_steps == 0 or self.max_steps < -1:
            return "max_steps", "must be -1 (run the epochs) or positive"
        if self.learning_rate <= 0:
            return "learning_rate", "must be positive"
        if self.batch_size < 1:
            return "batch_size", "must be at least 1"
        if self.gradient_accumulation_steps < 1:
            return "gradient_accumulation_steps", "must be at least 1"
        if self.max_length < 1:
            return "max_length", "must be at least 1"
        if not 0 <= self.helpfulness_ratio < 1:
            return "helpfulness_ratio", "must be in [0, 1)"
        if not 0 <= self.eval_fraction < 1:
            return "eval_fraction", "must be in [0, 1)"
        if self.lora and (self.lora_r < 1 or self.lora_alpha < 1):
            return "lora_r" if self.lora_r < 1 else "lora_alpha", "must be at least 1"
        return precision_problem(self.precision)
