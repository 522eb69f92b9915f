"""Configuration of the reward service (``cai serve reward --config FILE``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.requests import RequestLimits
from services.common.server import ServerConfig


@dataclass(frozen=True)
class RewardServiceConfig:
    """A YAML file with the sections below; every field optional but ``model``."""

    model: str = ""
    """Reward-model folder (a sequence classifier with one output, as ``cai train reward`` writes)."""
    checkpoint_id: str = ""
    """Id reported for the initial checkpoint; empty means the folder name."""
    device: str = ""
    """Torch device ("cpu", "cuda", "cuda:1"); empty picks cuda when available."""
    dtype: str = "float32"
    """Weights dtype ("float32", "bfloat16")."""
    batch_size: int = 32
    """Answers scored per forward pass."""
    server: ServerConfig = field(default_factory=lambda: ServerConfig(port=50054, metrics_port=9093))
    """Ports, TLS, concurrency and shutdown grace."""
    limits: RequestLimits = field(default_factory=lambda: RequestLimits(max_batch_items=1024, max_prompt_tokens=4096))
    """Per-request limits (items per request, tokens per prompt + answer)."""
    checkpoint_dir: str = ""
    """LoadCheckpoint loads only from under this folder (the trainer's checkpoint volume) and
    records the promoted checkpoint in ``promoted/`` there; a restart serves it again. Empty:
    LoadCheckpoint is refused unless the server listens on loopback only."""

    def validate(self):
        if self.batch_size < 1:
            return "batch_size", "must be at least 1"
        return None
