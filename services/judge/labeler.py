"""Soft labels on an engine, batched: the work behind ``Judge.Compare``.

Log-prob mode is one prefill per comparison and order (``next_token_logprobs``), all comparisons
of a request in one engine batch. Chain-of-thought mode first samples reasoning (batched), then
reads the option probabilities after it and clamps them. With ``swap`` every pair is also judged
with the answers exchanged and the two results averaged, so that
``compare(A, B).p_a == 1 - compare(B, A).p_a``, within one request as across requests: the
principle and few-shot examples of a comparison depend only on the seed and its content (the
conversation and the unordered pair of answers, ``draw_key``), never on its index or id, and
chain-of-thought reasoning is seeded by the content and the order of the answers, so both
orders see the same two judgments and the same pair gets the same label wherever it sits.

Few-shot slates, for vLLM's prefix cache: the few-shot examples are not drawn per comparison but
from ``few_shot_slates`` fixed slates per seed (each a draw of examples and their principles from
the seed and the slate's number alone); a comparison's content picks its slate. Every comparison
of one slate begins with the same system text and few-shot block (``prompting.judge_prefix``), so
the engine computes that prefix once and reads it from its cache after; the comparison's own
principle, conversation and answers follow. Draws stay a function of (seed, content): order- and
batch-invariant.

Chain-of-thought reasoning of all the comparisons (and orders) of a request is sampled together
(one engine batch), capped at the request's ``max_tokens``; a label whose reasoning reached the
cap says so (``Label.reasoning_capped``, counted in ``cai_judge_cot_capped_total``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from services.common import metrics
from services.common.requests import InvalidRequest
from services.constitution import Constitution, JudgingPrinciple
from services.engines import Engine, SamplingSpec
from services.judge import prompting

LOGPROB = "logprob"
CHAIN_OF_THOUGHT = "chain-of-thought"

COT_CAPPED = metrics.Counter(
    "cai_judge_cot_capped_total",
    "Chain-of-thought reasonings cut at the max_tokens cap (the answer was read after the cut).",
)
COT_REASONINGS = metrics.Counter("cai_judge_cot_reasonings_total", "Chain-of-thought reasonings sampled.")


@dataclass(frozen=True)
class ComparisonItem:
    messages: tuple[dict, ...]
    answer_a: str
    answer_b: str
    principle_id: str = ""
    """Judging principle to use; empty: sampled."""
    key: str = ""
    """The caller's id of the comparison (echoed; not used for sampling: see ``draw_key``)."""

    @property
    def draw_key(self) -> str:
        """What the principle and few-shot draw depend on (with the seed): the conversation and the
        unordered pair of answers, so (A, B) and (B, A) draw alike wherever they sit."""
        return draw_key(self.messages, self.answer_a, self.answer_b)


@dataclass(frozen=True)
class Label:
    p_a: float
    principle_id: str
    logprob_a: float
    logprob_b: float
    reasoning: str = ""
    p_a_ab: float = float("nan")
    """Raw p_a of the given order, before swap averaging and clamping."""
    p_a_ba: float | None = None
    """With swap: raw p_a of the exchanged order (answer_b shown as option A)."""
    few_shot_ids: tuple[str, ...] = ()
    """Ids of the few-shot comparisons shown (in the given order's prompt)."""
    reasoning_capped: bool = False
    """Chain-of-thought: the reasoning (of either order) stopped at the max_tokens cap."""


@dataclass
class _Prompt:
    """A judging prompt as the cached ids of its shared prefix and the text of the rest."""

    engine: Engine
    prefix: str
    prefix_ids: list[int]
    rest: str
    _encoded: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @property
    def text(self) -> str:
        return self.prefix + self.rest

    def ids(self, more: str = "") -> list[int]:
        """Token ids of the prompt followed by ``more`` (encoded with the rest, never alone)."""
        if more not in self._encoded:
            self._encoded[more] = self.prefix_ids + self.engine.encode_text(self.rest + more)
        return self._encoded[more]


def draw_key(messages, answer_a: str, answer_b: str) -> str:
    """A content key of a comparison, independent of the order of its answers."""
    content = json.dumps([list(messages), sorted((answer_a, answer_b))], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(content.encode()).hexdigest()[:32]


def _seed(*parts) -> int:
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:15], 16)


