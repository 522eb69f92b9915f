"""Judge throughput: log-prob labels vs asking the judge to write its answer as text, and labels
through the judge service vs the engine in-process (the service should keep at least 0.9).

One vLLM engine on a ~25M-parameter local model. Log-prob mode is one prefill per comparison;
the text baseline decodes the judge's answer (``max_tokens`` new tokens) and would still have to
parse it. Run: ``.venv/bin/python -m bench.judge``.
"""

from __future__ import annotations

import argparse
import asyncio


from bench._common import Timer, report, small_model
from services.api.cai.v1 import common_pb2, judge_pb2, judge_pb2_grpc
from services.common.served_model import ServedModel
from services.common.channels import open_aio_channel
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
    judge = Judge(engine, load_constitution())
    prompts = load_prompts(RED_TEAM)[: args.comparisons]
    served = ServedModel(SERVICE, engine)
    service = await build_judge_service(JudgeConfig(engine=EngineConfig(model=model),
                                                    server=ServerConfig(host="127.0.0.1", port=0, metrics_port=-1)), served)
    await service.start()
    channel = open_aio_channel(f"127.0.0.1:{service.port}")
    stub = judge_pb2_grpc.JudgeStub(channel)

    def items(tag: str) -> list[ComparisonItem]:
        # fresh answers for every timed pass: no pass profits from another's cached prompts
        return [ComparisonItem(p.messages, f"I can help with a safe version of that ({tag}).", f"No. ({tag})", key=p.id)
                for p in prompts]

    async def logprob(tag):
        await judge.compare(items(tag), seed=0)

    async def text(tag):
        texts = []
        for it in items(tag):
            principle, examples = judge.draw(0, it.key)
            texts.append(engine.encode_text(judge._chat(it, it.answer_a, it.answer_b, principle, examples, False, "")))
        await engine.generate(texts, SamplingSpec(max_tokens=args.text_tokens, temperature=0.0))

    async def through_service(tag):
        request = judge_pb2.CompareRequest(seed=0, comparisons=[
            judge_pb2.Comparison(prompt=common_pb2.Conversation(messages=[common_pb2.ChatMessage(**m) for m in it.messages]),
                                 answer_a=it.answer_a, answer_b=it.answer_b, id=it.key) for it in items(tag)])
        await stub.Compare(request, timeout=600)

    await logprob("warm-up")
    await through_service("warm-up")
    seconds = {"logprob": 0.0, "text": 0.0, "service": 0.0, "in_process": 0.0}
    for r in range(args.repeats):
        for name, fn in (("logprob", logprob), ("text", text), ("service", through_service), ("in_process", logprob)):
            with Timer() as t:
                await fn(f"{name}-{r}")
            seconds[name] += t.seconds
    await channel.close()
    await service.stop(grace=1)  # closes the engine
    n = len(prompts) * args.repeats
    figures = {
        "model": "bench-small-25m", "comparisons": len(prompts), "repeats": args.repeats,
        "logprob_labels_per_s": n / seconds["logprob"],
        "text_labels_per_s": n / seconds["text"], "text_max_tokens": args.text_tokens,
        "ratio_logprob_over_text": seconds["text"] / seconds["logprob"],
        "service_labels_per_s": n / seconds["service"], "in_process_labels_per_s": n / seconds["in_process"],
        "ratio_service_over_in_process": seconds["in_process"] / seconds["service"],
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
