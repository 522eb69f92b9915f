"""services/generation/client.py: ``generate`` sends the prompts (their ids carried) and the sampling."""

from __future__ import annotations

import asyncio

from services.generation.client import GenerationClient
from services.prompts import Prompt
from tests.common.test_client import _serve


def test_generate_sends_the_prompts_and_sampling_over_real_grpc():
    async def main():
        service, port = await _serve()
        try:
            async with GenerationClient(f"127.0.0.1:{port}") as client:
                prompts = [Prompt(f"q{i}", ({"role": "user", "content": f"question {i}"},)) for i in range(2)]
                return await client.generate(prompts, n=1, max_tokens=8, seed=5)
        finally:
            await service.stop(0)

    response = asyncio.run(main())
    assert [c.samples[0].text for c in response.completions] == ["q0:question 0:n=1:seed=5", "q1:question 1:n=1:seed=5"]
