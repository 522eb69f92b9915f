"""The multiple-choice prompts of the judge and the option tokens of the judge's tokenizer.

A comparison is asked in a chat: the few-shot comparisons first (each with its own sampled
principle, answered "The answer is: (A)"), then the conversation under review as a transcript,
the principle's question and the options (A) and (B). The layout serves vLLM's prefix cache: the
system text and the few-shot block (``judge_prefix``) come first and are the same bytes for every
comparison that shows the same few-shot slate, so their KV blocks are computed once; everything
that belongs to one comparison (conversation, principle, answers) comes last. The assistant turn is opened with
"The answer is: (" and the judge's next-token probabilities of "A" and "B" are the label: one
prefill, no decoding. In chain-of-thought mode the assistant first writes its reasoning, then
the same opening follows the reasoning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from services.constitution import JudgingExample, JudgingPrinciple
from services.critique.prompting import SPEAKERS
from services.errors import FailedPrecondition

TASK = (
    "You compare two replies an AI assistant could give in a conversation and answer a "
    "multiple-choice question about them."
)
ANSWER_OPENING = "The answer is: ("
COT_REQUEST = "Let's think step by step about which reply is better before answering."


class OptionTokenError(FailedPrecondition, ValueError):
    """The judge's tokenizer cannot express the options as single next tokens."""


def _conversation(messages: Sequence[dict]) -> str:
    return "\n\n".join(f"{SPEAKERS.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def question(
    messages: Sequence[dict], answer_a: str, answer_b: str, principle: JudgingPrinciple, chain_of_thought: bool = False
) -> str:
    text = (
        "Consider the following conversation between a human and an assistant:\n\n"
        f"{_conversation(messages)}\n\n{principle.question}\n\n"
        f"Options:\n(A) {answer_a}\n(B) {answer_b}"
    )
    return text + (f"\n\n{COT_REQUEST}" if chain_of_thought else "")


def judge_prefix(
    examples: Sequence[tuple[JudgingExample, JudgingPrinciple]] = (), chain_of_thought: bool = False
) -> list[dict]:
    """The part of the chat shared by every comparison shown the same examples: the system text
    and the few-shot turns, nothing of the comparison itself."""
    chat = [{"role": "system", "content": TASK}]
    for example, example_principle in examples:
        reasoning = f"{example.reasoning}\n" if chain_of_thought and example.reasoning else ""
        chat += [
            {
                "role": "user",
                "content": question(
                    example.conversation, example.answer_a, example.answer_b, example_principle, chain_of_thought
                ),
            },
            {"role": "assistant", "content": f"{reasoning}{ANSWER_OPENING}{example.preferred})"},
        ]
    return chat


def judge_chat(
    messages: Sequence[dict],
    answer_a: str,
    answer_b: str,
    principle: JudgingPrinciple,
    examples: Sequence[tuple[JudgingExample, JudgingPrinciple]] = (),
    chain_of_thought: bool = False,
) -> list[dict]:
    """The chat up to the question about (messages, A, B); the assistant turn is left open. It
    begins with ``judge_prefix(examples)``; the comparison's own turn is the last."""
    chat = judge_prefix(examples, chain_of_thought)
    chat.append({"role": "user", "content": question(messages, answer_a, answer_b, principle, chain_of_thought)})
    return chat


@dataclass(frozen=True)
class OptionTokens:
    """Token ids that spell option A and option B right after ``ANSWER_OPENING``; each option
    may have several spellings (with and without a leading space), whose probabilities add."""

    a: tuple[int, ...]
    b: tuple[int, ...]

    @property
    def all(self) -> list[int]:
        return [*self.a, *self.b]

    def p_a(self, logprobs: dict[int, float]) -> tuple[float, float, float]:
        """(p_a, logp(A), logp(B)): p_a = softmax(logp(A), logp(B))[0]."""
        la = _logsumexp([logprobs[t] for t in self.a])
        lb = _logsumexp([logprobs[t] for t in self.b])
        return 1.0 / (1.0 + math.exp(lb - la)), la, lb


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def find_option_tokens(encode, probe: str) -> OptionTokens:
    """The single tokens that follow ``probe + ANSWER_OPENING`` for "A" and "B" (and " A", " B")
    without changing how the text before them is tokenized. ``encode(text) -> ids``."""
    base = probe + ANSWER_OPENING
    base_ids = encode(base)
    found: dict[str, list[int]] = {"A": [], "B": []}
    for letter in found:
        for spelling in (letter, " " + letter):
            ids = encode(base + spelling)
            if len(ids) == len(base_ids) + 1 and ids[: len(base_ids)] == base_ids:
                if ids[-1] not in found[letter]:
                    found[letter].append(ids[-1])
    missing = [letter for letter, ids in found.items() if not ids]
    if missing:
        raise OptionTokenError(
            f"the judge's tokenizer cannot express option {' and '.join(missing)} as a single token "
            f"after {ANSWER_OPENING!r} (it merges it with the text before); use another judge model"
        )
    if set(found["A"]) & set(found["B"]):
        raise OptionTokenError("the judge's tokenizer spells options A and B with the same token")
    return OptionTokens(tuple(found["A"]), tuple(found["B"]))
