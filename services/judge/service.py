"""``cai.v1.Judge`` on an engine: Compare."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random

from services.api.cai.v1 import judge_pb2, judge_pb2_grpc
from services.common import metrics
from services.common.provenance import provenance
from services.common.requests import (
    InvalidRequest,
    check_count,
    check_text,
    conversation_messages,
    message_bytes_limit,
    sampling_spec,
    seed_at,
)
from services.common.served_model import ServedModel, ServicerBase, serve_model, start_served
from services.common.server import GrpcService, within_deadline
from services.constitution import Constitution, load_constitution
from services.judge.config import JudgeConfig
from services.judge.labeler import CHAIN_OF_THOUGHT, LOGPROB, ComparisonItem, Judge

SERVICE = judge_pb2.DESCRIPTOR.services_by_name["Judge"].full_name
MODES = {judge_pb2.JUDGE_MODE_LOGPROB: LOGPROB, judge_pb2.JUDGE_MODE_CHAIN_OF_THOUGHT: CHAIN_OF_THOUGHT}

LABELS = metrics.Counter("cai_judge_labels_total", "Labeled comparisons produced (soft labels returned).", ["mode"])
for _mode in (LOGPROB, CHAIN_OF_THOUGHT):
    LABELS.labels(_mode)  # series exist from the start, so rate() sees the first labels too
P_A = metrics.Histogram(
    "cai_judge_label_p_a",
    "Distribution of the soft labels p_a.",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
)
PRINCIPLE_USES = metrics.Counter(
    "cai_judge_principle_uses_total", "Comparisons judged, by judging principle.", ["principle"]
)


class JudgeServicer(ServicerBase, judge_pb2_grpc.JudgeServicer):
    config: JudgeConfig
    constitution: Constitution

    def __init__(self, served: ServedModel, config: JudgeConfig, constitution: Constitution):
        super().__init__(served, config, constitution)
        self._judges: dict[int, Judge] = {}

    def judge_for(self, engine) -> Judge:
        """One Judge (with its option tokens) per engine; a reloaded engine gets a new one."""
        key = id(engine)
        if key not in self._judges:
            cfg = self.config
            self._judges = {
                key: Judge(
                    engine,
                    self.constitution,
                    few_shot=cfg.few_shot,
                    few_shot_slates=cfg.few_shot_slates,
                    max_prompt_tokens=self.limits.max_prompt_tokens,
                    cot_min_p=cfg.cot_min_p,
                    cot_max_p=cfg.cot_max_p,
                )
            }
        return self._judges[key]

    def judge_config_sha256(self, engine) -> str:
        """``SoftLabel.judge_config_sha256``: what on this side (with the request and the content)
        determines a label; callers build idempotent comparison ids from it."""
        cfg = self.config
        fields = {
            "constitution_sha256": self.constitution.sha256,
            "model": engine.model,
            "checkpoint": engine.checkpoint_id,
            "few_shot": cfg.few_shot,
            "few_shot_slates": cfg.few_shot_slates,
            "max_prompt_tokens": self.limits.max_prompt_tokens,
            "cot_min_p": cfg.cot_min_p,
            "cot_max_p": cfg.cot_max_p,
            "cot_max_tokens": cfg.cot_max_tokens,
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def _parse(self, request):
        check_count(request.comparisons, "comparisons", self.limits)
        if request.mode not in (judge_pb2.JUDGE_MODE_UNSPECIFIED, *MODES):
            raise InvalidRequest("mode", f"unknown mode {request.mode}")
        mode = MODES.get(request.mode, self.config.default_mode)
        known = {p.id for p in self.constitution.judging}
        items = []
        for i, c in enumerate(request.comparisons):
            messages = conversation_messages(c.prompt, f"comparisons[{i}].prompt", self.limits)
            for name in ("answer_a", "answer_b"):
                check_text(getattr(c, name), f"comparisons[{i}].{name}", self.limits)
                if not getattr(c, name).strip():
                    raise InvalidRequest(f"comparisons[{i}].{name}", "must not be empty")
            if c.principle_id and c.principle_id not in known:
                raise InvalidRequest(
                    f"comparisons[{i}].principle_id",
                    f"{c.principle_id!r} is not a judging principle of {self.constitution.file_name}",
                )
            items.append(ComparisonItem(tuple(messages), c.answer_a, c.answer_b, c.principle_id, c.id))
        spec = sampling_spec(request.cot_sampling, self.limits, "cot_sampling")
        if not request.cot_sampling.max_tokens:
            spec = dataclasses.replace(spec, max_tokens=self.config.cot_max_tokens)
        seed = seed_at(request.seed) if request.HasField("seed") else random.getrandbits(62)
        return items, mode, seed, spec

    async def Compare(self, request, context):
        items, mode, seed, spec = self._parse(request)
        async with self.served.use() as engine:
            judge = self.judge_for(engine)
            labels = await within_deadline(context, judge.compare(items, mode, request.swap_debias, seed, spec))
        metrics.BATCH_ITEMS.labels(SERVICE, "Compare").observe(len(items))
        response = judge_pb2.CompareResponse()
        config_sha256 = self.judge_config_sha256(engine)
        for comparison, label in zip(request.comparisons, labels):
            response.labels.add(
                p_a=label.p_a,
                principle_id=label.principle_id,
                reasoning=label.reasoning,
                logprob_a=label.logprob_a,
                logprob_b=label.logprob_b,
                comparison_id=comparison.id,
                judge_config_sha256=config_sha256,
                p_a_ab=label.p_a_ab,
                p_a_ba=label.p_a_ba,
                seed=seed,
                few_shot_ids=label.few_shot_ids,
                provenance=provenance(
                    self.constitution, label.principle_id, engine.model, engine.checkpoint_id, comparison.prompt.id
                ),
            )
            P_A.observe(label.p_a)
            PRINCIPLE_USES.labels(label.principle_id).inc()
        LABELS.labels(mode).inc(len(labels))
        return response


async def build_judge_service(config: JudgeConfig, served: ServedModel | None = None) -> GrpcService:
    """The judge service, ready to ``start()``. Fails at start-up with a clear error when the
    judge's tokenizer cannot express the options (A) and (B)."""
    constitution = load_constitution(config.constitution)
    service = GrpcService(
        config.server, None, [SERVICE], message_limits={"Compare": message_bytes_limit(config.limits, texts_per_item=3)}
    )

    def servicer(served: ServedModel) -> JudgeServicer:
        judging = JudgeServicer(served, config, constitution)
        judging.judge_for(served.engine)  # the options (A) and (B) must be expressible
        return judging

    return await serve_model(  # ports and the constitution first, then the model
        service,
        served,
        lambda: start_served(SERVICE, config.engine),
        servicer,
        judge_pb2_grpc.add_JudgeServicer_to_server,
    )
