"""``cai run``: the main job on the embedded default.

Everything runs on this machine: the services start in this process on loopback, sharing one
engine per model, and talk over real gRPC. Stages so far: generation of answers to the shipped
red-team prompts by the policy. Later stages (SL-CAI, labeling, reward model, PPO, evaluation)
plug in after it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.config import ConfigError, load_config
from services.engines.config import EngineConfig
from services.paths import REPO_ROOT
from services.prompts import load_prompts


@dataclass(frozen=True)
class RunConfig:
    """The main job's configuration (``cai run --config FILE``)."""

    policy: EngineConfig = field(default_factory=EngineConfig)
    """The policy model and its engine (default: SmolLM2-135M-Instruct on vLLM)."""
    red_team_prompts: str = str(REPO_ROOT / "prompts" / "red_team.jsonl")
    """Red-team prompts (JSONL, see prompts/README.md)."""
    num_prompts: int = 8
    """How many prompts to use from the file (the first ones)."""
    samples_per_prompt: int = 2
    """Answers sampled per prompt."""
    max_tokens: int = 96
    """Longest answer, in tokens."""
    seed: int = 0
    """Seed for sampling."""

    def validate(self):
        if self.num_prompts < 1:
            return "num_prompts", "must be at least 1"
        if self.samples_per_prompt < 1:
            return "samples_per_prompt", "must be at least 1"
        return None


async def _run(config: RunConfig, out: Path) -> dict:
    import grpc

    from services.api.cai.v1 import common_pb2, generation_pb2, generation_pb2_grpc
    from services.common.server import ServerConfig
    from services.engines.config import start_engine
    from services.generation.config import GenerationConfig
    from services.common.served_model import ServedModel
    from services.generation.service import SERVICE as GENERATION, build_generation_service

    prompts = load_prompts(config.red_team_prompts)[: config.num_prompts]
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    print(f"[1/2] starting the policy engine ({config.policy.kind}, {config.policy.model})...", flush=True)
    engine = await start_engine(config.policy)
    gen_config = GenerationConfig(
        engine=config.policy, server=ServerConfig(host="127.0.0.1", port=0, metrics_port=-1)
    )
    service = await build_generation_service(gen_config, ServedModel(GENERATION, engine))
    await service.start()
    stages["start"] = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        print(f"[2/2] generating {config.samples_per_prompt} answers for {len(prompts)} prompts "
              f"via cai.v1.Generation on 127.0.0.1:{service.port}...", flush=True)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            request = generation_pb2.GenerateRequest(
                prompts=[
                    common_pb2.Conversation(
                        id=p.id, messages=[common_pb2.ChatMessage(**m) for m in p.messages]
                    )
                    for p in prompts
                ],
                sampling=common_pb2.SamplingParams(
                    n=config.samples_per_prompt, max_tokens=config.max_tokens, seed=config.seed
                ),
            )
            response = await stub.Generate(request, timeout=3600)
        stages["generate"] = time.perf_counter() - t1
    finally:
        await service.stop(grace=5)
    rows = []
    tokens = 0
    with open(out / "answers.jsonl", "w") as f:
        for p, c in zip(prompts, response.completions):
            for i, s in enumerate(c.samples):
                tokens += s.token_count
                row = {"prompt_id": p.id, "sample": i, "messages": list(p.messages),
                       "answer": s.text, "tokens": s.token_count,
                       "model": response.model, "checkpoint": response.checkpoint_id}
                rows.append(row)
                f.write(json.dumps(row) + "\n")
    summary = {"prompts": len(prompts), "answers": len(rows), "tokens": tokens,
               "tokens_per_second": tokens / max(stages["generate"], 1e-9), "stage_seconds": stages}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_main(config_path: str | None, out_dir: str | None) -> int:
    try:
        config = load_config(RunConfig, config_path) if config_path else RunConfig()
    except ConfigError as exc:
        print(f"cai run: {exc}", file=sys.stderr)
        return 2
    out = Path(out_dir) if out_dir else REPO_ROOT / "runs" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    try:
        summary = asyncio.run(_run(config, out))
    except (ValueError, OSError) as exc:
        print(f"cai run: {exc}", file=sys.stderr)
        return 2
    print(f"done: {summary['answers']} answers, {summary['tokens']} tokens "
          f"({summary['tokens_per_second']:.1f} tokens/s); run folder {out}")
    return 0
