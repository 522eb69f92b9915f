"""transformers engine: the reference implementation (``model.generate`` and a forward pass).

Slower than vLLM but simple and exact; tests compare vLLM against it. Work runs in a worker
thread, one call at a time, so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from services.engines.base import (
    Completion,
    Engine,
    EngineError,
    Sample,
    SamplingSpec,
    StreamDelta,
    load_tokenizer,
    same_shape,
)


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, model_path: str, tokenizer, checkpoint_id: str, model, device):
        super().__init__(model_path, tokenizer, checkpoint_id)
        self._model = model
        self._device = device
        self._lock = asyncio.Lock()

    @classmethod
    async def start(
        cls, model_path: str, checkpoint_id: str, *, dtype: str = "float32", device: str = ""
    ) -> TransformersEngine:
        import torch
        from transformers import AutoModelForCausalLM

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = await asyncio.to_thread(load_tokenizer, model_path)

        def load():
            model = AutoModelForCausalLM.from_pretrained(
                model_path, dtype=getattr(torch, dtype) if dtype != "auto" else "auto"
            )
            return model.to(device).eval()

        try:
            model = await asyncio.to_thread(load)
        except Exception as exc:
            raise EngineError(f"transformers could not load {model_path}: {exc}") from exc
        return cls(model_path, tokenizer, checkpoint_id, model, device)

    @property
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def _batch(self, prompts: Sequence[list[int]], left: bool):
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            start = width - len(prompt) if left else 0
            ids[row, start : start + len(prompt)] = torch.tensor(prompt)
            mask[row, start : start + len(prompt)] = 1
        return ids.to(self._device), mask.to(self._device)

    def _generate_sync(self, prompts: Sequence[list[int]], spec: SamplingSpec) -> list[Completion]:
        import torch

        ids, mask = self._batch(prompts, left=True)
        if spec.seed is not None:
            torch.manual_seed(spec.seed)
        sampling = spec.temperature > 0
        kwargs = dict(
            max_new_tokens=spec.max_tokens,
            do_sample=sampling,
            num_return_sequences=spec.n,
            eos_token_id=sorted(self.eos_token_ids),
            pad_token_id=self._pad_id,
        )
        if sampling:
            kwargs.update(temperature=spec.temperature, top_p=spec.top_p, top_k=0)
        if spec.stop:
            kwargs.update(stop_strings=list(spec.stop), tokenizer=self.tokenizer)
        with torch.no_grad():
            out = self._model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new = out[:, ids.shape[1] :].tolist()
        completions = []
        for p, prompt in enumerate(prompts):
            samples = []
            for seq in new[p * spec.n : (p + 1) * spec.n]:
                finish = "length"
                for i, tok in enumerate(seq):
                    if tok in self.eos_token_ids:
                        seq, finish = seq[: i + 1], "stop"
                        break
                else:
                    seq = [t for t in seq if t != self._pad_id] if spec.stop else seq
                text = self.tokenizer.decode(seq, skip_special_tokens=True)
                for stop in spec.stop:
                    if stop in text:
                        text, finish = text[: text.index(stop)], "stop"
                samples.append(Sample(text, tuple(seq), finish))
            completions.append(Completion(prompt_token_count=len(prompt), samples=samples))
        return completions

    async def generate(self, prompts: Sequence[list[int]], spec: SamplingSpec) -> list[Completion]:
        async with self._lock:
            return await asyncio.to_thread(self._generate_sync, prompts, spec)

    async def stream(self, prompts: Sequence[list[int]], spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        # The reference engine does not stream incrementally: each sample arrives whole.
        for p, completion in enumerate(await self.generate(prompts, spec)):
            for s, sample in enumerate(completion.samples):
                yield StreamDelta(p, s, sample.text, True, sample.finish_reason, len(sample.token_ids))

    def _logits_sync(self, prompts: Sequence[list[int]]):
        import torch

        ids, mask = self._batch(prompts, left=False)
        with torch.no_grad():
            logits = self._model(input_ids=ids, attention_mask=mask).logits
        return torch.log_softmax(logits.float(), dim=-1)

    async def prompt_logprobs(self, prompts: Sequence[list[int]]) -> list[list[float | None]]:
        async with self._lock:
            logp = await asyncio.to_thread(self._logits_sync, prompts)
        result = []
        for row, prompt in enumerate(prompts):
            values: list[float | None] = [None]
            for pos in range(1, len(prompt)):
                values.append(float(logp[row, pos - 1, prompt[pos]]))
            result.append(values)
        return result

    async def next_token_logprobs(
        self, prompts: Sequence[list[int]], token_ids: Sequence[int]
    ) -> list[dict[int, float]]:
        async with self._lock:
            logp = await asyncio.to_thread(self._logits_sync, prompts)
        return [{t: float(logp[row, len(prompt) - 1, t]) for t in token_ids} for row, prompt in enumerate(prompts)]

    async def reload_in_place(self, model_path: str, checkpoint_id: str) -> bool:
        """Reads the new weights off the event loop, then copies them into the loaded model
        between two requests (requests run one at a time under the engine's lock)."""
        return await reload_weights_in_place(self, model_path, checkpoint_id)

    async def close(self) -> None:
        self._model = None


async def reload_weights_in_place(holder, model_path: str, checkpoint_id: str) -> bool:
    """Copies ``model_path``'s weights into ``holder._model`` (a loaded transformers model) and
    records it as ``holder.model``/``holder.checkpoint_id``; the files are read off the event loop
    and the copy is made under ``holder._lock``, between two requests. False (start a new engine
    instead) when the checkpoint differs in shape or tokenizer or has no safetensors weights."""
    if not await asyncio.to_thread(same_shape, holder.model, model_path):
        return False
    state = await asyncio.to_thread(read_weights, model_path)
    if state is None:
        return False
    async with holder._lock:
        await asyncio.to_thread(load_weights, holder._model, state, model_path)
        holder.model, holder.checkpoint_id = model_path, checkpoint_id
    return True


def read_weights(model_path: str) -> dict | None:
    """The tensors of a checkpoint's top-level safetensors files (None when it has none)."""
    from pathlib import Path

    from safetensors.torch import load_file

    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        return None
    state: dict = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def load_weights(model, state: dict, model_path: str) -> None:
    """Copies ``state`` into ``model``; every parameter must be given except tied ones."""
    import torch

    own = model.state_dict()
    state = {k: v.to(dtype=own[k].dtype) if k in own else v for k, v in state.items()}
    unexpected = sorted(set(state) - set(own))
    given = {own[n].data_ptr() for n in state if n in own}
    tied = {k for k, v in own.items() if k not in state and v.data_ptr() in given}  # shares a given tensor
    missing = sorted(set(own) - set(state) - tied)
    if unexpected or missing:
        raise EngineError(
            f"{model_path}: weights do not fit the loaded model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
