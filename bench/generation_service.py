"""Generation throughput through the gRPC service vs the same engine called in-process.

One vLLM engine on a ~25M-parameter local model; the same batch and seeds are sent (a) straight
to ``engine.generate`` and (b) through ``cai.v1.Generation/Generate`` on loopback, served by that
same engine. The service should keep at least 0.9 of the in-process tokens/s.
Run: ``.venv/bin/python -m bench.generation_service``.
"""

from __future__ import annotations

import argparse
import asyncio

from bench._common import PROMPTS, Timer, report, small_model
from services.api.cai.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from services.common.channels import open_aio_channel
from services.common.served_model import ServedModel
from services.common.server import ServerConfig
from services.engines import SamplingSpec, create_engine
from services.engines.config import EngineConfig
from services.generation.config import GenerationConfig
from services.generation.service import SERVICE, build_generation_service


async def main(args) -> None:
    model = small_model()
    engine = await create_engine("vllm", model, options={"max_model_len": 1024})
    spec = SamplingSpec(n=args.n, max_tokens=args.max_tokens, temperature=1.0, seed=0)
    prompts = [engine.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    await engine.generate(prompts[:1], SamplingSpec(max_tokens=4))

    in_tokens, in_seconds = 0, 0.0
    for _ in range(args.repeats):
        with Timer() as t:
            out = await engine.generate(prompts, spec)
        in_seconds += t.seconds
        in_tokens += sum(len(s.token_ids) for c in out for s in c.samples)

    config = GenerationConfig(
        engine=EngineConfig(model=model),
        server=ServerConfig(host="127.0.0.1", port=0, metrics_port=-1),
    )
    service = await build_generation_service(config, ServedModel(SERVICE, engine))
    await service.start()
    request = generation_pb2.GenerateRequest(
        prompts=[common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content=p)]) for p in PROMPTS],
        sampling=common_pb2.SamplingParams(n=args.n, max_tokens=args.max_tokens, temperature=1.0, seed=0),
    )
    svc_tokens, svc_seconds = 0, 0.0
    async with open_aio_channel(f"127.0.0.1:{service.port}") as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        await stub.Generate(request, timeout=600)  # warm the channel
        for _ in range(args.repeats):
            with Timer() as t:
                response = await stub.Generate(request, timeout=600)
            svc_seconds += t.seconds
            svc_tokens += sum(s.token_count for c in response.completions for s in c.samples)
    await service.stop(grace=5)
    figures = {
        "model": "bench-small-25m",
        "prompts": len(PROMPTS),
        "n": args.n,
        "max_tokens": args.max_tokens,
        "in_process_tokens_per_s": in_tokens / in_seconds,
        "service_tokens_per_s": svc_tokens / svc_seconds,
    }
    figures["ratio_service_over_in_process"] = figures["service_tokens_per_s"] / figures["in_process_tokens_per_s"]
    report("generation_service", figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
