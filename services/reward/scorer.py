"""A loaded reward model that scores (prompt, answer) pairs: the engine of the reward service.

It has the parts of the engine interface a ``ServedModel`` needs (``model``, ``checkpoint_id``,
``close``), so checkpoints are swapped the same way as in the generation service. Scoring runs in
a worker thread, one batch at a time, so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from services.engines.base import default_checkpoint_id


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
        messages = [*prompt, {"role": "assistant", "content": answer}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def score(self, prompts: Sequence[Sequence[dict]], answers: Sequence[str]) -> list[float]:
        from services.training.reward_trainer import score

        async with self._lock:
            return await asyncio.to_thread(score, self._model, self.tokenizer, prompts, answers, self.batch_size)

    async def reload_in_place(self, model_path: str, checkpoint_id: str) -> bool:
        """Reads the new weights off the event loop and copies them into the loaded model between
        two batches; False (start a new scorer instead) when the checkpoint differs in shape or
        tokenizer or has no safetensors weights."""
        from services.engines.hf_engine import reload_weights_in_place

        return await reload_weights_in_place(self, model_path, checkpoint_id)

    async def close(self) -> None:
        self._model = None
