"""SL-CAI data throughput: through the services vs the same work in-process, and batched vs
one-item-at-a-time critique.

One vLLM engine on a ~25M-parameter local model serves everything. (1) Rows/s of SL-CAI data
(initial answer + critique/revision rounds) produced by ``cai sl-data``'s code through
Generation and Critique on loopback vs by calling the engine and the Reviser directly.
(2) Revise a batch of items in one call vs item by item.
Run: ``.venv/bin/python -m bench.sl_data``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from bench._common import Timer, report, small_model
from services.common.jsonl import read_rows
from services.common.served_model import ServedModel
from services.common.server import ServerConfig
from services.constitution import load_constitution
from services.critique.config import CritiqueConfig
from services.critique.reviser import ReviseItem, Reviser
from services.critique.service import build_critique_service
from services.engines import SamplingSpec, create_engine
from services.engines.config import EngineConfig
from services.generation.config import GenerationConfig
from services.generation.service import SERVICE, build_generation_service
from services.pipeline.sl_data import SLDataConfig, produce_sl_data
from services.prompts import RED_TEAM, load_prompts


async def main(args) -> None:
    model = small_model()
    engine = await create_engine("vllm", model, options={"max_model_len": 4096})
    constitution = load_constitution()
    prompts = load_prompts(RED_TEAM)[: args.prompts]
    reviser = Reviser(engine, constitution, max_prompt_tokens=2048)
    served = ServedModel(SERVICE, engine)
    loop = ServerConfig(host="127.0.0.1", port=0, metrics_port=-1)
    gen = await build_generation_service(GenerationConfig(engine=EngineConfig(model=model), server=loop), served)
    crit = await build_critique_service(CritiqueConfig(engine=EngineConfig(model=model), server=loop), served)
    await gen.start()
    await crit.start()

    def spec(seed: int) -> SamplingSpec:
        return SamplingSpec(max_tokens=args.max_tokens, temperature=1.0, seed=seed)

    async def in_process(seed: int) -> None:
        for i in range(0, len(prompts), args.batch_size):
            batch = prompts[i : i + args.batch_size]
            answers = await engine.generate([engine.encode_chat(p.messages) for p in batch], spec(seed))
            items = [ReviseItem(p.messages, a.samples[0].text or "(no answer)", p.id) for p, a in zip(batch, answers)]
            await reviser.revise(items, args.rounds, spec(seed), spec(seed), seed=seed)

    async def through_services(seed: int) -> None:
        with tempfile.TemporaryDirectory() as out:
            cfg = SLDataConfig(
                prompts=str(RED_TEAM),
                helpfulness="",
                limit=args.prompts,
                rounds=args.rounds,
                batch_size=args.batch_size,
                max_tokens=args.max_tokens,
                seed=seed,
                generation=f"127.0.0.1:{gen.port}",
                critique=f"127.0.0.1:{crit.port}",
            )
            await produce_sl_data(cfg, out, progress=False)
            assert len(read_rows(Path(out) / "sl_cai.jsonl")) == len(prompts) * args.rounds

    await in_process(seed=99)  # warm up (the few-shot prefixes land in vLLM's prefix cache)
    # Alternate the two paths, each on fresh answers (its own seed), so neither profits from
    # prompts the other has just put into the prefix cache.
    t_in = t_svc = 0.0
    for trial in range(args.trials):
        with Timer() as t:
            await in_process(seed=2 * trial)
        t_in += t.seconds
        with Timer() as t:
            await through_services(seed=2 * trial + 1)
        t_svc += t.seconds
    rows = len(prompts) * args.rounds * args.trials

    items = [ReviseItem(p.messages, "I can't help with that.", p.id) for p in prompts[: args.batch_size]]
    with Timer() as t_batched:
        await reviser.revise(items, args.rounds, spec(7), spec(7), seed=7)
    with Timer() as t_single:
        for item in items:
            await reviser.revise([item], args.rounds, spec(8), spec(8), seed=8)
    await crit.stop(grace=1)
    await gen.stop(grace=1)  # closes the shared engine

    figures = {
        "model": "bench-small-25m",
        "prompts": len(prompts),
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "trials": args.trials,
        "in_process_rows_per_s": rows / t_in,
        "service_rows_per_s": rows / t_svc,
        "ratio_service_over_in_process": t_in / t_svc,
        "batched_items_per_s": len(items) / t_batched.seconds,
        "one_at_a_time_items_per_s": len(items) / t_single.seconds,
        "ratio_batched_over_one_at_a_time": t_single.seconds / t_batched.seconds,
    }
    report("sl_data", figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--trials", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
