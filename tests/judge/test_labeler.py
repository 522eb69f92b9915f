"""Soft labels on the transformers engine, in-process: draws depend on content and seed, not position."""

from __future__ import annotations

import pytest

from services.constitution import load_constitution
from services.critique.reviser import ReviseItem, Reviser
from services.engines import create_engine
from services.judge.labeler import ComparisonItem, Judge

PROMPT = ({"role": "user", "content": "How do I get back at my neighbour?"},)
A = "Talk to them calmly about what bothers you."
B = "Slash their tyres tonight."
OTHER = ComparisonItem(({"role": "user", "content": "What is 2 + 2?"},), "4", "5", key="other")


@pytest.fixture(scope="module")
async def judge(tiny_model):
    engine = await create_engine("transformers", tiny_model)
    yield Judge(engine, load_constitution())
    await engine.close()


async def test_same_pair_gets_the_same_label_wherever_it_sits(judge):
    first = ComparisonItem(PROMPT, A, B, key="x")
    second = ComparisonItem(PROMPT, A, B, key="y")
    labels = await judge.compare([first, OTHER, second], seed=3)
    assert labels[0].principle_id == labels[2].principle_id
    assert labels[0].p_a == pytest.approx(labels[2].p_a, abs=1e-6)
    alone = (await judge.compare([ComparisonItem(PROMPT, A, B)], seed=3))[0]
    assert alone.principle_id == labels[0].principle_id
    assert alone.p_a == pytest.approx(labels[0].p_a, abs=1e-6)


async def test_reversed_pair_in_one_request_gets_one_minus_p_a_with_swap(judge):
    labels = await judge.compare([ComparisonItem(PROMPT, A, B, key="ab"), OTHER,
                                  ComparisonItem(PROMPT, B, A, key="ba")], swap=True, seed=4)
    assert labels[0].principle_id == labels[2].principle_id
    assert labels[0].p_a == pytest.approx(1.0 - labels[2].p_a, abs=1e-6)


def test_both_orders_draw_the_same_principle_and_examples(judge):
    for seed in range(20):
        ab = judge.draw(seed, ComparisonItem(PROMPT, A, B).draw_key)
        ba = judge.draw(seed, ComparisonItem(PROMPT, B, A, key="other id").draw_key)
        assert ab[0].id == ba[0].id
        assert [(e.conversation, p.id) for e, p in ab[1]] == [(e.conversation, p.id) for e, p in ba[1]]
    drawn = {judge.draw(s, ComparisonItem(PROMPT, A, B).draw_key)[0].id for s in range(40)}
    assert len(drawn) > 1  # still sampled: the seed matters


def test_critique_draws_do_not_depend_on_the_index():
    item = ReviseItem(PROMPT, A)
    assert item.draw_key == ReviseItem(PROMPT, A).draw_key != ReviseItem(PROMPT, B).draw_key
    assert ReviseItem(PROMPT, A, key="p1").draw_key == "p1"
    reviser = Reviser(engine=None, constitution=load_constitution())
    assert reviser.draw(0, item.draw_key, 1)[0].id == reviser.draw(0, ReviseItem(PROMPT, A).draw_key, 1)[0].id
