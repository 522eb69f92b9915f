"""vLLM's prefix-cache statistics exported as Prometheus counters (cai_engine_prefix_cache_*)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from services.constitution import load_constitution
from services.engines import create_engine
from services.judge.labeler import ComparisonItem, Judge


def _counters() -> tuple[float, float]:
    return (
        REGISTRY.get_sample_value("cai_engine_prefix_cache_queries_total") or 0.0,
        REGISTRY.get_sample_value("cai_engine_prefix_cache_hits_total") or 0.0,
    )


async def test_vllm_prefix_cache_hit_rate_is_exported(tiny_model):
    engine = await create_engine("vllm", tiny_model, options={"dtype": "float32", "max_model_len": 2048})
    try:
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
    finally:
        await engine.close()
    assert q1 > q0 and q2 - q1 > 0
    assert h2 - h1 > 0.5 * (q2 - q1)  # the repeat is (nearly) all hits
    assert h2 - h1 > h1 - h0
