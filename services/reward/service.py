"""``cai.v1.Reward``: Score, LoadCheckpoint, GetModelInfo."""

from __future__ import annotations

import logging

from services.api.cai.v1 import reward_pb2, reward_pb2_grpc
from services.common import metrics
from services.common.requests import (
    InvalidRequest,
    check_count,
    check_text,
    conversation_messages,
    message_bytes_limit,
    off_loop,
)
from services.common.served_model import ModelServicer, ServedModel, checkpoint_access_of, serve_model, start_promoted
from services.common.server import GrpcService, within_deadline
from services.reward.config import RewardServiceConfig
from services.reward.scorer import RewardScorer

log = logging.getLogger(__name__)

SERVICE = reward_pb2.DESCRIPTOR.services_by_name["Reward"].full_name

SCORED = metrics.Counter("cai_reward_scored_total", "Answers scored by the reward model.")
SCORES = metrics.Histogram(
    "cai_reward_score",
    "Distribution of reward scores.",
    buckets=(-10, -5, -3, -2, -1, -0.5, 0, 0.5, 1, 2, 3, 5, 10),
)


class RewardServicer(ModelServicer, reward_pb2_grpc.RewardServicer):
    checkpoint = ("reward", "sequence-classification")
    """LoadCheckpoint loads sequence classifiers from under ``checkpoint_dir``."""

    def start_checkpoint(self, path: str | None, checkpoint_id: str):
        cfg = self.config
        return RewardScorer.load(path, checkpoint_id, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size)

    async def Score(self, request, context):
        check_count(request.items, "items", self.limits)
        prompts = [
            conversation_messages(it.prompt, f"items[{i}].prompt", self.limits) for i, it in enumerate(request.items)
        ]
        answers = [it.answer for it in request.items]
        for i, a in enumerate(answers):
            check_text(a, f"items[{i}].answer", self.limits)
        async with self.served.use() as scorer:
            token_ids = await off_loop(scorer.token_ids, prompts, answers)  # tokenized once: checked, then scored
            for i, ids in enumerate(token_ids):
                if len(ids) > self.limits.max_prompt_tokens:
                    raise InvalidRequest(
                        f"items[{i}]", f"{len(ids)} tokens exceeds max_prompt_tokens={self.limits.max_prompt_tokens}"
                    )
            scores = await within_deadline(context, scorer.score_token_ids(token_ids))
        metrics.BATCH_ITEMS.labels(SERVICE, "Score").observe(len(answers))
        SCORED.inc(len(scores))
        for s in scores:
            SCORES.observe(s)
        return reward_pb2.ScoreResponse(scores=scores, checkpoint_id=scorer.checkpoint_id)


async def served_reward_model(config: RewardServiceConfig, served: ServedModel | None) -> ServedModel:
    """``served``, or the reward model loaded: the promoted checkpoint recorded in the checkpoint
    directory when there is one, else ``config.model``."""
    if served is not None:
        return served
    servicer = RewardServicer(None, config)
    access = checkpoint_access_of(*servicer.checkpoint, config)
    return await start_promoted(SERVICE, access, servicer.start_checkpoint, config.model, config.checkpoint_id)


async def build_reward_service(config: RewardServiceConfig, served: ServedModel | None = None) -> GrpcService:
    """The reward service, ready to ``start()``."""
    if served is None and not config.model:
        raise ValueError("model: the reward service needs a reward-model folder (--model)")
    service = GrpcService(
        config.server, None, [SERVICE], message_limits={"Score": message_bytes_limit(config.limits, texts_per_item=2)}
    )

    def servicer(served: ServedModel) -> RewardServicer:
        # Scoring imports the training library (TRL, ~2 s holding the GIL) on first use: import it
        # now, before serving, so the first Score does not stall health checks.
        import services.training.reward_trainer  # noqa: F401

        return RewardServicer(served, config)

    return await serve_model(
        service,
        served,
        lambda: served_reward_model(config, None),
        servicer,
        reward_pb2_grpc.add_RewardServicer_to_server,
        watch_health=False,
    )
