"""vLLM engine vs the transformers engine on a ~25M-parameter local model: tokens/s ratio.

Same prompts, same batch, same sampling (n samples per prompt, fixed length: no early stop since
the random model rarely emits its end token). Run: ``.venv/bin/python -m bench.engines``.
"""

from __future__ import annotations

import argparse
import asyncio

from bench._common import PROMPTS, Timer, report, small_model
from services.engines import SamplingSpec, create_engine


async def tokens_per_second(engine, prompts, spec, repeats: int) -> float:
    await engine.generate(prompts[:1], SamplingSpec(max_tokens=4))  # warm up
    tokens, seconds = 0, 0.0
    for _ in range(repeats):
        with Timer() as t:
            out = await engine.generate(prompts, spec)
        seconds += t.seconds
        tokens += sum(len(s.token_ids) for c in out for s in c.samples)
    return tokens / seconds


async def main(args) -> None:
    model = small_model()
    spec = SamplingSpec(n=args.n, max_tokens=args.max_tokens, temperature=1.0, seed=0)
    figures = {"model": "bench-small-25m", "prompts": len(PROMPTS), "n": args.n, "max_tokens": args.max_tokens}
    hf = await create_engine("transformers", model)
    prompts = [hf.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    figures["transformers_tokens_per_s"] = await tokens_per_second(hf, prompts, spec, args.repeats)
    await hf.close()
    vllm = await create_engine("vllm", model, options={"max_model_len": 1024})
    figures["vllm_tokens_per_s"] = await tokens_per_second(vllm, prompts, spec, args.repeats)
    await vllm.close()
    figures["ratio_vllm_over_transformers"] = figures["vllm_tokens_per_s"] / figures["transformers_tokens_per_s"]
    report("engines", figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
