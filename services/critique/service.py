"""``cai.v1.Critique`` on an engine: Revise."""

from __future__ import annotations

import dataclasses
import random

from services.api.cai.v1 import common_pb2, critique_pb2, critique_pb2_grpc
from services.common import metrics
from services.common.provenance import provenance
from services.common.requests import (
    InvalidRequest,
    check_count,
    check_max_tokens,
    check_text,
    conversation_messages,
    message_bytes_limit,
    sampling_spec,
    seed_at,
)
from services.common.served_model import ServedModel, ServicerBase, serve_model, start_served
from services.common.server import GrpcService, within_deadline
from services.constitution import Constitution, load_constitution
from services.critique.config import CritiqueConfig
from services.critique.reviser import ReviseItem, Reviser

SERVICE = critique_pb2.DESCRIPTOR.services_by_name["Critique"].full_name

ROUNDS = metrics.Counter("cai_critique_rounds_total", "Critique/revision rounds completed (items times rounds).")
KEPT_PREVIOUS = metrics.Counter(
    "cai_critique_degenerate_revisions_total",
    "Rounds whose revision was empty or degenerate, so the previous answer was kept.",
)
PRINCIPLE_USES = metrics.Counter(
    "cai_critique_principle_uses_total", "Rounds by critique/revision principle.", ["principle"]
)


class CritiqueServicer(ServicerBase, critique_pb2_grpc.CritiqueServicer):
    config: CritiqueConfig
    constitution: Constitution

    def _parse(self, request):
        cfg = self.config
        check_count(request.items, "items", self.limits)
        rounds = request.rounds or cfg.default_rounds
        if rounds > cfg.max_rounds:
            raise InvalidRequest("rounds", f"{rounds} exceeds max_rounds={cfg.max_rounds}")
        known = {p.id for p in self.constitution.critique_revision}
        for i, pid in enumerate(request.principle_ids):
            if pid not in known:
                raise InvalidRequest(
                    f"principle_ids[{i}]",
                    f"{pid!r} is not a critique/revision principle of {self.constitution.file_name}",
                )
        sampling = common_pb2.SamplingParams()
        sampling.CopyFrom(request.sampling)
        sampling.n = 0  # one critique and one revision per round
        spec = sampling_spec(sampling, self.limits)
        seed = seed_at(request.seed) if request.HasField("seed") else random.getrandbits(62)
        if spec.seed is None and request.HasField("seed"):
            spec = dataclasses.replace(spec, seed=seed)
        explicit = request.sampling.max_tokens > 0
        critique_spec = spec if explicit else dataclasses.replace(spec, max_tokens=cfg.critique_max_tokens)
        if request.critique_max_tokens:
            cap = check_max_tokens(request.critique_max_tokens, "critique_max_tokens", self.limits)
            critique_spec = dataclasses.replace(spec, max_tokens=cap)
        revision_spec = spec if explicit else dataclasses.replace(spec, max_tokens=cfg.revision_max_tokens)
        items = []
        for i, item in enumerate(request.items):
            messages = conversation_messages(item.prompt, f"items[{i}].prompt", self.limits)
            check_text(item.answer, f"items[{i}].answer", self.limits)
            if not item.answer.strip():
                raise InvalidRequest(f"items[{i}].answer", "must not be empty")
            items.append(ReviseItem(tuple(messages), item.answer, item.prompt.id))
        return items, rounds, critique_spec, revision_spec, seed, list(request.principle_ids)

    async def Revise(self, request, context):
        items, rounds, critique_spec, revision_spec, seed, among = self._parse(request)
        async with self.served.use() as engine:
            reviser = Reviser(
                engine,
                self.constitution,
                few_shot=self.config.few_shot,
                max_prompt_tokens=self.limits.max_prompt_tokens,
            )
            chains = await within_deadline(
                context, reviser.revise(items, rounds, critique_spec, revision_spec, seed, among)
            )
        metrics.BATCH_ITEMS.labels(SERVICE, "Revise").observe(len(items))
        response = critique_pb2.ReviseResponse()
        for item, chain in zip(items, chains):
            out = response.chains.add(
                final_answer=chain.final_answer,
                provenance=provenance(
                    self.constitution, ",".join(chain.principle_ids), engine.model, engine.checkpoint_id, item.key
                ),
            )
            for r in chain.rounds:
                out.rounds.add(
                    round=r.round,
                    principle_id=r.principle_id,
                    critique=r.critique,
                    revision=r.revision,
                    kept_previous=r.kept_previous,
                    truncated=r.truncated,
                )
                ROUNDS.inc()
                PRINCIPLE_USES.labels(r.principle_id).inc()
                if r.kept_previous:
                    KEPT_PREVIOUS.inc()
        return response


async def build_critique_service(config: CritiqueConfig, served: ServedModel | None = None) -> GrpcService:
    """The critique service, ready to ``start()``; shares ``served`` when given."""
    constitution = load_constitution(config.constitution)
    service = GrpcService(
        config.server, None, [SERVICE], message_limits={"Revise": message_bytes_limit(config.limits, texts_per_item=2)}
    )
    return await serve_model(  # ports and the constitution first, then the model
        service,
        served,
        lambda: start_served(SERVICE, config.engine),
        lambda served: CritiqueServicer(served, config, constitution),
        critique_pb2_grpc.add_CritiqueServicer_to_server,
    )