class Judge:
    def __init__(
        self,
        engine: Engine,
        constitution: Constitution,
        *,
        few_shot: int = 2,
        few_shot_slates: int = 4,
        max_prompt_tokens: int = 4096,
        cot_min_p: float = 0.4,
        cot_max_p: float = 0.6,
    ):
        self.engine = engine
        self.constitution = constitution
        self.few_shot = few_shot
        self.few_shot_slates = max(1, few_shot_slates)
        self._slates: dict[tuple[int, int], list] = {}
        self._prefix_cache: dict[str, list[int]] = {}
        added = getattr(engine.tokenizer, "added_tokens_decoder", {}) or {}
        self._special = tuple(t.content for t in added.values() if getattr(t, "special", False) and t.content)
        self.max_prompt_tokens = max_prompt_tokens
        self.cot_range = (cot_min_p, cot_max_p)
        probe = engine.chat_text([{"role": "user", "content": "Which is better?"}])
        self.options = prompting.find_option_tokens(engine.encode_text, probe)

    def slate(self, seed: int, index: int) -> list:
        """Few-shot slate ``index`` of ``seed``: examples, each with its own sampled principle; a
        function of (seed, index, constitution, few_shot) alone, shared by every comparison on it."""
        key = (seed, index)
        if key not in self._slates:
            rng = random.Random(f"{seed}/few-shot-slate/{index}")
            pool = list(self.constitution.judging_examples)
            examples = rng.sample(pool, min(self.few_shot, len(pool)))
            self._slates[key] = [(e, self.constitution.sample_judging(rng)) for e in examples]
        return self._slates[key]

    def draw(self, seed: int, key: str, principle_id: str = ""):
        """The principle of a comparison (the given one, or sampled) and its few-shot examples:
        the slate its content picks (see ``slate``)."""
        rng = random.Random(f"{seed}/{key}")
        sampled = self.constitution.sample_judging(rng)
        principle = self.constitution.judging_principle(principle_id) if principle_id else sampled
        return principle, list(self.slate(seed, rng.randrange(self.few_shot_slates)))

    def _prefix_ids(self, prefix: str) -> list[int]:
        """Token ids of a shared prefix (system text and few-shot block), encoded once."""
        if prefix not in self._prefix_cache:
            if len(self._prefix_cache) >= 256:
                self._prefix_cache.clear()
            self._prefix_cache[prefix] = self.engine.encode_text(prefix)
        return self._prefix_cache[prefix]

    def _split(self, text: str, prefix: str) -> _Prompt:
        """``text`` as its shared prefix's cached ids and the rest, where that is exact: the rest
        begins with a special token (the template's next turn), which the tokenizer never merges
        with what comes before. Otherwise the whole text is the rest."""
        rest = text[len(prefix) :]
        if prefix and text.startswith(prefix) and rest.startswith(self._special):
            return _Prompt(self.engine, prefix, self._prefix_ids(prefix), rest)
        return _Prompt(self.engine, "", [], text)

    def _chat(
        self,
        item: ComparisonItem,
        first: str,
        second: str,
        principle: JudgingPrinciple,
        examples,
        cot: bool,
        field: str,
    ) -> tuple[_Prompt, int]:
        """The prompt (template applied, assistant turn open) with as many examples as fit, and
        how many examples it holds."""
        for k in range(len(examples), -1, -1):
            text = self.engine.chat_text(
                prompting.judge_chat(item.messages, first, second, principle, examples[:k], cot)
            )
            prefix = self.engine.chat_text(prompting.judge_prefix(examples[:k], cot), add_generation_prompt=False)
            prompt = self._split(text, prefix)
            # the prompt as read (with the answer opening) fits: so does the text alone, no second encoding
            n = len(prompt.ids(prompting.ANSWER_OPENING))
            if n <= self.max_prompt_tokens or (n := len(prompt.ids())) <= self.max_prompt_tokens:
                return prompt, k
        raise InvalidRequest(
            field, f"{n} tokens with the judging question exceeds max_prompt_tokens={self.max_prompt_tokens}"
        )

    async def _read(self, prompts: list[_Prompt], after: list[str]) -> list[tuple[float, float, float]]:
        ids = [p.ids(a + prompting.ANSWER_OPENING) for p, a in zip(prompts, after)]
        logprobs = await self.engine.next_token_logprobs(ids, self.options.all)
        return [self.options.p_a(lp) for lp in logprobs]

    async def _reason(self, prompts: list[_Prompt], seeds: list[int], spec: SamplingSpec) -> list[tuple[str, bool]]:
        """The reasoning of every prompt and whether it hit the cap. All prompts are submitted at
        once (one seed each, so a prompt's reasoning does not depend on its batch): vLLM decodes
        them in one batch."""
        spec = replace(spec, n=1, stop=tuple(spec.stop) + (prompting.ANSWER_OPENING.rstrip(" ("),))
        outs = await asyncio.gather(
            *(self.engine.generate([p.ids()], replace(spec, seed=s)) for p, s in zip(prompts, seeds))
        )
        samples = [o[0].samples[0] for o in outs]
        capped = [s.finish_reason == "length" for s in samples]
        COT_REASONINGS.inc(len(samples))
        COT_CAPPED.inc(sum(capped))
        return [(s.text.strip(), c) for s, c in zip(samples, capped)]

    async def compare(
        self,
        items: Sequence[ComparisonItem],
        mode: str = LOGPROB,
        swap: bool = False,
        seed: int = 0,
        cot_spec: SamplingSpec | None = None,
    ) -> list[Label]:
        cot = mode == CHAIN_OF_THOUGHT
        drawn = [self.draw(seed, item.draw_key, item.principle_id) for item in items]
        orders = [(i, item.answer_a, item.answer_b) for i, item in enumerate(items)]
        if swap:
            orders += [(i, item.answer_b, item.answer_a) for i, item in enumerate(items)]
        chats = [
            self._chat(items[i], first, second, drawn[i][0], drawn[i][1], cot, f"comparisons[{i}]")
            for i, first, second in orders
        ]
        prompts = [prompt for prompt, _ in chats]
        reasoning, capped = [""] * len(prompts), [False] * len(prompts)
        if cot:
            seeds = [_seed(seed, items[i].draw_key, first, second) for i, first, second in orders]
            reasoned = await self._reason(prompts, seeds, cot_spec or SamplingSpec(max_tokens=256))
            reasoning, capped = [r for r, _ in reasoned], [c for _, c in reasoned]
        read = await self._read(prompts, [f"{r}\n" if cot else "" for r in reasoning])
        lo, hi = self.cot_range
        labels = []
        for i, _item in enumerate(items):
            p, la, lb = read[i]
            raw_ab, raw_ba = p, None
            if cot:
                p = min(max(p, lo), hi)
            if swap:
                q = raw_ba = read[len(items) + i][0]
                if cot:
                    q = min(max(q, lo), hi)
                p = (p + (1.0 - q)) / 2.0
            shown = tuple(e.id for e, _ in drawn[i][1][: chats[i][1]])
            cut = capped[i] or (swap and capped[len(items) + i])
            labels.append(Label(p, drawn[i][0].id, la, lb, reasoning[i], raw_ab, raw_ba, shown, cut))
        return labels
