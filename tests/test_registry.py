"""The service registry: one list of services read by the CLI, the embedded runner and the manifests."""

from __future__ import annotations

import dataclasses

import pytest

from services.registry import EMBEDDABLE_SERVICES, INFERENCE_SERVICES, SERVICES, service


@pytest.mark.parametrize("name", list(SERVICES))
def test_each_service_names_its_config_builder_grpc_service_and_ports(name):
    from google.protobuf import descriptor_pool

    import services.api.cai.v1  # noqa: F401  (registers the descriptors)
    from services.api.cai.v1 import (  # noqa: F401
        critique_pb2,
        generation_pb2,
        judge_pb2,
        reward_pb2,
        trainer_pb2,
    )

    entry = SERVICES[name]
    config = entry.config_type()()
    assert dataclasses.is_dataclass(config)
    assert (config.server.port, config.server.metrics_port) == (entry.port, entry.metrics_port)
    assert callable(entry.build_function())
    assert descriptor_pool.Default().FindServiceByName(entry.grpc_service).full_name == entry.grpc_service


def test_unknown_service_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown service 'nope'; expected one of generation, critique"):
        service("nope")


def test_cli_embedded_runner_and_manifests_read_the_registry():
    from services.cli import build_parser
    from services.engines.config import EngineConfig
    from services.k8s import manifests
    from services.pipeline.embedded import LOOPBACK, EmbeddedSpec, _build

    serve = next(
        a for a in build_parser()._subparsers._group_actions[0].choices["serve"]._actions if a.dest == "service"
    )
    assert list(serve.choices) == list(SERVICES)
    assert manifests.SERVICES == tuple(SERVICES) and manifests.INFERENCE_SERVICES == INFERENCE_SERVICES
    assert "trainer" not in INFERENCE_SERVICES
    engine = EngineConfig(kind="transformers", model="m")
    for name in EMBEDDABLE_SERVICES:
        build, config = _build(name, engine, EmbeddedSpec(constitution="c.yaml"), LOOPBACK)
        assert build is SERVICES[name].build_function() and type(config) is SERVICES[name].config_type()
        assert config.engine == engine and config.server == LOOPBACK
        assert getattr(config, "constitution", "c.yaml") == "c.yaml"
    with pytest.raises(ValueError, match="unknown service 'reward'"):
        _build("reward", engine, EmbeddedSpec(), LOOPBACK)
