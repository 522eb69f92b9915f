"""The embedded default: services started in this process on loopback, one engine per model.

A pipeline given no service address starts what it needs here and still talks to it over real
gRPC, so the same code path serves a laptop and a cluster.
"""

from __future__ import annotations

import contextlib
import logging

from services.common.served_model import ServedModel
from services.common.server import ServerConfig
from services.engines.config import EngineConfig, start_engine

log = logging.getLogger(__name__)
LOOPBACK = ServerConfig(host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=5)


@contextlib.asynccontextmanager
async def embedded_policy_services(policy: EngineConfig, constitution: str | None = None,
                                   services: tuple[str, ...] = ("generation", "critique"),
                                   metrics_port: int = -1):
    """Starts the policy services (generation and/or critique) sharing one engine; yields
    ``{"generation": "127.0.0.1:PORT", ...}``."""
    from services.critique.config import CritiqueConfig
    from services.critique.service import SERVICE as CRITIQUE, build_critique_service
    from services.generation.config import GenerationConfig
    from services.generation.service import SERVICE as GENERATION, build_generation_service

    served = ServedModel(GENERATION if "generation" in services else CRITIQUE, await start_engine(policy))
    started = []
    try:
        addresses = {}
        for i, name in enumerate(services):
            server = LOOPBACK if i or metrics_port < 0 else ServerConfig(
                host="127.0.0.1", port=0, metrics_port=metrics_port, grace_seconds=5)
            if name == "generation":
                service = await build_generation_service(GenerationConfig(engine=policy, server=server), served)
            elif name == "critique":
                kwargs = {"constitution": constitution} if constitution else {}
                service = await build_critique_service(CritiqueConfig(engine=policy, server=server, **kwargs), served)
            else:
                raise ValueError(f"unknown policy service {name!r}")
            await service.start()
            started.append(service)
            addresses[name] = f"127.0.0.1:{service.port}"
        log.info("embedded services: %s", addresses)
        yield addresses
    finally:
        for service in reversed(started):
            await service.stop(grace=5)
        await served.close()
