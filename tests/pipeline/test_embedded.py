"""services/pipeline/embedded.py: ``services_at`` uses the given addresses and starts only what is missing."""

from __future__ import annotations

import asyncio

from services.engines.config import EngineConfig
from services.pipeline.embedded import EmbeddedSpec, services_at


def test_given_addresses_are_used_as_they_are_and_nothing_starts():
    spec = EmbeddedSpec(policy=EngineConfig(model="/no/such/model", kind="transformers"))

    async def main():
        async with services_at({"generation": "10.0.0.1:50051", "judge": "dns:///judge:50053"}, spec) as addresses:
            return addresses

    assert asyncio.run(main()) == {"generation": "10.0.0.1:50051", "judge": "dns:///judge:50053"}


def test_a_missing_address_is_started_here_on_loopback(tiny_model):
    spec = EmbeddedSpec(policy=EngineConfig(model=str(tiny_model), kind="transformers"))

    async def main():
        from services.generation.client import GenerationClient
        from services.prompts import Prompt

        async with services_at({"generation": "", "judge": "10.0.0.1:50053"}, spec) as addresses:
            async with GenerationClient(addresses["generation"]) as gen:
                answer = await gen.generate([Prompt("p", ({"role": "user", "content": "hi"},))], max_tokens=2)
            return addresses, answer

    addresses, answer = asyncio.run(main())
    assert addresses["judge"] == "10.0.0.1:50053" and addresses["generation"].startswith("127.0.0.1:")
    assert len(answer.completions) == 1
