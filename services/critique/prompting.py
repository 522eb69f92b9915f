"""The chat prompts of the supervised phase.

Each critique is asked for in a chat: the few-shot examples come first as earlier turns (each with
its own sampled principle), then the conversation under review, shown as a transcript, with the
critique request of this round's principle. The revision request follows the model's critique in
the same chat, so the revision sees the critique it must address.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.constitution import CritiqueExample, CritiquePrinciple

SPEAKERS = {"user": "Human", "assistant": "Assistant", "system": "System"}
TASK = (
    "You review an AI assistant's reply to a human. First you critique the reply as asked; then "
    "you rewrite it as asked. Write only the critique or only the rewritten reply, nothing else. "
    "Keep the critique to two or three sentences. Keep the rewritten reply short, at most a few "
    "sentences, and finish it: a rewrite that stops mid-sentence is no use."
)
"""The system turn of every critique chat. It asks for short critiques and short, finished
rewrites: a small model left to its own length runs into the token limit on most revisions
(SmolLM2-135M at 128 tokens: 29 of 32), and a revision cut off there is flagged and not trained on."""


def transcript(messages: Sequence[dict], answer: str) -> str:
    """The conversation and the assistant's reply as ``Human: ...`` / ``Assistant: ...`` text."""
    lines = [f"{SPEAKERS.get(m['role'], m['role'])}: {m['content']}" for m in messages]
    lines.append(f"Assistant: {answer}")
    return "\n\n".join(lines)


CONVERSATION_LABEL = "Conversation:"
CRITIQUE_LABEL = "Critique request:"
REVISION_LABEL = "Revision request:"


def critique_request(messages: Sequence[dict], answer: str, principle: CritiquePrinciple) -> str:
    return f"{CONVERSATION_LABEL}\n\n" + transcript(messages, answer) + f"\n\n{CRITIQUE_LABEL} {principle.critique}"


def revision_request(principle: CritiquePrinciple) -> str:
    return f"{REVISION_LABEL} {principle.revision}"


def critique_chat(
    messages: Sequence[dict],
    answer: str,
    principle: CritiquePrinciple,
    examples: Sequence[tuple[CritiqueExample, CritiquePrinciple]] = (),
) -> list[dict]:
    """The chat asking for a critique of ``answer`` under ``principle``, after the examples."""
    chat = [{"role": "system", "content": TASK}]
    for example, example_principle in examples:
        chat += [
            {"role": "user", "content": critique_request(example.conversation, example.answer, example_principle)},
            {"role": "assistant", "content": example.critique},
            {"role": "user", "content": revision_request(example_principle)},
            {"role": "assistant", "content": example.revision},
        ]
    chat.append({"role": "user", "content": critique_request(messages, answer, principle)})
    return chat


def revision_chat(critique_chat_: list[dict], critique: str, principle: CritiquePrinciple) -> list[dict]:
    """The same chat continued: the model's critique, then the revision request."""
    return [
        *critique_chat_,
        {"role": "assistant", "content": critique},
        {"role": "user", "content": revision_request(principle)},
    ]


_PREFIX = re.compile(r"^\s*(revision|revised (reply|response|answer)|rewrite|critique)\s*:\s*", re.I)


def clean_output(text: str) -> str:
    """Model output without a leading ``Revision:``/``Critique:`` label and outer whitespace."""
    return _PREFIX.sub("", text, count=1).strip()


def is_degenerate(text: str) -> bool:
    """Empty, or nothing a reader could use (no letter or digit at all)."""
    return not any(ch.isalnum() for ch in text)


# What a revision must not contain: the labels of these prompts, a transcript line opened by one of
# its speakers (the model went on writing the conversation), or a few-shot marker (it started
# another example). A revision holding one leaked the prompt's scaffolding.
_SCAFFOLD = re.compile(
    "|".join(
        [
            re.escape(CRITIQUE_LABEL),
            re.escape(REVISION_LABEL),
            rf"^\s*{re.escape(CONVERSATION_LABEL)}",
            *(rf"^\s*{re.escape(name)}:" for name in SPEAKERS.values()),
            r"\banother example\b",
            r"^\s*example\s*\d*\s*:",
            r"^\s*critique\s*:",
            r"^\s*revision\s*:",
        ]
    ),
    re.IGNORECASE | re.MULTILINE,
)


def leaked_scaffolding(text: str) -> str:
    """The first piece of prompt scaffolding in ``text`` (empty when it has none)."""
    found = _SCAFFOLD.search(text)
    return found.group(0).strip() if found else ""
