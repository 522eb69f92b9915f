"""Configuration of supervised fine-tuning on SL-CAI data (``cai train sft``)."""

from __future__ import annotations

from dataclasses import dataclass

from services.models.registry import DEFAULT_MODEL
from services.training.checkpoint import precision_problem


@dataclass(frozen=True)
class SFTRunConfig:
    data: str = ""
    """Folder written by ``cai sl-data``."""
    out: str = ""
    """Folder for the fine-tuned checkpoint (created)."""
    model: str = DEFAULT_MODEL
    """Policy to fine-tune: folder, hub id or packaged name."""
    rounds: int = 0
    """SL-CAI-n: train on the revisions of rounds 1..n (the original method trains on every
    round's revisions); 0 means every round in the data (``--rounds all``)."""
    helpfulness: bool = True
    """Mix in the helpfulness rows (the original method keeps the model helpful this way)."""
    include_flagged: bool = False
    """Also train on rows whose quality is not ``ok`` (truncated, leaking prompt scaffolding, or
    from prompts whose rounds all failed); ``cai sl-data`` marks them and they are left out."""
    lora: bool = False
    """Train LoRA adapters instead of all weights; they are merged into the saved checkpoint."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling."""
    epochs: float = 1.0
    """Passes over the data (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the epochs)."""
    learning_rate: float = 1e-5
    """Peak learning rate."""
    batch_size: int = 4
    """Rows per device per step."""
    gradient_accumulation_steps: int = 1
    """Steps whose gradients are summed before an update."""
    max_length: int = 1024
    """Longest training sequence, in tokens (longer ones are cut)."""
    seed: int = 0
    """Seed of shuffling and initialisation."""
    precision: str = "auto"
    """"auto" (bf16 on a GPU that supports it, float32 on a CPU), "bf16" (autocast to bfloat16,
    on a CPU too: faster where the CPU has AVX512-BF16 or AMX) or "fp32"."""

    def validate(self):
        if not self.data:
            return "data", "is required"
        if not self.out:
            return "out", "is required"
        if self.rounds < 0:
            return "rounds", "must be 0 (every round) or more"
        if self.learning_rate <= 0:
            return "learning_rate", "must be positive"
        return precision_problem(self.precision)
