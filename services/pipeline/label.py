"""``cai label``: AI feedback. Samples answers from the policy, has the judge label pairs of them
with soft labels, and publishes the labeled comparisons to the queue.

For each prompt the policy samples ``samples_per_prompt`` answers (Generation); the answers are
paired (adjacent pairs 0-1, 2-3, ... or all pairs); the judge labels every pair under a principle
sampled per comparison (Judge); each labeled comparison goes to the queue with its provenance.
Helpfulness preference pairs from a file can be mixed in (the original method mixes human
helpfulness comparisons with AI harmlessness labels): they are published with p_a = 1 or 0,
their A/B order randomised.

Comparison ids are derived from everything that determines a label (:func:`harmlessness_id`):
the prompt (id and text), the pair, the sampling (answers, tokens, temperature, seed), the policy
model and checkpoint, the judge's mode, swap and seed, and the judge's own side as it reports it in
``SoftLabel.judge_config_sha256`` (constitution hash, judge model and checkpoint, few-shot count,
limits). So a re-run after an interruption skips prompts already published and the queue's
idempotent publish drops any repeat, while a re-run under an edited constitution or another judge
checkpoint publishes new comparisons (the old ones stay in the queue).

The loop is a bounded pipeline: ``in_flight`` batches are worked on at once, each Generate ->
Compare -> publish, so generation of the next batches overlaps judging of this one and the
services see concurrent callers (``in_flight=1`` is the sequential loop). Batches publish in
whatever order they finish; a prompt counts as done only when all its comparisons are published,
so a job killed at any moment resumes without duplicates or losses. A failed call fails the job
with the prompt ids of its batch; labels already published stay.

Prompts can be split across parallel workers (an Indexed Job): worker ``shard_index`` of
``num_shards`` takes the prompts (and helpfulness pairs) whose id hashes to it (:func:`shard_of`),
and resumes on its own.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import random
import time
from dataclasses import dataclass, field

from services.common.client import conversation, prompt_conversation
from services.comparison import Comparison
from services.engines.config import EngineConfig
from services.generation.client import GenerationClient
from services.judge.client import JudgeClient
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
    in_flight: int = 4
    """Batches worked on at once (Generate -> Compare -> publish each); 1: the sequential loop."""
    shard_index: int = 0
    """This worker's share of the prompts, 0 .. num_shards-1 (`cai label` defaults it to the
    Indexed Job's JOB_COMPLETION_INDEX)."""
    num_shards: int = 1
    """Parallel workers the prompts are split across (`cai label` defaults it to CAI_NUM_SHARDS)."""

    def validate(self):
        if not self.queue:
            return "queue", "is required (sqlite:///path.db or redis://host:port/db)"
        if self.samples_per_prompt < 2:
            return "samples_per_prompt", "must be at least 2 (answers are compared in pairs)"
        if self.pairs not in ("adjacent", "all"):
            return "pairs", "must be adjacent or all"
        if self.mode not in ("logprob", "chain-of-thought"):
            return "mode", "must be logprob or chain-of-thought"
        if self.batch_size < 1:
            return "batch_size", "must be at least 1"
        if self.in_flight < 1:
            return "in_flight", "must be at least 1"
        if self.num_shards < 1:
            return "num_shards", "must be at least 1"
        if not 0 <= self.shard_index < self.num_shards:
            return "shard_index", (
                f"must be in 0..{self.num_shards - 1} (num_shards={self.num_shards}; "
                "set --num-shards or CAI_NUM_SHARDS to the Job's completions)"
            )
        if bool(self.generation) != bool(self.judge):
            return "judge", "give both service addresses (generation and judge) or neither"
        return None


def pair_indices(n: int, how: str) -> list[tuple[int, int]]:
    if how == "all":
        return list(itertools.combinations(range(n), 2))
    return [(i, i + 1) for i in range(0, n - 1, 2)]


def comparison_id(*parts) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


