"""One labeled comparison: the record the label pipeline writes, the queue carries and the reward
model trains on, with its fields declared once.

On the wire and on disk a comparison is a JSON object; :meth:`Comparison.to_dict` writes it in the
shape the queue has always carried (optional fields left out when unset, unknown keys kept) and
:meth:`Comparison.from_dict` reads one back, naming the first field that is wrong. Importing this
module is cheap (no torch, no grpc).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

HARMLESSNESS = "harmlessness"
HELPFULNESS = "helpfulness"
KINDS = (HARMLESSNESS, HELPFULNESS)
"""Allowed values of ``kind`` (default ``harmlessness``)."""

PROVENANCE_KEYS = ("constitution_sha256", "judge_model", "policy_checkpoint", "created_at")
"""Keys a queued comparison's ``provenance`` must carry (strings; more keys are kept)."""


class ComparisonError(ValueError):
    """A comparison record with a wrong field (``field``, ``reason``; the message is ``field: reason``)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass(kw_only=True)
class Comparison:
    """Two answers to one prompt and the probability that A is the better one."""

    id: str = ""
    """Idempotent comparison id (a hash of everything that determines the label)."""
    kind: str = HARMLESSNESS
    """``harmlessness`` (AI-labeled) or ``helpfulness`` (a human preference pair)."""
    prompt: list[dict]
    """The conversation answered: ``{role, content}`` messages, the last one the user's."""
    answer_a: str
    answer_b: str
    p_a: float
    """Probability that ``answer_a`` is the better answer, in [0, 1] (1.0/0.0 for hard labels)."""
    principle_id: str | None = None
    """The constitution principle the judge applied ("" for none; required on the queue)."""
    prompt_id: str | None = None
    category: str | None = None
    reasoning: str | None = None
    """The judge's chain of thought, when it wrote one."""
    sample_indices: list[int] | None = None
    """Which of the policy's samples ``answer_a`` and ``answer_b`` are."""
    provenance: dict | None = None
    """Where the label came from: at least :data:`PROVENANCE_KEYS` on the queue."""
    extra: dict = field(default_factory=dict)
    """Keys of the record this type does not declare (kept as they are)."""

    def to_dict(self) -> dict:
        """The JSON object: declared fields in order (unset optional ones left out), then ``extra``."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name != "extra" and (value := getattr(self, f.name)) is not None:
                out[f.name] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, item: Any, *, queued: bool = True) -> Comparison:
        """The comparison ``item`` describes; raises :class:`ComparisonError` for the first wrong
        field. ``queued``: the queue's contract (``id``, ``principle_id`` and ``provenance``
        required, the last message the user's); otherwise only what training reads."""
        if (problem := check(item, queued=queued)) is not None:
            raise ComparisonError(*problem)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in item.items() if k in names}
        return cls(**known, extra={k: v for k, v in item.items() if k not in names})


def _missing(item: dict, key: str, what: str, wrong: str) -> tuple[str, str]:
    return key, f"is required ({what})" if key not in item else wrong


def check(item: Any, *, queued: bool = True) -> tuple[str, str] | None:
    """(field, reason) for the first problem with ``item`` as a comparison, or None (see
    :meth:`Comparison.from_dict` for ``queued``)."""
    if not isinstance(item, dict):
        return "item", f"must be a JSON object, got {type(item).__name__}"
    cid = item.get("id")
    if (queued or "id" in item) and (not isinstance(cid, str) or not cid):
        return (
            "id",
            "is required (a non-empty string)" if cid is None else f"must be a non-empty string, got {cid!r:.80}",
        )
    prompt = item.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        return "prompt", "is required (a non-empty list of {role, content} messages)"
    for i, m in enumerate(prompt):
        if (
            not isinstance(m, dict)
            or not m.get("role")
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            return f"prompt[{i}]", "must be a {role, content} message with string role and content"
    if queued and prompt[-1]["role"] != "user":
        return "prompt", f"last message must have role 'user', got {prompt[-1]['role']!r:.40}"
    for key in ("answer_a", "answer_b"):
        if not isinstance(item.get(key), str):
            return _missing(item, key, "a string", f"must be a string, got {type(item.get(key)).__name__}")
    p_a = item.get("p_a")
    if "p_a" not in item:
        return "p_a", "is required (a number in [0, 1])"
    if isinstance(p_a, bool) or not isinstance(p_a, (int, float)) or math.isnan(p_a) or not 0.0 <= p_a <= 1.0:
        return "p_a", f"must be a number in [0, 1], got {p_a!r:.40}"
    if queued and not isinstance(item.get("principle_id"), str):
        return _missing(item, "principle_id", "a string", "must be a string")
    prov = item.get("provenance")
    if queued and not isinstance(prov, dict):
        return "provenance", "is required (an object)" if prov is None else "must be an object"
    for key in PROVENANCE_KEYS if queued else ():
        if not isinstance(prov.get(key), str):
            return f"provenance.{key}", "is required (a string)" if key not in prov else "must be a string"
    kind = item.get("kind", HARMLESSNESS)
    if kind not in KINDS:
        return "kind", f"must be one of {', '.join(KINDS)}, got {kind!r:.40}"
    return None
