"""The engine interface: sampling answers and computing log-probabilities on token-id prompts.

Prompts are token ids, produced by ``Engine.encode_chat`` with the model's own chat template, so
every engine sees exactly the same tokens and results can be compared across engines.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.errors import Unavailable

ENGINE_NAMES = ("vllm", "transformers")


class EngineError(Unavailable, RuntimeError):
    """The engine could not do what was asked (bad model, failed load, dead engine)."""


class EngineInputError(EngineError, ValueError):
    """The engine refused an input (for example prompt plus answer longer than the context)."""

    status = "INVALID_ARGUMENT"


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample: the engine-neutral form of ``cai.v1.SamplingParams``."""

    n: int = 1
    """Samples per prompt."""
    max_tokens: int = 256
    """Maximum new tokens per sample."""
    temperature: float = 1.0
    """Softmax temperature; 0 is greedy."""
    top_p: float = 1.0
    """Nucleus mass."""
    seed: int | None = None
    """Seed for reproducible sampling; None is random."""
    stop: tuple[str, ...] = ()
    """Strings that end a sample."""


@dataclass(frozen=True)
class Sample:
    """One sampled answer."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    """"stop", "length" or "abort"."""


@dataclass(frozen=True)
class Completion:
    """The ``n`` samples of one prompt."""

    prompt_token_count: int
    samples: list[Sample] = field(default_factory=list)


@dataclass(frozen=True)
class StreamDelta:
    """New text of one sample of one prompt; ``finished`` on its last delta."""

    prompt_index: int
    sample_index: int
    text: str
    finished: bool = False
    finish_reason: str = ""
    token_count: int = 0


class Engine(abc.ABC):
    """An inference engine serving one model.

    An engine is created and used on one asyncio event loop for its whole life (vLLM's AsyncLLM
    requires it). ``close`` releases it; a closed engine is not reused.
    """

    name: str = ""

    def __init__(self, model: str, tokenizer: Any, checkpoint_id: str):
        self.model = model
        self.tokenizer = tokenizer
        self.checkpoint_id = checkpoint_id

    def chat_text(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """A conversation rendered by the model's chat template (special tokens as text)."""
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation after the model's chat template."""
        return self.encode_text(self.chat_text(messages, add_generation_prompt))

    def encode_text(self, text: str) -> list[int]:
        """Token ids of text that already holds any special tokens it needs."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def healthy(self) -> bool:
        """False once the engine cannot serve any more (its process died)."""
        return True

    @property
    def eos_token_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        return {i for i in ids if i is not None}

    @abc.abstractmethod
    async def generate(self, prompts: Sequence[list[int]], spec: SamplingSpec) -> list[Completion]:
        """Samples ``spec.n`` answers for every prompt, all prompts batched together."""

    @abc.abstractmethod
    def stream(self, prompts: Sequence[list[int]], spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        """Like ``generate``, yielding text as it is produced."""

    @abc.abstractmethod
    async def prompt_logprobs(self, prompts: Sequence[list[int]]) -> list[list[float | None]]:
        """For every prompt, the log-probability of each token given the ones before it (prefill
        only, no decoding). The first token has no context: its entry is None."""

    @abc.abstractmethod
    async def next_token_logprobs(
        self, prompts: Sequence[list[int]], token_ids: Sequence[int]
    ) -> list[dict[int, float]]:
        """For every prompt, the log-probabilities of the given candidate tokens as the next token
        (one prefill, no decoding): what a multiple-choice judge reads."""

    async def reload_in_place(self, model_path: str, checkpoint_id: str) -> bool:
        """Takes the weights of ``model_path`` into this engine without a second engine, then
        serves them as ``checkpoint_id``; False when this engine cannot (a different architecture
        or tokenizer, or an engine whose in-place reload is not trusted), so the caller starts a
        new engine instead. Must not block the event loop."""
        return False

    @abc.abstractmethod
    async def close(self) -> None:
        """Releases the engine (its processes, memory)."""


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.chat_template is None:
        raise EngineError(f"{model_path}: the tokenizer has no chat template")
    return tokenizer


_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"}


def same_shape(old_path: str, new_path: str) -> bool:
    """Whether two model folders have the same architecture, sizes and tokenizer, so the weights
    of one can be loaded into an engine built for the other."""
    import json

    def config(path: str) -> dict:
        data = json.loads((Path(path) / "config.json").read_text())
        return {k: v for k, v in data.items() if k not in _VOLATILE_CONFIG_KEYS}

    def tokenizer_files(path: str) -> dict:
        names = (
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.json",
            "merges.txt",
            "tokenizer.model",
            "chat_template.jinja",
        )
        return {n: (Path(path) / n).read_bytes() for n in names if (Path(path) / n).is_file()}

    try:
        return config(old_path) == config(new_path) and tokenizer_files(old_path) == tokenizer_files(new_path)
    except (OSError, ValueError):
        return False


def default_checkpoint_id(model_path: str) -> str:
    path = Path(model_path)
    return path.name if path.exists() else model_path


async def create_engine(
    engine: str, model_path: str, *, checkpoint_id: str = "", options: dict | None = None
) -> Engine:
    """Starts an engine of the given kind on the running event loop."""
    checkpoint_id = checkpoint_id or default_checkpoint_id(model_path)
    if engine == "vllm":
        from services.engines.vllm_engine import VLLMEngine

        return await VLLMEngine.start(model_path, checkpoint_id, **(options or {}))
    if engine == "transformers":
        from services.engines.hf_engine import TransformersEngine

        return await TransformersEngine.start(model_path, checkpoint_id, **(options or {}))
    raise EngineError(f"engine must be one of {', '.join(ENGINE_NAMES)}, got {engine!r}")