class LabelError(RuntimeError):
    """A call of the label job failed or answered short; the message names the prompts concerned."""


def shard_of(prompt_id: str, num_shards: int) -> int:
    """The worker (0 .. num_shards-1) that handles a prompt: a stable hash of its id, so the split
    does not depend on the order of the file or on which prompts are already done."""
    return int(hashlib.sha256(prompt_id.encode()).hexdigest()[:16], 16) % num_shards


def select_prompts(items: list[Prompt], cfg: LabelConfig) -> list[Prompt]:
    """The first ``limit`` items (all if 0), then this worker's shard of them."""
    if cfg.limit:
        items = items[: cfg.limit]
    return [p for p in items if shard_of(p.id, cfg.num_shards) == cfg.shard_index]


def judge_key(label) -> str:
    """What on the judge's side determined ``label`` (a ``SoftLabel``): its judge_config_sha256, or
    for a judge that does not report one, its constitution hash, model and checkpoint."""
    if label.judge_config_sha256:
        return label.judge_config_sha256
    prov = label.provenance
    return comparison_id("provenance", prov.constitution_sha256, prov.model, prov.checkpoint)


def harmlessness_id(
    cfg: LabelConfig, p: Prompt, i: int, j: int, policy_model: str, policy_checkpoint: str, judge: str
) -> str:
    """The idempotent id of the comparison of answers i and j to prompt ``p``: a hash of everything
    that determines its label. ``judge`` is :func:`judge_key` of the judge that labels it."""
    prompt = hashlib.sha256(json.dumps(list(p.messages), sort_keys=True).encode()).hexdigest()
    return comparison_id(
        "harmlessness",
        p.id,
        prompt,
        i,
        j,
        cfg.samples_per_prompt,
        cfg.max_tokens,
        cfg.temperature,
        cfg.seed,
        policy_model,
        policy_checkpoint,
        cfg.mode,
        cfg.swap_debias,
        judge,
    )


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
        out.append(
            Comparison(
                id=comparison_id("helpfulness", source, p.id),
                kind="helpfulness",
                prompt=list(p.messages),
                answer_a=rejected if swap else chosen,
                answer_b=chosen if swap else rejected,
                p_a=0.0 if swap else 1.0,
                principle_id="",
                prompt_id=p.id,
                provenance={
                    "constitution_sha256": "",
                    "judge_model": f"preference-file:{source}",
                    "policy_checkpoint": "",
                    "created_at": created,
                    "source": source,
                },
            ).to_dict()
        )
    return out


@functools.lru_cache(maxsize=8)
def _prompts_sha256(path: str) -> str:
    """SHA-256 of the prompt file (recorded in each label's provenance; ``cai trace`` checks it)."""
    from services.prompts import file_sha256

    return file_sha256(path)


PROBE_ID = "cai-label-probe"


async def _judge_key_now(judge, address: str) -> str:
    """:func:`judge_key` of the judge at ``address``, read from one tiny log-prob comparison (so the
    ids of prompts already done can be known before anything is generated)."""
    import grpc

    from services.api.cai.v1 import judge_pb2

    probe = judge_pb2.Comparison(
        prompt=conversation([{"role": "user", "content": "Hi."}], PROBE_ID),
        answer_a="Hello.",
        answer_b="Hi.",
        id=PROBE_ID,
    )
    try:
        response = await judge.Compare(
            judge_pb2.CompareRequest(comparisons=[probe], mode=judge_pb2.JUDGE_MODE_LOGPROB, swap_debias=False, seed=0),
            timeout=600,
        )
    except grpc.RpcError as exc:
        raise LabelError(
            f"judge at {address}: could not read which judge it is (a one-comparison probe): "
            f"{exc.code().name}: {exc.details()}"
        ) from None
    if len(response.labels) != 1:
        raise LabelError(f"judge at {address}: answered {len(response.labels)} labels to a one-comparison probe")
    return judge_key(response.labels[0])


