"""``cai.v1.Reward``: Score, LoadCheckpoint, GetModelInfo."""

from __future__ import annotations

import asyncio
import logging

from services.api.cai.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from services.common import metrics
from services.common.requests import (
    InvalidRequest,
    check_count,
    check_path,
    check_text,
    conversation_messages,
    message_bytes_limit,
    off_loop,
)
from services.common.served_model import (
    CheckpointAccess,
    ServedModel,
    is_loopback,
    load_checkpoint,
    promoted_checkpoint,
)
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


class RewardServicer(reward_pb2_grpc.RewardServicer):
    def __init__(self, served: ServedModel, config: RewardServiceConfig):
        self.served = served
        self.config = config
        self.limits = config.limits

    async def Score(self, request, context):
        check_count(request.items, "items", self.limits)
        prompts = [
            conversation_messages(it.prompt, f"items[{i}].prompt", self.limits) for i, it in enumerate(request.items)
        ]
        answers = [it.answer for it in request.items]
        for i, a in enumerate(answers):
            check_text(a, f"items[{i}].answer", self.limits)
        async with self.served.use() as scorer:
            counts = await off_loop(lambda: [scorer.count_tokens(p, a) for p, a in zip(prompts, answers)])
            for i, n in enumerate(counts):
                if n > self.limits.max_prompt_tokens:
                    raise InvalidRequest(
                        f"items[{i}]", f"{n} tokens exceeds max_prompt_tokens={self.limits.max_prompt_tokens}"
                    )
            scores = await within_deadline(context, scorer.score(prompts, answers))
        metrics.BATCH_ITEMS.labels(SERVICE, "Score").observe(len(answers))
        SCORED.inc(len(scores))
        for s in scores:
            SCORES.observe(s)
        return reward_pb2.ScoreResponse(scores=scores, checkpoint_id=scorer.checkpoint_id)

    async def LoadCheckpoint(self, request, context):
        check_path(request.path)
        cfg = self.config
        return await load_checkpoint(
            self.served,
            request,
            context,
            lambda path, cid: RewardScorer.load(
                path, cid, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size
            ),
            checkpoint_access(cfg),
        )

    async def GetModelInfo(self, request, context):
        scorer = self.served.engine
        return common_pb2.ModelInfo(
            model=scorer.model,
            checkpoint_id=scorer.checkpoint_id,
            engine=scorer.name,
            max_prompt_tokens=self.limits.max_prompt_tokens,
            max_batch_items=self.limits.max_batch_items,
            promoted=self.served.promoted,
        )


def checkpoint_access(config: RewardServiceConfig) -> CheckpointAccess:
    """Where LoadCheckpoint may load reward models from: sequence classifiers under ``checkpoint_dir``."""
    return CheckpointAccess(
        service="reward",
        task="sequence-classification",
        checkpoint_dir=config.checkpoint_dir,
        loopback_only=is_loopback(config.server.host),
        allowed_clients=tuple(config.server.tls_allowed_client_names),
    )


async def served_reward_model(config: RewardServiceConfig, served: ServedModel | None) -> ServedModel:
    """``served``, or the reward model loaded: the promoted checkpoint recorded in the checkpoint
    directory when there is one, else ``config.model``."""
    if served is not None:
        return served
    promoted = await asyncio.to_thread(promoted_checkpoint, checkpoint_access(config))
    model, checkpoint_id = promoted or (config.model, config.checkpoint_id)
    if promoted:
        log.info(
            "serving the promoted checkpoint %s (%s) recorded in %s/promoted/reward.json",
            checkpoint_id,
            model,
            config.checkpoint_dir,
        )
    scorer = await RewardScorer.load(
        model, checkpoint_id, device=config.device, dtype=config.dtype, batch_size=config.batch_size
    )
    served = ServedModel(SERVICE, scorer)
    served.promoted = promoted is not None
    return served


async def build_reward_service(config: RewardServiceConfig, served: ServedModel | None = None) -> GrpcService:
    """The reward service, ready to ``start()``."""
    if served is None and not config.model:
        raise ValueError("model: the reward service needs a reward-model folder (--model)")
    service = GrpcService(
        config.server, None, [SERVICE], message_limits={"Score": message_bytes_limit(config.limits, texts_per_item=2)}
    )
    served = await service.bind_then(lambda: served_reward_model(config, served))
    # Scoring imports the training library (TRL, ~2 s holding the GIL) on first use: import it
    # now, before serving, so the first Score does not stall health checks.
    import services.training.reward_trainer  # noqa: F401

    servicer = RewardServicer(served, config)
    return service.attach(
        lambda server: reward_pb2_grpc.add_RewardServicer_to_server(servicer, server),
        on_stop=served.close,
    )
