"""``cai label``: AI feedback. Samples answers from the policy, has the judge label pairs of them
with soft labels, and publishes the labeled comparisons to the queue.

For each prompt the policy samples ``samples_per_prompt`` answers (Generation); the answers are
paired (adjacent pairs 0-1, 2-3, ... or all pairs); the judge labels every pair under a principle
sampled per comparison (Judge); each labeled comparison goes to the queue with its provenance.
Helpfulness preference pairs from a file can be mixed in (the original method mixes human
helpfulness comparisons with AI harmlessness labels): they are published with p_a = 1 or 0,
their A/B order randomised.

Comparison ids are derived from what determines the comparison (prompt, pair, seed, policy
checkpoint, judge checkpoint, constitution), so a re-run after an interruption skips prompts
already published and the queue's idempotent publish drops any repeat.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import time
from dataclasses import dataclass, field

from services.common.channels import open_aio_channel
from services.engines.config import EngineConfig
from services.prompts import HELPFULNESS_PAIRS, RED_TEAM, Prompt, load_prompts


@dataclass(frozen=True)
class LabelConfig:
    """Settings of ``cai label`` (flags of the same names override)."""

    queue: str = ""
    """Queue URL: sqlite:///path.db or redis://host:port/db. Required."""
    prompts: str = str(RED_TEAM)
    """Prompts to answer and compare: JSONL or a local Hugging Face dataset folder."""
    helpfulness_pairs: str = str(HELPFULNESS_PAIRS)
    """Helpfulness preference pairs to mix in (JSONL with chosen/rejected); empty: none."""
    samples_per_prompt: int = 2
    """Answers sampled per prompt (2 or more)."""
    pairs: str = "adjacent"
    """Which answers are compared: "adjacent" (0-1, 2-3, ...) or "all" pairs."""
    limit: int = 0
    """Use only the first N prompts (and N helpfulness pairs); 0: all."""
    batch_size: int = 16
    """Prompts per Generate request (their comparisons go in one Compare request)."""
    max_tokens: int = 128
    """Longest answer, in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the answers."""
    mode: str = "logprob"
    """Judge mode: "logprob" or "chain-of-thought"."""
    swap_debias: bool = True
    """Judge each pair in both orders and average (cancels position bias)."""
    seed: int = 0
    """Seed of answer sampling, principle sampling and the helpfulness order."""
    generation: str = ""
    """Address of a generation service; empty starts one in-process."""
    judge: str = ""
    """Address of a judge service; empty starts one in-process."""
    policy: EngineConfig = field(default_factory=EngineConfig)
    """Policy for the in-process generation service."""
    judge_model: EngineConfig | None = None
    """Model for the in-process judge; None: the policy model (one shared engine)."""
    constitution: str = ""
    """Constitution for the in-process judge (default: constitutions/default.yaml)."""
    metrics_port: int = -1
    """Serve this job's Prometheus metrics on this port (-1: no)."""

    def validate(self):
        if not self.queue:
            return "queue", "is required (sqlite:///path.db or redis://host:port/db)"
        if self.samples_per_prompt < 2:
            return "samples_per_prompt", "must be at least 2 (answers are compared in pairs)"
        if self.pairs not in ("adjacent", "all"):
            return "pairs", "must be adjacent or all"
        if self.mode not in ("logprob", "chain-of-thought"):
            return "mode", "must be logprob or chain-of-thought"
        if bool(self.generation) != bool(self.judge):
            return "judge", "give both service addresses (generation and judge) or neither"
        return None


def pair_indices(n: int, how: str) -> list[tuple[int, int]]:
    if how == "all":
        return list(itertools.combinations(range(n), 2))
    return [(i, i + 1) for i in range(0, n - 1, 2)]


def comparison_id(*parts) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def _conversation(prompt: Prompt):
    from services.api.cai.v1 import common_pb2

    return common_pb2.Conversation(id=prompt.id, messages=[common_pb2.ChatMessage(**m) for m in prompt.messages])


def helpfulness_comparisons(pairs: list[Prompt], seed: int, source: str) -> list[dict]:
    """Preference pairs as comparisons with hard labels, A/B order randomised by the seed."""
    rng = random.Random(f"helpfulness/{seed}")
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = []
    for p in pairs:
        chosen, rejected = p.meta.get("chosen"), p.meta.get("rejected")
        if not isinstance(chosen, str) or not isinstance(rejected, str) or not chosen or not rejected:
            raise ValueError(f"{source}: pair {p.id!r}: needs non-empty `chosen` and `rejected` texts")
        swap = rng.random() < 0.5
        out.append({
            "id": comparison_id("helpfulness", source, p.id),
            "kind": "helpfulness",
            "prompt": list(p.messages),
            "answer_a": rejected if swap else chosen,
            "answer_b": chosen if swap else rejected,
            "p_a": 0.0 if swap else 1.0,
            "principle_id": "",
            "prompt_id": p.id,
            "provenance": {"constitution_sha256": "", "judge_model": f"preference-file:{source}",
                           "policy_checkpoint": "", "created_at": created, "source": source},
        })
    return out


