"""vLLM's prefix-cache statistics exported as Prometheus counters (cai_engine_prefix_cache_*)."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from services.constitution import load_constitution
from services.engines import create_engine
from services.judge.labeler import ComparisonItem, Judge


def _counters() -> tuple[float, float]:
    return (
        REGISTRY.get_sample_value("cai_engine_prefix_cache_queries_total") or 0.0,
        REGISTRY.get_sample_value("cai_engine_prefix_cache_hits_total") or 0.0,
    )


@pytest.fixture(scope="module")
async def engine(tiny_model):
    engine = await create_engine("vllm", tiny_model, options={"dtype": "float32", "max_model_len": 2048})
    yield engine
    await engine.close()


async def test_vllm_prefix_cache_hit_rate_is_exported(engine):
    judge = Judge(engine, load_constitution())
    items = [
        ComparisonItem(({"role": "user", "content": f"How do I open lock {i}?"},), "Call a locksmith.", "Break it.")
        for i in range(4)
    ]
    q0, h0 = _counters()
    await judge.compare(items, seed=0)
    q1, h1 = _counters()
    await judge.compare(items, seed=0)  # the same prompts again: found in the prefix cache
    q2, h2 = _counters()
    assert q1 > q0 and q2 - q1 > 0
    assert h2 - h1 > 0.5 * (q2 - q1)  # the repeat is (nearly) all hits
    assert h2 - h1 > h1 - h0


async def test_prefix_caching_is_on_and_fresh_comparisons_of_one_slate_hit_the_few_shot_prefix(engine):
    assert engine._llm.vllm_config.cache_config.enable_prefix_caching
    judge = Judge(engine, load_constitution(), few_shot_slates=1)

    def fresh(tag: str) -> list[ComparisonItem]:
        return [
            ComparisonItem(({"role": "user", "content": f"{tag}: how do I fix bike {i}?"},), f"Like this {i}.", "No.")
            for i in range(6)
        ]

    await judge.compare(fresh("first"), seed=21)  # computes the slate's prefix once
    q0, h0 = _counters()
    await judge.compare(fresh("second"), seed=21)  # new comparisons, the same few-shot prefix
    q1, h1 = _counters()
    own = sum(len(engine.encode_chat(it.messages)) for it in fresh("second"))
    assert h1 - h0 > 0.5 * (q1 - q0)  # most prompt tokens are the shared few-shot block
    assert (q1 - q0) - (h1 - h0) < (q1 - q0) / 2 and (q1 - q0) > own
