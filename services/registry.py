"""One list of the services: name -> config type, builder, gRPC service, default ports, CLI help.

Read by ``cai serve`` (one subcommand per entry), the embedded runner
(``services.pipeline.embedded``) and the manifest checks (``services.k8s.manifests``). Types
and builders are named as ``"module:attribute"`` and imported on first use, so importing this
module stays cheap (no torch, no grpc). Adding a service is one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the system."""

    name: str
    """The name users type (``cai serve NAME``) and the manifests use."""
    config: str
    """``module:Class`` of its config dataclass (the sections of its YAML file)."""
    builder: str
    """``module:function``: ``await builder(config[, served_model])`` returns the service."""
    grpc_service: str
    """Full gRPC service name, as in protos/ (``cai.v1.Generation``)."""
    port: int
    """Default gRPC port (the config type's ``server.port`` default)."""
    metrics_port: int
    """Default Prometheus port (the config type's ``server.metrics_port`` default)."""
    help: str
    """One line for ``cai serve --help``."""
    inference: bool = True
    """Serves a model to callers (scaled by replicas); False for the queue-consuming trainer."""
    embeddable: bool = False
    """The embedded runner may start it in-process over a shared engine."""

    def config_type(self) -> type:
        return load(self.config)

    def build_function(self):
        return load(self.builder)


def load(ref: str):
    """The attribute a ``module:attribute`` reference names."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


SERVICES: dict[str, ServiceSpec] = {
    s.name: s
    for s in (
        ServiceSpec(
            "generation",
            "services.generation.config:GenerationConfig",
            "services.generation.service:build_generation_service",
            "cai.v1.Generation",
            50051,
            9090,
            "the generation service (cai.v1.Generation)",
            embeddable=True,
        ),
        ServiceSpec(
            "critique",
            "services.critique.config:CritiqueConfig",
            "services.critique.service:build_critique_service",
            "cai.v1.Critique",
            50052,
            9091,
            "the critique service (cai.v1.Critique)",
            embeddable=True,
        ),
        ServiceSpec(
            "judge",
            "services.judge.config:JudgeConfig",
            "services.judge.service:build_judge_service",
            "cai.v1.Judge",
            50053,
            9092,
            "the judge service (cai.v1.Judge): soft preference labels",
            embeddable=True,
        ),
        ServiceSpec(
            "reward",
            "services.reward.config:RewardServiceConfig",
            "services.reward.service:build_reward_service",
            "cai.v1.Reward",
            50054,
            9093,
            "the reward service (cai.v1.Reward): scores answers with the reward model",
        ),
        ServiceSpec(
            "trainer",
            "services.trainer.config:TrainerConfig",
            "services.trainer.service:build_trainer_service",
            "cai.v1.Trainer",
            50055,
            9094,
            "the trainer (cai.v1.Trainer): consumes the queue, trains reward model and policy",
            inference=False,
        ),
    )
}

INFERENCE_SERVICES = tuple(name for name, s in SERVICES.items() if s.inference)
EMBEDDABLE_SERVICES = tuple(name for name, s in SERVICES.items() if s.embeddable)


def service(name: str) -> ServiceSpec:
    """The spec of ``name``; a ``ValueError`` naming the known services otherwise."""
    try:
        return SERVICES[name]
    except KeyError:
        raise ValueError(f"unknown service {name!r}; expected one of {', '.join(SERVICES)}") from None
