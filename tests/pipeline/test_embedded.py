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


def test_services_sharing_an_engine_stop_without_reporting_an_engine_failure(tiny_model, caplog):
    """Services sharing one engine stop one by one: the engine stays up for those still serving
    (the last one to stop closes it), so none logs "engine is no longer healthy" (a dead engine)."""
    from services.pipeline.embedded import EmbeddedServices

    engine = EngineConfig(model=str(tiny_model), dtype="float32", max_model_len=512)

    async def main():
        async with EmbeddedServices() as embedded:
            for name in ("generation", "critique", "judge"):
                await embedded.address(name, engine)
            first, *others = embedded._started
            await first.stop(grace=0)
            await asyncio.sleep(3)  # longer than the health watch's 2 s period
            assert all(not s._stopped.is_set() for s in others)
            assert all(served.engine.healthy for served in embedded._served.values())

    with caplog.at_level("ERROR", logger="services.common.server"):
        asyncio.run(main())
    assert "engine is no longer healthy" not in caplog.text