async def _label(cfg: LabelConfig, queue, addresses: dict, progress: bool) -> dict:
    import asyncio

    import grpc
    from tqdm import tqdm

    from services.api.cai.v1 import common_pb2, generation_pb2, generation_pb2_grpc, judge_pb2, judge_pb2_grpc

    prompts = load_prompts(cfg.prompts)
    if cfg.limit:
        prompts = prompts[: cfg.limit]
    pairs = pair_indices(cfg.samples_per_prompt, cfg.pairs)
    stats = {"comparisons_published": 0, "helpfulness_published": 0, "prompts_skipped_as_done": 0,
             "timeline": []}
    started = time.perf_counter()
    async with open_aio_channel(addresses["generation"]) as gch, \
            open_aio_channel(addresses["judge"]) as jch:
        gen = generation_pb2_grpc.GenerationStub(gch)
        judge = judge_pb2_grpc.JudgeStub(jch)
        policy = await gen.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=60)
        mode = (judge_pb2.JUDGE_MODE_CHAIN_OF_THOUGHT if cfg.mode == "chain-of-thought"
                else judge_pb2.JUDGE_MODE_LOGPROB)

        def ids_of(p: Prompt) -> list[str]:
            return [comparison_id(p.id, i, j, cfg.seed, cfg.samples_per_prompt, policy.checkpoint_id,
                                  cfg.mode, cfg.swap_debias) for i, j in pairs]

        todo = []
        for p in prompts:
            done = await asyncio.to_thread(lambda p=p: all(queue.is_published(x) for x in ids_of(p)))
            if done:
                stats["prompts_skipped_as_done"] += 1
            else:
                todo.append(p)
        bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="label", unit="prompt",
                   disable=not progress)
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start : start + cfg.batch_size]
            answers = await gen.Generate(generation_pb2.GenerateRequest(
                prompts=[_conversation(p) for p in batch],
                sampling=common_pb2.SamplingParams(n=cfg.samples_per_prompt, max_tokens=cfg.max_tokens,
                                                   temperature=cfg.temperature, seed=cfg.seed),
            ), timeout=3600)
            comparisons, meta = [], []
            for p, completion in zip(batch, answers.completions):
                texts = [s.text if s.text.strip() else "(no answer)" for s in completion.samples]
                for (i, j), cid in zip(pairs, ids_of(p)):
                    comparisons.append(judge_pb2.Comparison(prompt=_conversation(p), answer_a=texts[i],
                                                            answer_b=texts[j], id=cid))
                    meta.append((p, i, j))
            labels = await judge.Compare(judge_pb2.CompareRequest(
                comparisons=comparisons, mode=mode, swap_debias=cfg.swap_debias, seed=cfg.seed,
            ), timeout=3600)
            items = []
            for c, label, (p, i, j) in zip(comparisons, labels.labels, meta):
                prov = label.provenance
                items.append({
                    "id": c.id, "kind": "harmlessness", "prompt": list(p.messages),
                    "answer_a": c.answer_a, "answer_b": c.answer_b, "p_a": label.p_a,
                    "principle_id": label.principle_id, "prompt_id": p.id, "category": p.category,
                    "reasoning": label.reasoning, "sample_indices": [i, j],
                    "provenance": {
                        "constitution_file": prov.constitution_file,
                        "constitution_sha256": prov.constitution_sha256,
                        "principle_id": prov.principle_id,
                        "judge_model": prov.model, "judge_checkpoint": prov.checkpoint,
                        "policy_model": answers.model, "policy_checkpoint": answers.checkpoint_id,
                        "prompt_id": p.id, "mode": cfg.mode, "swap_debias": cfg.swap_debias,
                        "created_at": prov.created_at.ToJsonString(),
                    },
                })
            stats["comparisons_published"] += await asyncio.to_thread(queue.publish, items)
            stats["timeline"].append([time.perf_counter() - started, stats["comparisons_published"]])
            bar.update(len(batch))
        bar.close()
    if cfg.helpfulness_pairs:
        pairs_file = load_prompts(cfg.helpfulness_pairs)
        if cfg.limit:
            pairs_file = pairs_file[: cfg.limit]
        items = helpfulness_comparisons(pairs_file, cfg.seed, cfg.helpfulness_pairs)
        stats["helpfulness_published"] = await asyncio.to_thread(queue.publish, items)
    stats["seconds"] = time.perf_counter() - started
    stats["comparisons_per_second"] = stats["comparisons_published"] / max(stats["seconds"], 1e-9)
    return stats


async def run_label(cfg: LabelConfig, progress: bool = True) -> dict:
    """Labels the prompts and publishes to ``cfg.queue``; returns counts."""
    from services.pipeline.embedded import EmbeddedSpec, embedded_services
    from services.queue import open_queue

    queue = open_queue(cfg.queue)
    try:
        if cfg.generation:
            if cfg.metrics_port >= 0:
                from services.common.metrics import start_metrics_server

                start_metrics_server(cfg.metrics_port)
            return await _label(cfg, queue, {"generation": cfg.generation, "judge": cfg.judge}, progress)
        spec = EmbeddedSpec(policy=cfg.policy, judge=cfg.judge_model, constitution=cfg.constitution,
                            metrics_port=cfg.metrics_port)
        async with embedded_services(spec, ("generation", "judge")) as addresses:
            return await _label(cfg, queue, addresses, progress)
    finally:
        queue.close()
