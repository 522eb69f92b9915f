"""Critique/revision rounds on an engine, batched across items: the work behind ``Critique.Revise``.

Round ``r`` of every item is one batch through the engine for the critiques and one for the
revisions; the next round works on the revisions. Each (item, round) samples its principle
independently from a generator seeded by (seed, item key, round), so a chain is reproducible from
its seed whatever batch it travels in and wherever it sits in it. The few-shot examples (each shown
with its own sampled principle) are drawn per (seed, round), not per item: every critique chat of a
round begins with the same system text and examples, so the engine's prefix cache prefills that
block once per round instead of once per item (on SmolLM2-135M two examples are most of a
critique prompt's tokens).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from services.common.requests import InvalidRequest
from services.constitution import Constitution, CritiquePrinciple
from services.critique import prompting
from services.engines import Engine, SamplingSpec


@dataclass(frozen=True)
class RoundResult:
    round: int
    principle_id: str
    critique: str
    revision: str
    kept_previous: bool
    truncated: bool = False
    """``revision`` stopped at max_tokens before the model finished it (for a kept answer: its flag)."""


@dataclass(frozen=True)
class ReviseItem:
    messages: tuple[dict, ...]
    answer: str
    key: str = ""
    """Stable key of the item for principle sampling (the prompt id); empty: a hash of its
    content (conversation and answer), never its index in the request."""

    @property
    def draw_key(self) -> str:
        if self.key:
            return self.key
        content = json.dumps([list(self.messages), self.answer], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(content.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Chain:
    rounds: tuple[RoundResult, ...]
    final_answer: str

    @property
    def principle_ids(self) -> list[str]:
        return [r.principle_id for r in self.rounds]


class Reviser:
    def __init__(self, engine: Engine, constitution: Constitution, *, few_shot: int = 2, max_prompt_tokens: int = 2048):
        self.engine = engine
        self.constitution = constitution
        self.few_shot = few_shot
        self.max_prompt_tokens = max_prompt_tokens

    def draw(self, seed: int, key: str, round_: int, among: Sequence[str] = ()):
        """The principle of one (item, round), and the round's few-shot examples with their
        principles (the same for every item of the round: a shared, cached prefix)."""
        principle = self.constitution.sample_critique(random.Random(f"{seed}/{key}/{round_}"), among)
        return principle, self.examples(seed, round_)

    def examples(self, seed: int, round_: int) -> list:
        """The few-shot examples of round ``round_`` under ``seed``, each with its own sampled principle."""
        rng = random.Random(f"{seed}/few-shot/{round_}")
        pool = list(self.constitution.critique_examples)
        examples = rng.sample(pool, min(self.few_shot, len(pool)))
        return [(e, self.constitution.sample_critique(rng)) for e in examples]

    def _fit(self, messages, answer, principle: CritiquePrinciple, examples, field: str):
        """The critique chat with as many examples as fit in max_prompt_tokens."""
        for k in range(len(examples), -1, -1):
            chat = prompting.critique_chat(messages, answer, principle, examples[:k])
            ids = self.engine.encode_chat(chat)
            if len(ids) <= self.max_prompt_tokens:
                return chat, ids
        raise InvalidRequest(
            field, f"{len(ids)} tokens with the critique request exceeds max_prompt_tokens={self.max_prompt_tokens}"
        )

    async def revise(
        self,
        items: Sequence[ReviseItem],
        rounds: int,
        critique_spec: SamplingSpec,
        revision_spec: SamplingSpec,
        seed: int,
        among: Sequence[str] = (),
    ) -> list[Chain]:
        answers = [item.answer for item in items]
        results: list[list[RoundResult]] = [[] for _ in items]
        truncated = [False] * len(items)  # of the answer each item holds (the initial one: unknown here)
        for r in range(1, rounds + 1):
            drawn = [self.draw(seed, item.draw_key, r, among) for item in items]
            chats, prompts = [], []
            for i, (item, (principle, examples)) in enumerate(zip(items, drawn)):
                chat, ids = self._fit(item.messages, answers[i], principle, examples, f"items[{i}]")
                chats.append(chat)
                prompts.append(ids)
            spec_c = (
                critique_spec if critique_spec.seed is None else replace(critique_spec, seed=critique_spec.seed + 2 * r)
            )
            critiques = [
                prompting.clean_output(c.samples[0].text)
                for c in await self.engine.generate(prompts, replace(spec_c, n=1))
            ]
            revision_prompts = [
                self.engine.encode_chat(prompting.revision_chat(chat, critique, principle))
                for chat, critique, (principle, _) in zip(chats, critiques, drawn)
            ]
            spec_r = (
                revision_spec
                if revision_spec.seed is None
                else replace(revision_spec, seed=revision_spec.seed + 2 * r + 1)
            )
            samples = [c.samples[0] for c in await self.engine.generate(revision_prompts, replace(spec_r, n=1))]
            revisions = [prompting.clean_output(sample.text) for sample in samples]
            for i, ((principle, _), critique, revision) in enumerate(zip(drawn, critiques, revisions)):
                kept = prompting.is_degenerate(revision)
                if not kept:
                    answers[i] = revision
                    truncated[i] = samples[i].finish_reason == "length"
                results[i].append(RoundResult(r, principle.id, critique, answers[i], kept, truncated[i]))
        return [Chain(tuple(rs), answers[i]) for i, rs in enumerate(results)]
