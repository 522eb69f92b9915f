"""A loaded reward model that scores (prompt, answer) pairs: the engine of the reward service.

It has the parts of the engine interface a ``ServedModel`` needs (``model``, ``checkpoint_id``,
``close``), so checkpoints are swapped the same way as in the generation service. Scoring runs in
a worker thread, one batch at a time, so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from services.common.requests import off_loop
from services.engines.base import default_checkpoint_id

log = logging.getLogger(__name__)


def prefer_sleeping_openmp_threads() -> None:
    """Makes torch's OpenMP workers sleep as soon as a parallel region ends (``OMP_WAIT_POLICY=PASSIVE``)
    instead of spinning, unless the operator set the policy; only possible before torch is imported.

    A reward server computes in short bursts, one per Score, on cores it usually shares with its
    caller (the PPO trainer waits for the scores, then computes). With libgomp's default every
    worker busy-waits after each burst, on the cores the trainer is about to use: measured on this
    2-core machine under load, 251 ms of server CPU per 8-item Score of the tiny model with the
    default, 21 ms with PASSIVE (latency 880 ms vs 38 ms); see bench/trainer.py."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    if "torch" in sys.modules:
        log.debug("torch is already imported: its OpenMP wait policy stays the default")
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


class RewardScorer:
    name = "transformers"

    def __init__(self, model_path: str, checkpoint_id: str, model, tokenizer, batch_size: int):
        self.model = model_path
        self.checkpoint_id = checkpoint_id
        self._model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._lock = asyncio.Lock()

    @classmethod
    async def load(
        cls, model_path: str, checkpoint_id: str = "", *, device: str = "", dtype: str = "float32", batch_size: int = 32
    ) -> RewardScorer:
        prefer_sleeping_openmp_threads()
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not (Path(model_path) / "config.json").is_file():
            raise ValueError(f"{model_path}: not a reward-model folder (no config.json)")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")

        def load():
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=getattr(torch, dtype))
            if model.config.num_labels != 1:
                raise ValueError(f"{model_path}: a reward model has one output, this one has {model.config.num_labels}")
            if model.config.pad_token_id is None:
                model.config.pad_token_id = (
                    tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
                )
            return model.to(device).eval(), tokenizer

        model, tokenizer = await asyncio.to_thread(load)
        return cls(model_path, checkpoint_id or default_checkpoint_id(model_path), model, tokenizer, batch_size)

    def count_tokens(self, prompt: Sequence[dict], answer: str) -> int:
        return len(self.token_ids([prompt], [answer])[0])

    def token_ids(self, prompts: Sequence[Sequence[dict]], answers: Sequence[str]) -> list[list[int]]:
        """Each pair's token ids exactly as scored (chat template, no extra special tokens): tokenize
        once, check the lengths, then ``score_token_ids``. CPU work: call it off the event loop."""
        from services.training.reward_trainer import chat_token_ids

        return chat_token_ids(self.tokenizer, prompts, answers)

    async def score(self, prompts: Sequence[Sequence[dict]], answers: Sequence[str]) -> list[float]:
        return await self.score_token_ids(await off_loop(self.token_ids, prompts, answers))

    async def score_token_ids(self, token_ids: Sequence[Sequence[int]]) -> list[float]:
        """The rewards of pairs tokenized by ``token_ids``, one batch at a time in a worker thread."""
        from services.training.reward_trainer import score_token_ids

        async with self._lock:
            return await asyncio.to_thread(score_token_ids, self._model, token_ids, self.batch_size)

    async def reload_in_place(self, model_path: str, checkpoint_id: str) -> bool:
        """Reads the new weights off the event loop and copies them into the loaded model between
        two batches; False (start a new scorer instead) when the checkpoint differs in shape or
        tokenizer or has no safetensors weights."""
        from services.engines.hf_engine import reload_weights_in_place

        return await reload_weights_in_place(self, model_path, checkpoint_id)

    async def close(self) -> None:
        self._model = None
