"""Checking requests against limits and turning API messages into engine inputs.

A bad request raises ``InvalidRequest(field, message)``; services answer it with
INVALID_ARGUMENT and ``"<field>: <message>"``, so a caller knows exactly what to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.engines import SamplingSpec

ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS = 8


class InvalidRequest(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for (larger requests get INVALID_ARGUMENT)."""

    max_batch_items: int = 64
    """Most items (prompts, answers, comparisons) in one request."""
    max_n: int = 16
    """Largest number of samples per prompt."""
    max_new_tokens: int = 1024
    """Largest max_tokens per sample."""
    default_max_tokens: int = 256
    """max_tokens when a request leaves it unset."""
    max_prompt_tokens: int = 2048
    """Longest prompt, in tokens after the chat template."""

    def validate(self):
        for name in ("max_batch_items", "max_n", "max_new_tokens", "default_max_tokens", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                return name, "must be at least 1"
        if self.default_max_tokens > self.max_new_tokens:
            return "default_max_tokens", "must not exceed max_new_tokens"
        return None


def check_count(items: Sequence, field: str, limits: RequestLimits) -> None:
    if not items:
        raise InvalidRequest(field, "must hold at least one item")
    if len(items) > limits.max_batch_items:
        raise InvalidRequest(
            field, f"{len(items)} items exceeds max_batch_items={limits.max_batch_items}"
        )


def conversation_messages(conversation, field: str) -> list[dict]:
    """The messages of a ``cai.v1.Conversation`` as chat dicts, checked."""
    messages = []
    if not conversation.messages:
        raise InvalidRequest(f"{field}.messages", "must hold at least one message")
    for i, m in enumerate(conversation.messages):
        if m.role not in ROLES:
            raise InvalidRequest(
                f"{field}.messages[{i}].role", f"must be one of {', '.join(ROLES)}, got {m.role!r}"
            )
        if not m.content and m.role != "system":
            raise InvalidRequest(f"{field}.messages[{i}].content", "must not be empty")
        messages.append({"role": m.role, "content": m.content})
    if messages[-1]["role"] != "user":
        raise InvalidRequest(f"{field}.messages", "the last message must be from user")
    return messages


def check_prompt_tokens(token_ids: list[int], field: str, limits: RequestLimits) -> None:
    if len(token_ids) > limits.max_prompt_tokens:
        raise InvalidRequest(
            field,
            f"{len(token_ids)} tokens exceeds max_prompt_tokens={limits.max_prompt_tokens}",
        )


def sampling_spec(params, limits: RequestLimits, field: str = "sampling") -> SamplingSpec:
    """A ``SamplingSpec`` from ``cai.v1.SamplingParams``, defaults filled in, limits enforced."""
    n = params.n or 1
    if n > limits.max_n:
        raise InvalidRequest(f"{field}.n", f"{n} exceeds max_n={limits.max_n}")
    max_tokens = params.max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_new_tokens:
        raise InvalidRequest(
            f"{field}.max_tokens", f"{max_tokens} exceeds max_new_tokens={limits.max_new_tokens}"
        )
    temperature = params.temperature if params.HasField("temperature") else 1.0
    if not 0.0 <= temperature <= 2.0 or temperature != temperature:
        raise InvalidRequest(f"{field}.temperature", f"must be in [0, 2], got {temperature}")
    top_p = params.top_p if params.HasField("top_p") else 1.0
    if not 0.0 < top_p <= 1.0:
        raise InvalidRequest(f"{field}.top_p", f"must be in (0, 1], got {top_p}")
    if len(params.stop) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"{field}.stop", f"at most {MAX_STOP_STRINGS} stop strings")
    if any(not s for s in params.stop):
        raise InvalidRequest(f"{field}.stop", "stop strings must not be empty")
    return SamplingSpec(
        n=n,
        max_tokens=max_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        seed=params.seed if params.HasField("seed") else None,
        stop=tuple(params.stop),
    )
