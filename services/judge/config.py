"""Configuration of the judge service (``cai serve judge --config FILE``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.requests import RequestLimits
from services.common.server import ServerConfig
from services.constitution import DEFAULT_CONSTITUTION
from services.engines.config import EngineConfig


@dataclass(frozen=True)
class JudgeConfig:
    """A YAML file with the sections below; every field optional."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    """The judge model (the feedback model) and its engine."""
    server: ServerConfig = field(default_factory=lambda: ServerConfig(port=50053, metrics_port=9092))
    """Ports, TLS, concurrency and shutdown grace."""
    limits: RequestLimits = field(
        default_factory=lambda: RequestLimits(max_batch_items=256, max_n=1, max_prompt_tokens=4096)
    )
    """Per-request limits (comparisons per request, prompt length)."""
    constitution: str = str(DEFAULT_CONSTITUTION)
    """Constitution file whose judging principles and few-shot comparisons are used."""
    few_shot: int = 2
    """Few-shot comparisons shown before each one judged (fewer if the prompt would be too long)."""
    few_shot_slates: int = 4
    """How many different few-shot slates (draws of examples and their principles) a seed has; a
    comparison's content picks one. Comparisons on one slate share the prompt's prefix, which the
    engine's prefix cache computes once: fewer slates, more sharing; more, more varied examples."""
    default_mode: str = "logprob"
    """Mode when a request leaves it unspecified: "logprob" or "chain-of-thought"."""
    cot_min_p: float = 0.4
    """Chain-of-thought labels are clamped to [cot_min_p, cot_max_p] (unclamped CoT labels are
    overconfident and made the policy extreme in the original method)."""
    cot_max_p: float = 0.6
    """Upper clamp of chain-of-thought labels."""
    cot_max_tokens: int = 256
    """Longest chain-of-thought reasoning, in tokens (when the request does not say)."""

    def validate(self):
        if self.default_mode not in ("logprob", "chain-of-thought"):
            return "default_mode", "must be logprob or chain-of-thought"
        if not 0.0 <= self.cot_min_p <= 0.5 <= self.cot_max_p <= 1.0:
            return "cot_min_p", "need 0 <= cot_min_p <= 0.5 <= cot_max_p <= 1"
        if self.few_shot < 0:
            return "few_shot", "must be 0 or more"
        if self.few_shot_slates < 1:
            return "few_shot_slates", "must be 1 or more"
        return None
