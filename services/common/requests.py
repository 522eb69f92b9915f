"""Checking requests against limits and turning API messages into engine inputs.

A bad request raises ``InvalidRequest(field, message)``; the server interceptor answers it with
INVALID_ARGUMENT and ``"<field>: <message>"``, so a caller knows exactly what to fix.

Cheap checks come first: counts and UTF-8 byte lengths are checked before anything is tokenized,
so an 8 MB prompt is refused in microseconds. Tokenizing (CPU work) runs off the event loop with
:func:`off_loop`, so health checks and small requests are answered meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from services.engines import SamplingSpec
from services.errors import InvalidRequest

__all__ = [
    "InvalidRequest",
    "RequestLimits",
    "check_count",
    "check_path",
    "check_prompt_tokens",
    "check_text",
    "conversation_messages",
    "message_bytes_limit",
    "off_loop",
    "sampling_spec",
    "seed_at",
]

ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS = 8
MAX_STOP_BYTES = 256
SEED_MODULUS = 2**63
"""Seeds are taken modulo 2^63, and so is every seed derived from one (``seed_at``): any uint64 a
caller sends is valid, and no derived seed overflows a signed 64-bit integer (torch, vLLM)."""
_T = TypeVar("_T")


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
    max_text_bytes: int = 65536
    """Longest text of one item (a conversation's messages together, an answer), in UTF-8 bytes;
    checked before tokenizing, so oversized input is refused without work. Also sizes the largest
    request message a method accepts."""
    max_request_bytes: int = 8 * 1024 * 1024
    """Largest request message, in bytes, whatever the item counts: a method accepts
    ``min(max_batch_items * its texts per item * max_text_bytes (+ framing), max_request_bytes)``;
    larger requests are refused with RESOURCE_EXHAUSTED before they are decoded."""

    def validate(self):
        for name in (
            "max_batch_items",
            "max_n",
            "max_new_tokens",
            "default_max_tokens",
            "max_prompt_tokens",
            "max_text_bytes",
            "max_request_bytes",
        ):
            if getattr(self, name) < 1:
                return name, "must be at least 1"
        if self.default_max_tokens > self.max_new_tokens:
            return "default_max_tokens", "must not exceed max_new_tokens"
        return None


def check_count(items: Sequence, field: str, limits: RequestLimits) -> None:
    if not items:
        raise InvalidRequest(field, "must hold at least one item")
    if len(items) > limits.max_batch_items:
        raise InvalidRequest(field, f"{len(items)} items exceeds max_batch_items={limits.max_batch_items}")


def message_bytes_limit(limits: RequestLimits, texts_per_item: int) -> int:
    """The largest request message a method needs: ``max_batch_items`` items of
    ``texts_per_item`` texts of ``max_text_bytes`` each, plus room for the rest of the message,
    at most ``max_request_bytes``."""
    needed = limits.max_batch_items * (texts_per_item * limits.max_text_bytes + 4096) + 65536
    return min(needed, limits.max_request_bytes)


def check_text(text: str, field: str, limits: RequestLimits) -> None:
    """Refuses a text over ``max_text_bytes`` (cheap: no tokenizing)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_text_bytes:
        raise InvalidRequest(field, f"{size} bytes exceeds max_text_bytes={limits.max_text_bytes}")


_CPU = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cai-tokenize")


async def off_loop(fn: Callable[..., _T], *args) -> _T:
    """Runs CPU work (tokenizing) in a worker thread, off the event loop. One thread for the
    process: a fast tokenizer must not be used from two threads at once ("Already borrowed"),
    and the byte limits keep each piece of work short."""
    return await asyncio.get_running_loop().run_in_executor(_CPU, fn, *args)


def check_path(path: str, field: str = "path") -> None:
    """Refuses a file path the operating system would reject (over 4096 bytes, a component over
    255 bytes, a NUL byte), so it answers INVALID_ARGUMENT instead of failing in ``stat``."""
    raw = path.encode("utf-8", "surrogatepass")
    if b"\0" in raw:
        raise InvalidRequest(field, "must not contain a NUL byte")
    if len(raw) > 4096:
        raise InvalidRequest(field, f"{len(raw)} bytes is longer than a path may be (4096)")
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if longest > 255:
        raise InvalidRequest(field, f"a path component of {longest} bytes is longer than a file name may be (255)")


def seed_at(seed: int, offset: int = 0) -> int:
    """The seed ``offset`` steps after ``seed`` (round, sample index), modulo 2^63."""
    return (seed + offset) % SEED_MODULUS


def conversation_messages(conversation, field: str, limits: RequestLimits | None = None) -> list[dict]:
    """The messages of a ``cai.v1.Conversation`` as chat dicts, checked (their total size too,
    when ``limits`` are given)."""
    messages = []
    if not conversation.messages:
        raise InvalidRequest(f"{field}.messages", "must hold at least one message")
    if limits is not None:
        if len(conversation.messages) > 4 * limits.max_batch_items:
            raise InvalidRequest(
                f"{field}.messages",
                f"{len(conversation.messages)} messages is too many (at most {4 * limits.max_batch_items})",
            )
        size = sum(len(m.content.encode("utf-8", "surrogatepass")) for m in conversation.messages)
        if size > limits.max_text_bytes:
            raise InvalidRequest(
                f"{field}.messages", f"{size} bytes of content exceeds max_text_bytes={limits.max_text_bytes}"
            )
    for i, m in enumerate(conversation.messages):
        if m.role not in ROLES:
            raise InvalidRequest(f"{field}.messages[{i}].role", f"must be one of {', '.join(ROLES)}, got {m.role!r}")
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


def check_max_tokens(max_tokens: int, field: str, limits: RequestLimits) -> int:
    """``max_tokens`` if it is within the server's ``max_new_tokens``; INVALID_ARGUMENT naming
    ``field`` otherwise."""
    if max_tokens > limits.max_new_tokens:
        raise InvalidRequest(field, f"{max_tokens} exceeds max_new_tokens={limits.max_new_tokens}")
    return max_tokens


def sampling_spec(params, limits: RequestLimits, field: str = "sampling") -> SamplingSpec:
    """A ``SamplingSpec`` from ``cai.v1.SamplingParams``, defaults filled in, limits enforced."""
    n = params.n or 1
    if n > limits.max_n:
        raise InvalidRequest(f"{field}.n", f"{n} exceeds max_n={limits.max_n}")
    max_tokens = check_max_tokens(params.max_tokens or limits.default_max_tokens, f"{field}.max_tokens", limits)
    temperature = params.temperature if params.HasField("temperature") else 1.0
    if not 0.0 <= temperature <= 2.0 or temperature != temperature:
        raise InvalidRequest(f"{field}.temperature", f"must be in [0, 2], got {temperature}")
    if temperature == 0.0 and n > 1:
        raise InvalidRequest(
            f"{field}.n", f"greedy sampling ({field}.temperature=0) gives one answer: n must be 1, got {n}"
        )
    top_p = params.top_p if params.HasField("top_p") else 1.0
    if not 0.0 < top_p <= 1.0:
        raise InvalidRequest(f"{field}.top_p", f"must be in (0, 1], got {top_p}")
    if len(params.stop) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"{field}.stop", f"at most {MAX_STOP_STRINGS} stop strings")
    if any(not s for s in params.stop):
        raise InvalidRequest(f"{field}.stop", "stop strings must not be empty")
    if any(len(s.encode("utf-8", "surrogatepass")) > MAX_STOP_BYTES for s in params.stop):
        raise InvalidRequest(f"{field}.stop", f"a stop string is longer than {MAX_STOP_BYTES} bytes")
    return SamplingSpec(
        n=n,
        max_tokens=max_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        seed=seed_at(params.seed) if params.HasField("seed") else None,
        stop=tuple(params.stop),
    )
