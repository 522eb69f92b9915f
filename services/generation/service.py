"""``cai.v1.Generation`` on an engine: Generate, GenerateStream, LoadCheckpoint, GetModelInfo."""

from __future__ import annotations

import logging
import time

import grpc

from services.api.cai.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from services.common import metrics
from services.common.requests import (
    RequestLimits,
    check_count,
    check_prompt_tokens,
    conversation_messages,
    message_bytes_limit,
    off_loop,
    sampling_spec,
)
from services.common.served_model import ModelServicer, ServedModel, checkpoint_access_of, serve_model, start_promoted
from services.common.server import GrpcService, within_deadline
from services.engines import Engine
from services.engines.config import start_engine
from services.generation.config import GenerationConfig

log = logging.getLogger(__name__)

SERVICE = generation_pb2.DESCRIPTOR.services_by_name["Generation"].full_name

FINISH = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "abort": common_pb2.FINISH_REASON_ABORT,
}

TOKENS = metrics.Counter("cai_generation_tokens_total", "Tokens generated (all samples).")
PROMPT_TOKENS = metrics.Counter(
    "cai_generation_prompt_tokens_total", "Prompt tokens processed (after the chat template)."
)
SAMPLES = metrics.Counter("cai_generation_samples_total", "Answers sampled.")
SAMPLES_PER_REQUEST = metrics.Histogram(
    "cai_generation_samples_per_request",
    "Answers sampled per request (prompts times n).",
    buckets=metrics.BATCH_BUCKETS,
)


class GenerationServicer(ModelServicer, generation_pb2_grpc.GenerationServicer):
    checkpoint = ("generation", "causal-lm")
    """LoadCheckpoint loads causal LMs from under ``checkpoint_dir``."""
    info_limits = ("max_n", "max_new_tokens")

    def start_checkpoint(self, path: str | None, checkpoint_id: str):
        return start_engine(self.config.engine, path, checkpoint_id)

    async def _prompts(self, request, engine: Engine) -> tuple[list[list[int]], object]:
        """Checks the request (cheap checks first), then tokenizes off the event loop."""
        check_count(request.prompts, "prompts", self.limits)
        spec = sampling_spec(request.sampling, self.limits)
        conversations = [
            conversation_messages(conv, f"prompts[{i}]", self.limits) for i, conv in enumerate(request.prompts)
        ]
        prompts = await off_loop(lambda: [engine.encode_chat(m) for m in conversations])
        for i, ids in enumerate(prompts):
            check_prompt_tokens(ids, f"prompts[{i}]", self.limits)
        return prompts, spec

    @staticmethod
    def _count(prompts, samples: int, tokens: int) -> None:
        PROMPT_TOKENS.inc(sum(len(p) for p in prompts))
        SAMPLES.inc(samples)
        TOKENS.inc(tokens)
        SAMPLES_PER_REQUEST.observe(samples)
        metrics.BATCH_ITEMS.labels(SERVICE, "Generate").observe(len(prompts))

    async def Generate(self, request, context):
        async with self.served.use() as engine:
            prompts, spec = await self._prompts(request, engine)
            completions = await within_deadline(context, engine.generate(prompts, spec))
        response = generation_pb2.GenerateResponse(model=engine.model, checkpoint_id=engine.checkpoint_id)
        tokens = 0
        for conv, completion in zip(request.prompts, completions):
            out = response.completions.add(prompt_token_count=completion.prompt_token_count, prompt_id=conv.id)
            for s in completion.samples:
                out.samples.add(text=s.text, token_count=len(s.token_ids), finish_reason=FINISH[s.finish_reason])
                tokens += len(s.token_ids)
        self._count(prompts, len(prompts) * spec.n, tokens)
        return response

    async def GenerateStream(self, request, context):
        async with self.served.use() as engine:
            prompts, spec = await self._prompts(request, engine)
            tokens = 0
            deadline = context.time_remaining()
            started = time.monotonic()
            async for delta in engine.stream(prompts, spec):
                if deadline is not None and time.monotonic() - started > deadline:
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while streaming")
                if delta.finished:
                    tokens += delta.token_count
                yield generation_pb2.GenerateChunk(
                    prompt_index=delta.prompt_index,
                    sample_index=delta.sample_index,
                    text_delta=delta.text,
                    finished=delta.finished,
                    finish_reason=FINISH.get(delta.finish_reason, 0),
                    token_count=delta.token_count if delta.finished else 0,
                    checkpoint_id=engine.checkpoint_id,
                )
        self._count(prompts, len(prompts) * spec.n, tokens)


async def start_served_policy(config: GenerationConfig) -> ServedModel:
    """The policy engine, on the checkpoint last promoted to this service when one is recorded
    in the checkpoint directory, else on the configured model."""
    servicer = GenerationServicer(None, config)
    access = checkpoint_access_of(*servicer.checkpoint, config)
    return await start_promoted(SERVICE, access, servicer.start_checkpoint)


async def build_generation_service(config: GenerationConfig, served: ServedModel | None = None) -> GrpcService:
    """The generation service, ready to ``start()``. Starts its engine unless a served model is
    given (the embedded default shares one policy engine between generation and critique)."""
    service = GrpcService(config.server, None, [SERVICE], message_limits=generation_message_limits(config.limits))
    return await serve_model(
        service,
        served,
        lambda: start_served_policy(config),
        lambda served: GenerationServicer(served, config),
        generation_pb2_grpc.add_GenerationServicer_to_server,
    )


def generation_message_limits(limits: RequestLimits) -> dict[str, int]:
    """Largest request per method: one conversation per prompt."""
    size = message_bytes_limit(limits, texts_per_item=1)
    return {"Generate": size, "GenerateStream": size}
