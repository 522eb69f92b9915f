"""Principle sampling, few-shot prompts and batching of the critique/revision rounds."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from services.constitution import load_constitution
from services.critique import prompting
from services.critique.reviser import ReviseItem, Reviser
from services.engines import SamplingSpec, create_engine


@pytest.fixture(scope="module")
def constitution():
    return load_constitution()


def test_principles_are_uniform_and_independent_per_round(constitution):
    reviser = Reviser(None, constitution)
    draws = [reviser.draw(0, f"p{i}", r)[0].id for i in range(600) for r in (1, 2, 3, 4)]
    counts = Counter(draws)
    assert set(counts) == {p.id for p in constitution.critique_revision}
    expected = len(draws) / len(constitution.critique_revision)
    assert all(abs(n - expected) < 0.35 * expected for n in counts.values())
    # rounds of one prompt are independent draws: repeats happen about 1/K of the time
    same = sum(reviser.draw(0, f"p{i}", 1)[0].id == reviser.draw(0, f"p{i}", 2)[0].id for i in range(600))
    assert same < 600 * 3 / len(constitution.critique_revision)


def test_sampling_is_reproducible_with_a_seed(constitution):
    a, b, c = Reviser(None, constitution), Reviser(None, constitution), Reviser(None, constitution)

    def run(r, seed):
        return [r.draw(seed, f"p{i}", k)[0].id for i in range(20) for k in range(1, 5)]

    assert run(a, 5) == run(b, 5)
    assert run(a, 5) != run(c, 6)


def test_restricting_to_principle_ids(constitution):
    ids = [constitution.critique_revision[0].id, constitution.critique_revision[3].id]
    reviser = Reviser(None, constitution)
    assert {reviser.draw(1, f"p{i}", 1, ids)[0].id for i in range(100)} == set(ids)


def test_few_shot_examples_each_with_their_own_principle(constitution):
    reviser = Reviser(None, constitution, few_shot=2)
    principle, examples = reviser.draw(3, "p1", 1)
    assert len(examples) == 2
    chat = prompting.critique_chat([{"role": "user", "content": "How do I pick a lock?"}], "Sure.", principle, examples)
    text = "\n".join(m["content"] for m in chat)
    for example, example_principle in examples:
        assert example.critique in text and example.revision in text
        assert f"Critique request: {example_principle.critique}" in text
    assert chat[-1]["content"].endswith(f"Critique request: {principle.critique}")
    assert "Human: How do I pick a lock?" in chat[-1]["content"]
    # example principles are drawn independently of the round's principle
    pairs = [reviser.draw(3, f"p{i}", 1) for i in range(300)]
    assert sum(e[0][1].id == p.id for p, e in pairs) < 300 * 3 / len(constitution.critique_revision)


def test_revision_chat_follows_its_critique(constitution):
    p = constitution.critique_revision[0]
    chat = prompting.critique_chat([{"role": "user", "content": "q"}], "a", p)
    rev = prompting.revision_chat(chat, "It is rude.", p)
    assert rev[-2] == {"role": "assistant", "content": "It is rude."}
    assert rev[-1]["content"] == f"Revision request: {p.revision}"


def test_output_cleaning():
    assert prompting.clean_output("Revision: Be kind.\n") == "Be kind."
    assert prompting.clean_output("  critique:  rude ") == "rude"
    assert prompting.is_degenerate("") and prompting.is_degenerate(" \n…?! ")
    assert not prompting.is_degenerate("ok")


class CountingEngine:
    """The real engine, with the size of every batch it is given recorded."""

    def __init__(self, engine):
        self._engine = engine
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    async def generate(self, prompts, spec):
        self.batches.append(len(prompts))
        return await self._engine.generate(prompts, spec)


@pytest.fixture(scope="module")
async def hf_engine(tiny_model):
    engine = await create_engine("transformers", tiny_model)
    yield engine
    await engine.close()


async def test_items_are_batched_round_by_round(constitution, hf_engine):
    engine = CountingEngine(hf_engine)
    items = [ReviseItem(({"role": "user", "content": f"question {i}"},), f"answer {i}", f"p{i}") for i in range(5)]
    spec = SamplingSpec(max_tokens=4, seed=0)
    chains = await Reviser(engine, constitution).revise(items, 3, spec, spec, seed=0)
    assert engine.batches == [5] * 6  # critiques and revisions of each round, all items at once
    assert [len(c.rounds) for c in chains] == [3] * 5
    assert [r.round for r in chains[0].rounds] == [1, 2, 3]


@pytest.fixture(scope="module")
def mute_model(tmp_path_factory):
    """A tiny model that always ends its turn at once: every answer it writes is empty."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig

    from services.models.tiny import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("models") / "mute")
    config = AutoConfig.from_pretrained(path)
    weights = load_file(path / "model.safetensors")
    for name, w in weights.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            w.zero_()  # the residual stream is the token embedding alone
    emb = weights["model.embed_tokens.weight"]
    emb[:, 0] = 1.0  # ...whose first coordinate is always positive
    head = torch.full_like(emb, 0.0)
    head[:, 0] = -50.0
    head[config.eos_token_id, 0] = 50.0  # so the end-of-turn token always wins
    weights["lm_head.weight"] = head
    weights["model.norm.weight"] = torch.ones_like(weights["model.norm.weight"])
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    config.tie_word_embeddings = False
    config.save_pretrained(path)
    return str(path)


async def test_empty_revision_keeps_previous_answer(constitution, mute_model):
    engine = await create_engine("transformers", mute_model)
    try:
        items = [ReviseItem(({"role": "user", "content": "hello"},), "The first answer.", "p")]
        spec = SamplingSpec(max_tokens=8, seed=0)
        (chain,) = await Reviser(engine, constitution).revise(items, 2, spec, spec, seed=0)
    finally:
        await engine.close()
    assert [r.kept_previous for r in chain.rounds] == [True, True]
    assert [r.revision for r in chain.rounds] == ["The first answer."] * 2
    assert chain.final_answer == "The first answer."


async def test_revisions_that_hit_the_token_limit_are_marked_truncated(constitution, hf_engine):
    items = [ReviseItem(({"role": "user", "content": f"question {i}"},), f"answer {i}", f"p{i}") for i in range(3)]
    spec = SamplingSpec(max_tokens=2, seed=0, temperature=1.0)
    chains = await Reviser(hf_engine, constitution).revise(items, 2, spec, spec, seed=0)
    rounds = [r for c in chains for r in c.rounds]
    assert any(r.truncated for r in rounds if not r.kept_previous)


def test_critique_chats_of_one_round_share_their_few_shot_prefix(constitution):
    """The examples are drawn per (seed, round): every item's chat of a round starts with the same
    system text and examples (one cached prefix), and another round draws its own."""
    reviser = Reviser(None, constitution, few_shot=2)
    chats = []
    for i in range(12):
        principle, examples = reviser.draw(3, f"p{i}", 1)
        chats.append(
            prompting.critique_chat([{"role": "user", "content": f"question {i}"}], "Sure.", principle, examples)
        )
    prefix = chats[0][:-1]
    assert len(prefix) == 1 + 4 * 2 and all(chat[:-1] == prefix for chat in chats)
    assert len({chat[-1]["content"] for chat in chats}) == 12
    rounds = {tuple(e.id for e, _ in reviser.draw(3, "p0", r)[1]) for r in range(1, 9)}
    assert len(rounds) > 1
