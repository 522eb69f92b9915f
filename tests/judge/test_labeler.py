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
    labels = await judge.compare(
        [ComparisonItem(PROMPT, A, B, key="ab"), OTHER, ComparisonItem(PROMPT, B, A, key="ba")], swap=True, seed=4
    )
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


async def test_labels_record_raw_orders_seed_and_few_shot_ids(judge, tiny_model):
    item = ComparisonItem(PROMPT, A, B, key="x")
    (label,) = await judge.compare([item], swap=True, seed=7)
    assert label.p_a == pytest.approx((label.p_a_ab + 1.0 - label.p_a_ba) / 2.0)
    _, examples = judge.draw(7, item.draw_key)
    assert label.few_shot_ids == tuple(e.id for e, _ in examples) and len(label.few_shot_ids) == 2
    # the same, through a judge service on a real socket
    from services.api.cai.v1 import common_pb2, judge_pb2, judge_pb2_grpc
    from services.common.channels import open_aio_channel
    from services.engines.config import EngineConfig
    from services.pipeline.embedded import EmbeddedSpec, embedded_services

    spec = EmbeddedSpec(policy=EngineConfig(model=tiny_model, kind="transformers"))
    async with embedded_services(spec, ("judge",)) as started, open_aio_channel(started["judge"]) as channel:
        conversation = common_pb2.Conversation(messages=[common_pb2.ChatMessage(**m) for m in PROMPT])
        response = await judge_pb2_grpc.JudgeStub(channel).Compare(
            judge_pb2.CompareRequest(
                comparisons=[judge_pb2.Comparison(prompt=conversation, answer_a=A, answer_b=B)],
                seed=7,
                swap_debias=True,
            )
        )
        unseeded = await judge_pb2_grpc.JudgeStub(channel).Compare(
            judge_pb2.CompareRequest(comparisons=[judge_pb2.Comparison(prompt=conversation, answer_a=A, answer_b=B)])
        )
    got = response.labels[0]
    assert got.seed == 7 and tuple(got.few_shot_ids) == label.few_shot_ids and got.HasField("p_a_ba")
    assert got.p_a == pytest.approx(label.p_a, abs=1e-5) and got.p_a_ab == pytest.approx(label.p_a_ab, abs=1e-5)
    assert unseeded.labels[0].seed != 0 and not unseeded.labels[0].HasField("p_a_ba")  # the seed it chose


def _items(n: int) -> list[ComparisonItem]:
    return [
        ComparisonItem(({"role": "user", "content": f"Question number {i}: how do I pick lock {i}?"},), A, B)
        for i in range(n)
    ]


def test_comparisons_of_one_slate_share_a_byte_identical_few_shot_prefix(judge):
    from services.judge import prompting

    engine = judge.engine
    by_slate: dict[tuple, list[str]] = {}
    prefixes: dict[tuple, str] = {}
    for item in _items(24):
        principle, examples = judge.draw(5, item.draw_key)
        slate = tuple((e.id, p.id) for e, p in examples)
        prompt, shown = judge._chat(item, item.answer_a, item.answer_b, principle, examples, False, "")
        assert shown == len(examples) == 2
        by_slate.setdefault(slate, []).append(prompt.text)
        prefixes[slate] = engine.chat_text(prompting.judge_prefix(examples), add_generation_prompt=False)
    assert 1 < len(by_slate) <= judge.few_shot_slates  # a few slates, each shared by many comparisons
    assert max(map(len, by_slate.values())) > 1
    for slate, texts in by_slate.items():
        prefix_ids = engine.encode_text(prefixes[slate])
        for text in texts:
            assert text.startswith(prefixes[slate])  # the same bytes, then the comparison's own turn
            assert engine.encode_text(text)[: len(prefix_ids)] == prefix_ids  # and the same tokens
            assert A in text[len(prefixes[slate]) :]


def test_slates_depend_on_seed_and_content_only(judge):
    other = Judge(judge.engine, load_constitution())  # another judge (replica) with the same config
    items = _items(12)
    for seed in (0, 9):
        mine = [judge.draw(seed, it.draw_key) for it in items]
        theirs = [other.draw(seed, it.draw_key) for it in reversed(items)][::-1]
        assert [(p.id, [(e.id, q.id) for e, q in ex]) for p, ex in mine] == [
            (p.id, [(e.id, q.id) for e, q in ex]) for p, ex in theirs
        ]
    slates = {tuple(e.id for e, _ in judge.draw(s, items[0].draw_key)[1]) for s in range(30)}
    assert len(slates) > 1  # the seed still draws the examples


def test_one_slate_per_seed_puts_every_comparison_on_the_same_prefix(judge):
    single = Judge(judge.engine, load_constitution(), few_shot_slates=1)
    drawn = {tuple((e.id, p.id) for e, p in single.draw(2, it.draw_key)[1]) for it in _items(16)}
    assert len(drawn) == 1


async def test_labels_stay_order_invariant_with_slates(judge):
    items = _items(6)
    forward = await judge.compare(items, seed=11)
    backward = (await judge.compare(list(reversed(items)), seed=11))[::-1]
    for f, b in zip(forward, backward):
        assert (f.principle_id, f.few_shot_ids) == (b.principle_id, b.few_shot_ids)
        assert f.p_a == pytest.approx(b.p_a, abs=1e-6)


async def test_chain_of_thought_reasoning_is_capped_and_the_cap_counted(judge):
    from prometheus_client import REGISTRY

    from services.engines import SamplingSpec
    from services.judge.labeler import CHAIN_OF_THOUGHT

    def capped() -> float:
        return REGISTRY.get_sample_value("cai_judge_cot_capped_total") or 0.0

    before = capped()
    labels = await judge.compare(_items(3), mode=CHAIN_OF_THOUGHT, seed=1, cot_spec=SamplingSpec(max_tokens=3))
    assert any(label.reasoning_capped for label in labels)  # a random tiny model rarely stops in 3 tokens
    assert capped() - before == sum(label.reasoning_capped for label in labels)
    assert all(judge.cot_range[0] <= label.p_a <= judge.cot_range[1] for label in labels)


def test_prompts_encoded_as_cached_prefix_plus_rest_are_the_tokens_of_the_whole_text(judge):
    from services.judge import prompting

    for cot in (False, True):
        for item in _items(6):
            principle, examples = judge.draw(8, item.draw_key)
            prompt, _ = judge._chat(item, item.answer_a, item.answer_b, principle, examples, cot, "")
            assert prompt.prefix_ids  # the few-shot block's ids come from the cache
            whole = judge.engine.encode_text(prompt.text + prompting.ANSWER_OPENING)
            assert prompt.ids(prompting.ANSWER_OPENING) == whole
            assert prompt.ids() == judge.engine.encode_text(prompt.text)
