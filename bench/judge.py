"""Judge throughput: log-prob labels vs asking the judge to write its answer as text, and labels
through the judge service vs the engine in-process (the service should keep at least 0.9).

One vLLM engine on a ~25M-parameter local model. Log-prob mode is one prefill per comparison;
the text baseline decodes the judge's answer (``max_tokens`` new tokens) and would still have to
parse it. Run: ``.venv/bin/python -m bench.judge``.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from bench._common import Timer, report, small_model
from services.api.cai.v1 import common_pb2, judge_pb2, judge_pb2_grpc
from services.common.served_model import ServedModel
from services.common.server import ServerConfig
from services.constitution import load_constitution
from services.engines import SamplingSpec, create_engine
from services.engines.config import EngineConfig
from services.judge import prompting
from services.judge.config import JudgeConfig
from services.judge.labeler import ComparisonItem, Judge
from services.judge.service import SERVICE, build_judge_service
from services.prompts import RED_TEAM, load_prompts


async def main(args) -> None:
    model = small_model()
    engine = await create_engine("vllm", model, options={"max_model_len": 4096})
    constitution = load_constitution()
    judge = Judge(engine, constitution)
    prompts = load_prompts(RED_TEAM)[: args.comparisons]
    items = [ComparisonItem(p.messages, "I can help with a safe version of that.", "No.", key=p.id) for p in prompts]
    await judge.compare(items[:2], seed=0)  # warm up

    with Timer() as t_logprob:
        for _ in range(args.repeats):
            await judge.compare(items, seed=0)
    n = len(items) * args.repeats

    chats = []
    for i, item in enumerate(items):
        principle, examples = judge.draw(0, item.key)
        chats.append(engine.encode_text(judge._chat(item, item.answer_a, item.answer_b, principle, examples, False, "")))
    with Timer() as t_text:
        for _ in range(args.repeats):
            await engine.generate(chats, SamplingSpec(max_tokens=args.text_tokens, temperature=0.0))

    served = ServedModel(SERVICE, engine)
    service = await build_judge_service(JudgeConfig(engine=EngineConfig(model=model),
                                                    server=ServerConfig(host="127.0.0.1", port=0, metrics_port=-1)), served)
    await service.start()
    request = judge_pb2.CompareRequest(comparisons=[
        judge_pb2.Comparison(prompt=common_pb2.Conversation(messages=[common_pb2.ChatMessage(**m) for m in it.messages]),
                             answer_a=it.answer_a, answer_b=it.answer_b, id=it.key) for it in items], seed=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = judge_pb2_grpc.JudgeStub(channel)
        await stub.Compare(request, timeout=600)
        with Timer() as t_svc:
            for _ in range(args.repeats):
                await stub.Compare(request, timeout=600)
    await service.stop(grace=1)
    with Timer() as t_in:
        for _ in range(args.repeats):
            await judge.compare(items, seed=0)
    await engine.close()
    figures = {
        "model": "bench-small-25m", "comparisons": len(items), "repeats": args.repeats,
        "logprob_labels_per_s": n / t_logprob.seconds,
        "text_labels_per_s": n / t_text.seconds, "text_max_tokens": args.text_tokens,
        "ratio_logprob_over_text": t_text.seconds / t_logprob.seconds,
        "service_labels_per_s": n / t_svc.seconds, "in_process_labels_per_s": n / t_in.seconds,
        "ratio_service_over_in_process": t_in.seconds / t_svc.seconds,
        "option_tokens": [list(judge.options.a), list(judge.options.b)],
        "answer_opening": prompting.ANSWER_OPENING,
    }
    report("judge", figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparisons", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text-tokens", type=int, default=32)
    asyncio.run(main(parser.parse_args()))
