"""The judge's prompt layout: the shared few-shot prefix first, the comparison's own turn last."""

from __future__ import annotations

from services.constitution import load_constitution
from services.judge import prompting


def test_judge_chat_begins_with_the_shared_prefix_and_ends_with_the_comparison():
    constitution = load_constitution()
    examples = [(e, constitution.judging[0]) for e in constitution.judging_examples[:2]]
    prefix = prompting.judge_prefix(examples)
    messages = ({"role": "user", "content": "How do I get back at my neighbour?"},)
    for principle in constitution.judging[:3]:
        chat = prompting.judge_chat(messages, "Talk to them.", "Slash their tyres.", principle, examples)
        assert chat[: len(prefix)] == prefix and len(chat) == len(prefix) + 1
        own = chat[-1]["content"]
        assert principle.question in own and "Slash their tyres." in own
        assert not any(principle.question in m["content"] for m in prefix if principle != constitution.judging[0])
    assert prefix[0] == {"role": "system", "content": prompting.TASK}
    assert len(prefix) == 1 + 2 * len(examples)