async def _label_batch(cfg: LabelConfig, batch: list[Prompt], pairs, gen, judge, mode, stats: dict) -> list[dict]:
    """Generate -> Compare for one batch; the labeled comparisons, ready to publish. Adds the
    seconds of each call to ``stats`` (``generate_seconds``, ``compare_seconds``)."""
    import grpc

    from services.api.cai.v1 import judge_pb2

    names = ", ".join(repr(p.id) for p in batch)
    started = time.perf_counter()
    try:
        answers = await gen.generate(
            batch, n=cfg.samples_per_prompt, max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=cfg.seed
        )
    except grpc.RpcError as exc:
        raise LabelError(f"Generate failed for prompt(s) {names}: {exc.code().name}: {exc.details()}") from None
    stats["generate_seconds"] += time.perf_counter() - started
    if len(answers.completions) != len(batch):
        raise LabelError(f"Generate answered {len(answers.completions)} completions for {len(batch)} prompts ({names})")
    comparisons, meta = [], []
    for p, completion in zip(batch, answers.completions):
        if len(completion.samples) != cfg.samples_per_prompt:
            raise LabelError(
                f"Generate answered {len(completion.samples)} samples for prompt {p.id!r}, "
                f"asked for {cfg.samples_per_prompt}"
            )
        texts = [s.text if s.text.strip() else "(no answer)" for s in completion.samples]
        for i, j in pairs:
            comparisons.append(
                judge_pb2.Comparison(
                    prompt=prompt_conversation(p), answer_a=texts[i], answer_b=texts[j], id=f"{p.id}/{i}-{j}"
                )
            )
            meta.append((p, i, j))
    started = time.perf_counter()
    try:
        labels = await judge.Compare(
            judge_pb2.CompareRequest(
                comparisons=comparisons,
                mode=mode,
                swap_debias=cfg.swap_debias,
                seed=cfg.seed,
            ),
            timeout=3600,
        )
    except grpc.RpcError as exc:
        raise LabelError(f"Compare failed for prompt(s) {names}: {exc.code().name}: {exc.details()}") from None
    stats["compare_seconds"] += time.perf_counter() - started
    if len(labels.labels) != len(comparisons):
        raise LabelError(
            f"Compare answered {len(labels.labels)} labels for {len(comparisons)} comparisons of prompt(s) {names}"
        )
    items = []
    for c, label, (p, i, j) in zip(comparisons, labels.labels, meta):
        prov = label.provenance
        key = judge_key(label)
        items.append(
            Comparison(
                id=harmlessness_id(cfg, p, i, j, answers.model, answers.checkpoint_id, key),
                kind="harmlessness",
                prompt=list(p.messages),
                answer_a=c.answer_a,
                answer_b=c.answer_b,
                p_a=label.p_a,
                principle_id=label.principle_id,
                prompt_id=p.id,
                category=p.category,
                reasoning=label.reasoning,
                sample_indices=[i, j],
                provenance={
                    "constitution_file": prov.constitution_file,
                    "constitution_sha256": prov.constitution_sha256,
                    "principle_id": prov.principle_id,
                    "judge_model": prov.model,
                    "judge_checkpoint": prov.checkpoint,
                    "judge_config_sha256": key,
                    "policy_model": answers.model,
                    "policy_checkpoint": answers.checkpoint_id,
                    "prompt_id": p.id,
                    "mode": cfg.mode,
                    "swap_debias": cfg.swap_debias,
                    "seed": cfg.seed,
                    "prompts_file": cfg.prompts,
                    "prompts_sha256": _prompts_sha256(cfg.prompts),
                    "created_at": prov.created_at.ToJsonString(),
                },
            ).to_dict()
        )
    return items


