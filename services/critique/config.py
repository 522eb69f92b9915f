"""Configuration of the critique service (``cai serve critique --config FILE``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.requests import RequestLimits
from services.common.server import ServerConfig
from services.constitution import DEFAULT_CONSTITUTION
from services.engines.config import EngineConfig


@dataclass(frozen=True)
class CritiqueConfig:
    """A YAML file with the sections below; every field optional."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    """The model that critiques and revises (the policy, in the original method)."""
    server: ServerConfig = field(default_factory=lambda: ServerConfig(port=50052, metrics_port=9091))
    """Ports, TLS, concurrency and shutdown grace."""
    limits: RequestLimits = field(default_factory=lambda: RequestLimits(max_batch_items=64, max_n=1))
    """Per-request limits (items, max_tokens, prompt length)."""
    constitution: str = str(DEFAULT_CONSTITUTION)
    """Constitution file whose critique/revision principles and few-shot examples are used."""
    default_rounds: int = 4
    """Rounds when a request leaves `rounds` at 0."""
    max_rounds: int = 16
    """Most rounds one request may ask for."""
    few_shot: int = 2
    """Few-shot examples in each critique prompt (fewer when the prompt would be too long)."""
    critique_max_tokens: int = 160
    """Default length of a critique when the request's sampling leaves max_tokens unset."""
    revision_max_tokens: int = 256
    """Default length of a revision when the request's sampling leaves max_tokens unset."""

    def validate(self):
        if not 1 <= self.default_rounds <= self.max_rounds:
            return "default_rounds", f"must be in [1, max_rounds={self.max_rounds}]"
        if self.few_shot < 0:
            return "few_shot", "must be 0 or more"
        return None
