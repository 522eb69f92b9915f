"""The embedded default: services started in this process on loopback, one engine per model.

A pipeline given no service address starts what it needs here and still talks to it over real
gRPC, so the same code path serves a laptop and a cluster. Services whose models are the same
share one engine (one ``ServedModel``): a checkpoint loaded through one is served by all.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from services.common.served_model import ServedModel
from services.common.server import ServerConfig
from services.engines.config import EngineConfig, start_engine

log = logging.getLogger(__name__)
LOOPBACK = ServerConfig(host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=5)


@dataclass(frozen=True)
class EmbeddedSpec:
    """Which services to start in-process and with what."""

    policy: EngineConfig = field(default_factory=EngineConfig)
    """The policy (generation and critique)."""
    judge: EngineConfig | None = None
    """The judge model; None: the policy model (one shared engine)."""
    constitution: str = ""
    """Constitution for critique and judge; empty: the shipped default."""
    metrics_port: int = -1
    """Serve /metrics for this process on this port (-1: no)."""


def _build(name: str, engine: EngineConfig, spec: EmbeddedSpec, server: ServerConfig):
    kwargs = {"constitution": spec.constitution} if spec.constitution else {}
    if name == "generation":
        from services.generation.config import GenerationConfig
        from services.generation.service import build_generation_service

        return build_generation_service, GenerationConfig(engine=engine, server=server)
    if name == "critique":
        from services.critique.config import CritiqueConfig
        from services.critique.service import build_critique_service

        return build_critique_service, CritiqueConfig(engine=engine, server=server, **kwargs)
    if name == "judge":
        from services.judge.config import JudgeConfig
        from services.judge.service import build_judge_service

        return build_judge_service, JudgeConfig(engine=engine, server=server, **kwargs)
    raise ValueError(f"unknown service {name!r}")


@contextlib.asynccontextmanager
async def embedded_services(spec: EmbeddedSpec, services: tuple[str, ...]):
    """Starts ``services`` (generation, critique, judge) on loopback; yields their addresses."""
    from services.common.metrics import start_metrics_server

    if spec.metrics_port >= 0:
        start_metrics_server(spec.metrics_port, host="127.0.0.1")
    served: dict[EngineConfig, ServedModel] = {}
    started = []
    try:
        addresses = {}
        for name in services:
            engine = spec.judge if name == "judge" and spec.judge is not None else spec.policy
            if engine not in served:
                served[engine] = ServedModel(f"embedded/{name}", await start_engine(engine))
            build, config = _build(name, engine, spec, LOOPBACK)
            service = await build(config, served[engine])
            await service.start()
            started.append(service)
            addresses[name] = f"127.0.0.1:{service.port}"
        log.info("embedded services: %s", addresses)
        yield addresses
    finally:
        for service in reversed(started):
            await service.stop(grace=5)
        for model in served.values():
            await model.close()
