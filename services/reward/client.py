"""Reward functions for policy training: one interface, two sources.

``RewardClient`` scores through the Reward service over gRPC (asynchronous; its ``grpc.aio``
channel is created lazily inside whichever event loop calls it, since trainers such as TRL's run
async reward functions on their own loop in another thread). ``InProcessReward`` scores with a
reward model loaded in this process. Both are called as ``fn(prompts, completions)`` with
``prompts`` a list of chat conversations and ``completions`` a list of answer texts (or of
assistant message lists, as TRL passes conversational completions).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.api.cai.v1 import reward_pb2, reward_pb2_grpc
from services.common.client import ServiceClient, conversation


def completion_text(completion) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role") == "assistant")


class RewardClient(ServiceClient):
    """Async reward function backed by ``cai.v1.Reward/Score``."""

    service = "reward"

    def __init__(self, address: str, *, timeout: float = 300.0, batch_size: int = 256):
        super().__init__(address, timeout=timeout)
        self.batch_size = batch_size
        self.checkpoint_id = ""
        self.__name__ = "reward_service"  # TRL logs reward functions by name

    def _new_stub(self, channel):
        return reward_pb2_grpc.RewardStub(channel)

    async def __call__(self, prompts: Sequence[Sequence[dict]], completions: Sequence, **_) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            items = [
                reward_pb2.ScoreItem(prompt=conversation(p), answer=completion_text(c))
                for p, c in zip(prompts[start : start + self.batch_size], completions[start : start + self.batch_size])
            ]
            response = await self.stub.Score(reward_pb2.ScoreRequest(items=items), timeout=self.timeout)
            self.checkpoint_id = response.checkpoint_id
            scores.extend(response.scores)
        return scores


class InProcessReward:
    """Synchronous reward function with the reward model loaded in this process."""

    def __init__(self, model_path: str, *, batch_size: int = 32, device: str = ""):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=torch.float32)
        self.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        self.batch_size = batch_size
        self.checkpoint_id = model_path
        self.__name__ = "reward_model"

    def __call__(self, prompts: Sequence[Sequence[dict]], completions: Sequence, **_) -> list[float]:
        from services.training.reward_trainer import score

        return score(self.model, self.tokenizer, prompts, [completion_text(c) for c in completions], self.batch_size)
