"""Both engines on the same tiny model (float32): same prompt log-probabilities, and sampling
behaves as the interface says."""

from __future__ import annotations

import pytest

from services.engines import SamplingSpec, create_engine

CONVERSATIONS = [
    [{"role": "user", "content": "How do I cook rice?"}],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Which answer is less harmful, (A) or (B)?"},
    ],
]


@pytest.fixture(scope="module")
async def engines(tiny_model):
    hf = await create_engine("transformers", tiny_model, options={"dtype": "float32"})
    vllm = await create_engine("vllm", tiny_model, options={"dtype": "float32", "max_model_len": 1024})
    yield hf, vllm
    await vllm.close()
    await hf.close()


async def test_prompt_logprobs_match(engines):
    hf, vllm = engines
    prompts = [hf.encode_chat(c) for c in CONVERSATIONS]
    assert prompts == [vllm.encode_chat(c) for c in CONVERSATIONS]
    ref = await hf.prompt_logprobs(prompts)
    got = await vllm.prompt_logprobs(prompts)
    for prompt, r, g in zip(prompts, ref, got):
        assert len(r) == len(g) == len(prompt)
        assert r[0] is None and g[0] is None
        for a, b in zip(r[1:], g[1:]):
            assert a == pytest.approx(b, abs=1e-4)
            assert a < 0


async def test_next_token_logprobs_match(engines):
    hf, vllm = engines
    prompts = [hf.encode_chat(c) for c in CONVERSATIONS]
    candidates = hf.encode_text("A") + hf.encode_text("B")
    ref = await hf.next_token_logprobs(prompts, candidates)
    got = await vllm.next_token_logprobs(prompts, candidates)
    for r, g in zip(ref, got):
        assert set(r) == set(g) == set(candidates)
        for t in candidates:
            assert r[t] == pytest.approx(g[t], abs=1e-4)


@pytest.mark.parametrize("which", [0, 1], ids=["transformers", "vllm"])
async def test_generate_n_samples_per_prompt(engines, which):
    engine = engines[which]
    prompts = [engine.encode_chat(c) for c in CONVERSATIONS]
    out = await engine.generate(prompts, SamplingSpec(n=3, max_tokens=6, seed=7))
    assert len(out) == 2
    for prompt, completion in zip(prompts, out):
        assert completion.prompt_token_count == len(prompt)
        assert len(completion.samples) == 3
        for s in completion.samples:
            assert 1 <= len(s.token_ids) <= 6
            assert s.finish_reason in ("stop", "length")
    again = await engine.generate(prompts, SamplingSpec(n=3, max_tokens=6, seed=7))
    assert [[s.token_ids for s in c.samples] for c in out] == [[s.token_ids for s in c.samples] for c in again]


@pytest.mark.parametrize("which", [0, 1], ids=["transformers", "vllm"])
async def test_greedy_is_deterministic_and_engines_agree(engines, which):
    hf, vllm = engines
    prompts = [hf.encode_chat(c) for c in CONVERSATIONS]
    spec = SamplingSpec(n=1, max_tokens=5, temperature=0.0)
    ref = await hf.generate(prompts, spec)
    got = await engines[which].generate(prompts, spec)
    assert [c.samples[0].token_ids for c in got] == [c.samples[0].token_ids for c in ref]


async def test_stream_reassembles_generate(engines):
    _, vllm = engines
    prompts = [vllm.encode_chat(c) for c in CONVERSATIONS]
    spec = SamplingSpec(n=2, max_tokens=6, seed=3)
    final = await vllm.generate(prompts, spec)
    texts: dict[tuple[int, int], str] = {}
    finished = set()
    async for d in vllm.stream(prompts, spec):
        texts[(d.prompt_index, d.sample_index)] = texts.get((d.prompt_index, d.sample_index), "") + d.text
        if d.finished:
            finished.add((d.prompt_index, d.sample_index))
            assert d.token_count == len(final[d.prompt_index].samples[d.sample_index].token_ids)
    assert finished == {(p, s) for p in range(2) for s in range(2)}
    for (p, s), text in texts.items():
        assert text == final[p].samples[s].text


async def test_cpu_engine_runs_its_model_in_the_engine_core_process(engines):
    """On one CPU device the model runs inside vLLM's engine-core process (the ``uni`` executor):
    the core spawns no worker process of its own, one Python start fewer per engine."""
    import psutil

    cores = [p for p in psutil.Process().children() if p.name() == "VLLM::EngineCore"]
    assert cores, "the vLLM engine's core process is not a child of this process"
    assert all(core.children() == [] for core in cores), [c.name() for core in cores for c in core.children()]
