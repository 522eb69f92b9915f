"""Typed client of ``cai.v1.Generation``."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.client import ServiceClient, prompt_conversation


class GenerationClient(ServiceClient):
    """``Generate``, ``GenerateStream``, ``LoadCheckpoint`` and ``GetModelInfo`` of a generation service."""

    service = "generation"

    def _new_stub(self, channel):
        from services.api.cai.v1 import generation_pb2_grpc

        return generation_pb2_grpc.GenerationStub(channel)

    async def generate(
        self,
        prompts: Sequence,
        *,
        n: int = 1,
        max_tokens: int = 0,
        temperature: float = 0.0,
        seed: int = 0,
        timeout: float | None = None,
    ):
        """``Generate`` for ``prompts`` (``services.prompts.Prompt``s, their ids carried); the ``GenerateResponse``."""
        from services.api.cai.v1 import common_pb2, generation_pb2

        request = generation_pb2.GenerateRequest(
            prompts=[prompt_conversation(p) for p in prompts],
            sampling=common_pb2.SamplingParams(n=n, max_tokens=max_tokens, temperature=temperature, seed=seed),
        )
        return await self.stub.Generate(request, timeout=timeout or self.timeout)