async def _label(cfg: LabelConfig, queue, addresses: dict, progress: bool) -> dict:
    from tqdm import tqdm

    from services.api.cai.v1 import common_pb2, judge_pb2

    prompts = select_prompts(load_prompts(cfg.prompts), cfg)
    pairs = pair_indices(cfg.samples_per_prompt, cfg.pairs)
    stats = {
        "comparisons_published": 0,
        "helpfulness_published": 0,
        "prompts_skipped_as_done": 0,
        "prompts": len(prompts),
        "shard": [cfg.shard_index, cfg.num_shards],
        "in_flight": cfg.in_flight,
        "peak_in_flight": 0,
        "generate_seconds": 0.0,
        "compare_seconds": 0.0,
        "timeline": [],
    }
    started = time.perf_counter()
    async with GenerationClient(addresses["generation"]) as gen, JudgeClient(addresses["judge"]) as judge:
        policy = await gen.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=60)
        key = await _judge_key_now(judge, addresses["judge"])
        mode = judge_pb2.JUDGE_MODE_CHAIN_OF_THOUGHT if cfg.mode == "chain-of-thought" else judge_pb2.JUDGE_MODE_LOGPROB

        def done(p: Prompt) -> bool:
            return all(
                queue.is_published(harmlessness_id(cfg, p, i, j, policy.model, policy.checkpoint_id, key))
                for i, j in pairs
            )

        stats["setup_seconds"] = time.perf_counter() - started  # model info and the judge probe
        todo = []
        for p in prompts:
            if await asyncio.to_thread(done, p):
                stats["prompts_skipped_as_done"] += 1
            else:
                todo.append(p)
        stats["done_check_seconds"] = time.perf_counter() - started - stats["setup_seconds"]
        bar = tqdm(
            total=len(prompts), initial=len(prompts) - len(todo), desc="label", unit="prompt", disable=not progress
        )
        batches = iter([todo[k : k + cfg.batch_size] for k in range(0, len(todo), cfg.batch_size)])
        publishing = asyncio.Lock()
        working = [0]

        async def worker():
            for batch in batches:  # shared by the workers: each takes the next batch not yet taken
                working[0] += 1
                stats["peak_in_flight"] = max(stats["peak_in_flight"], working[0])
                items = await _label_batch(cfg, batch, pairs, gen, judge, mode, stats)
                working[0] -= 1
                async with publishing:
                    stats["comparisons_published"] += await asyncio.to_thread(queue.publish, items)
                    stats["timeline"].append([time.perf_counter() - started, stats["comparisons_published"]])
                bar.update(len(batch))

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(cfg.in_flight, max(1, -(-len(todo) // cfg.batch_size)))):
                    group.create_task(worker())
        except BaseExceptionGroup as exc:  # the first failure, as itself (the others were cancelled)
            raise exc.exceptions[0] from None
        finally:
            bar.close()
    if cfg.helpfulness_pairs:
        pairs_file = select_prompts(load_prompts(cfg.helpfulness_pairs), cfg)
        items = helpfulness_comparisons(pairs_file, cfg.seed, cfg.helpfulness_pairs)
        stats["helpfulness_published"] = await asyncio.to_thread(queue.publish, items)
    stats["seconds"] = time.perf_counter() - started
    stats["comparisons_per_second"] = stats["comparisons_published"] / max(stats["seconds"], 1e-9)
    return stats


async def run_label(cfg: LabelConfig, progress: bool = True) -> dict:
    """Labels the prompts and publishes to ``cfg.queue``; returns counts."""
    from services.pipeline.embedded import EmbeddedSpec, services_at
    from services.queue import open_queue

    load_prompts(cfg.prompts)  # fail fast: a bad prompts file is reported before any engine starts
    if cfg.helpfulness_pairs:
        load_prompts(cfg.helpfulness_pairs)
    queue = open_queue(cfg.queue)
    spec = EmbeddedSpec(
        policy=cfg.policy, judge=cfg.judge_model, constitution=cfg.constitution, metrics_port=cfg.metrics_port
    )
    try:
        async with services_at({"generation": cfg.generation, "judge": cfg.judge}, spec) as addresses:
            return await _label(cfg, queue, addresses, progress)
    finally:
        queue.close()
