"""Judge throughput: log-prob labels against the physical limit of the engine, chain-of-thought
labels, the judge's answer written as text, and labels through the judge service vs in-process.

One vLLM engine on a ~25M-parameter local model (``--model`` for another, e.g. SmolLM2-135M).

- ``logprob``: ``Judge.compare`` in log-prob mode (one prefill per comparison, few-shot examples
  in place), the mode the pipeline uses.
- ``bare_prefill`` (the physical-limit line): the same engine prefilling only each comparison's
  own tokens (its judging prompt without the few-shot examples, fresh text every pass), i.e. the
  engine's prefill tokens/s divided by the tokens per comparison. The judge should stay within
  1.5x of it (``ratio_bare_prefill_over_logprob``).
- ``chain_of_thought``: ``Judge.compare`` in CoT mode: the reasoning of all comparisons of the
  request is sampled in one batch (capped at ``--cot-tokens``, default the judge service's
  ``cot_max_tokens``), then one prefill reads the answer; ``cot_capped`` counts the reasonings
  that reached the cap.
- ``text``: decoding the judge's answer as text (``--text-tokens``) instead of reading log-probs.
- ``service`` vs ``in_process``: the same log-prob labels through the gRPC service.

``logprob_prefix_cache_hit_ratio``: share of the log-prob passes' prompt tokens vLLM found in its
prefix cache (``cai_engine_prefix_cache_*``). The few-shot examples come from ``few_shot_slates``
slates per seed (``services/judge/labeler.py``), so the comparisons of a slate share their prefix.

Every timed pass uses fresh answers, so no pass profits from another's cached prompts (the
few-shot prefix is shared by design). Run: ``.venv/bin/python -m bench.judge``.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from bench._common import Timer, report, small_model
from services.api.cai.v1 import common_pb2, judge_pb2, judge_pb2_grpc
from services.common.channels import open_aio_channel
from services.common.served_model import ServedModel
from services.common.server import ServerConfig
from services.constitution import load_constitution
from services.engines import SamplingSpec, create_engine
from services.engines.config import EngineConfig
from services.judge import prompting
from services.judge.config import JudgeConfig
from services.judge.labeler import CHAIN_OF_THOUGHT, ComparisonItem, Judge
from services.judge.service import SERVICE, build_judge_service
from services.prompts import RED_TEAM, load_prompts


def _prefix_cache() -> tuple[float, float]:
    from prometheus_client import REGISTRY

    return (
        REGISTRY.get_sample_value("cai_engine_prefix_cache_queries_total") or 0.0,
        REGISTRY.get_sample_value("cai_engine_prefix_cache_hits_total") or 0.0,
    )


async def main(args) -> None:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    model = args.model or small_model()
    if args.model:
        from services.models.registry import resolve_model

        model = resolve_model(args.model)
    engine = await create_engine("vllm", model, options={"max_model_len": 4096})
    judge = Judge(engine, load_constitution(), few_shot_slates=args.slates)
    prompts = load_prompts(RED_TEAM)[: args.comparisons]
    served = ServedModel(SERVICE, engine)
    service = await build_judge_service(
        JudgeConfig(
            engine=EngineConfig(model=model),
            server=ServerConfig(host="127.0.0.1", port=0, metrics_port=-1),
            few_shot_slates=args.slates,
        ),
        served,
    )
    await service.start()
    channel = open_aio_channel(f"127.0.0.1:{service.port}")
    stub = judge_pb2_grpc.JudgeStub(channel)
    tokens = {"with_few_shot": [], "own": []}

    def items(tag: str) -> list[ComparisonItem]:
        return [
            ComparisonItem(
                tuple(p.messages), f"I can help with a safe version of that ({tag}).", f"No. ({tag})", key=p.id
            )
            for p in prompts
        ]

    def texts(tag: str, few_shot: bool) -> list[list[int]]:
        out = []
        for it in items(tag):
            principle, examples = judge.draw(0, it.draw_key)
            prompt, _ = judge._chat(it, it.answer_a, it.answer_b, principle, examples if few_shot else [], False, "")
            out.append(engine.encode_text(prompt.text + prompting.ANSWER_OPENING))
        tokens["with_few_shot" if few_shot else "own"].append(sum(map(len, out)) / len(out))
        return out

    async def logprob(tag):
        await judge.compare(items(tag), seed=0)

    async def bare_prefill(tag):
        encoded = texts(tag, few_shot=False)
        with Timer() as t:
            await engine.next_token_logprobs(encoded, judge.options.all)
        return t.seconds  # the encoding is not the engine's prefill

    cot = {"labels": 0, "capped": 0}

    async def chain_of_thought(tag):
        labels = await judge.compare(
            items(tag), mode=CHAIN_OF_THOUGHT, seed=0, cot_spec=SamplingSpec(max_tokens=args.cot_tokens)
        )
        cot["labels"] += len(labels)
        cot["capped"] += sum(label.reasoning_capped for label in labels)

    async def text(tag):
        encoded = texts(tag, few_shot=True)
        await engine.generate(encoded, SamplingSpec(max_tokens=args.text_tokens, temperature=0.0))

    async def through_service(tag):
        request = judge_pb2.CompareRequest(
            seed=0,
            comparisons=[
                judge_pb2.Comparison(
                    prompt=common_pb2.Conversation(messages=[common_pb2.ChatMessage(**m) for m in it.messages]),
                    answer_a=it.answer_a,
                    answer_b=it.answer_b,
                    id=it.key,
                )
                for it in items(tag)
            ],
        )
        await stub.Compare(request, timeout=600)

    await logprob("warm-up")
    await bare_prefill("warm-up")
    await through_service("warm-up")
    passes = (
        ("logprob", logprob),
        ("bare_prefill", bare_prefill),
        ("chain_of_thought", chain_of_thought),
        ("text", text),
        ("service", through_service),
        ("in_process", logprob),
    )
    seconds = {name: 0.0 for name, _ in passes}
    cache = {"queries": 0.0, "hits": 0.0}  # vLLM's prefix cache over the log-prob passes
    for r in range(args.repeats):
        for name, fn in passes:
            q0, h0 = _prefix_cache()
            with Timer() as t:
                inner = await fn(f"{name}-{r}")
            seconds[name] += inner if inner is not None else t.seconds
            if name == "logprob":
                q1, h1 = _prefix_cache()
                cache["queries"] += q1 - q0
                cache["hits"] += h1 - h0
    await channel.close()
    await service.stop(grace=1)  # closes the engine
    n = len(prompts) * args.repeats
    own = sum(tokens["own"]) / len(tokens["own"])
    rate = {name: n / s for name, s in seconds.items()}
    figures = {
        "model": args.model or "bench-small-25m",
        "comparisons": len(prompts),
        "repeats": args.repeats,
        "logprob_labels_per_s": rate["logprob"],
        "bare_prefill_labels_per_s": rate["bare_prefill"],
        "prefill_tokens_per_s": rate["bare_prefill"] * own,
        "tokens_per_comparison_own": own,
        "tokens_per_comparison_with_few_shot": sum(tokens["with_few_shot"]) / len(tokens["with_few_shot"]),
        "ratio_bare_prefill_over_logprob": seconds["logprob"] / seconds["bare_prefill"],
        "goal_ratio_at_most": 1.5,
        "few_shot_slates": args.slates,
        "logprob_prefix_cache_hit_ratio": cache["hits"] / cache["queries"] if cache["queries"] else None,
        "chain_of_thought_labels_per_s": rate["chain_of_thought"],
        "cot_max_tokens": args.cot_tokens,
        "cot_capped": cot["capped"],
        "cot_labels": cot["labels"],
        "ratio_logprob_over_chain_of_thought": seconds["chain_of_thought"] / seconds["logprob"],
        "text_labels_per_s": rate["text"],
        "text_max_tokens": args.text_tokens,
        "ratio_logprob_over_text": seconds["text"] / seconds["logprob"],
        "service_labels_per_s": rate["service"],
        "in_process_labels_per_s": rate["in_process"],
        "ratio_service_over_in_process": seconds["in_process"] / seconds["service"],
        "option_tokens": [list(judge.options.a), list(judge.options.b)],
        "answer_opening": prompting.ANSWER_OPENING,
        "load_average_at_start": load_at_start,
    }
    report("judge" + (f"-{args.name}" if args.name else ""), figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model folder or packaged name (default: the 25M bench model)")
    parser.add_argument("--name", default="", help="suffix of the results file (bench/results/judge-NAME.json)")
    parser.add_argument("--comparisons", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument(
        "--slates",
        type=int,
        default=JudgeConfig().few_shot_slates,
        help="few-shot slates per seed (default: the judge service's few_shot_slates)",
    )
    parser.add_argument(
        "--cot-tokens",
        type=int,
        default=JudgeConfig().cot_max_tokens,
        help="cap of the chain-of-thought reasoning (default: the judge service's cot_max_tokens)",
    )
    asyncio.run(main(parser.parse_args()))
