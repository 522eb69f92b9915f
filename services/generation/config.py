"""Configuration of the generation service (``cai serve generation --config FILE``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.requests import RequestLimits
from services.common.server import ServerConfig
from services.engines.config import EngineConfig


@dataclass(frozen=True)
class GenerationConfig:
    """A YAML file with the sections below; every field optional."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    """The policy model and the engine serving it."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """Ports, TLS, concurrency and shutdown grace."""
    limits: RequestLimits = field(default_factory=RequestLimits)
    """Per-request limits (prompts, n, max_tokens, prompt length)."""
    checkpoint_dir: str = ""
    """LoadCheckpoint loads only from under this folder (the trainer's checkpoint volume) and
    records the promoted checkpoint in ``promoted/`` there; a restart serves it again. Empty:
    LoadCheckpoint is refused unless the server listens on loopback only."""
