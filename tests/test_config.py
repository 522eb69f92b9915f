"""Typed configuration: YAML into frozen dataclasses, errors naming the file and field."""

from __future__ import annotations

import dataclasses

import pytest

from services.config import ConfigError, load_config
from services.generation.config import GenerationConfig


def test_load_sections(tmp_path):
    path = tmp_path / "gen.yaml"
    path.write_text("engine: {kind: transformers, model: /m}\nserver: {port: 0}\nlimits: {max_n: 4}\n")
    config = load_config(GenerationConfig, path)
    assert config.engine.kind == "transformers" and config.server.port == 0 and config.limits.max_n == 4
    assert config.limits.max_batch_items == 64  # default kept
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.engine.kind = "vllm"  # read-only after construction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("limits: {max_n: many}", "limits.max_n: expected an integer, got 'many'"),
        ("limits: {max_n: 0}", "limits.max_n: must be at least 1"),
        ("engine: {kind: tgi}", "engine.kind: must be one of vllm, transformers"),
        ("server: {prot: 1}", "server.prot: unknown field"),
        ("engine: [1, 2]", "engine: expected a mapping"),
        ("server: {port: 70000}", "server.port: must be in [0, 65535]"),
        ("limits: {max_n: [1", "gen.yaml:2: not valid YAML"),
    ],
)
def test_errors_name_the_field(tmp_path, text, expected):
    path = tmp_path / "gen.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(GenerationConfig, path)
    assert str(path) in str(err.value) or "gen.yaml" in str(err.value)
    assert expected in str(err.value)


def test_serve_flags_fill_in_what_the_file_leaves_out_before_validation(tmp_path):
    """`cai serve trainer --config FILE --queue URL` with no queue in FILE (the k8s manifests) runs;
    without the flag it fails naming the file and the field."""
    from services.cli import build_parser, serve_config
    from services.config import ConfigError

    path = tmp_path / "trainer.yaml"
    path.write_text("work_dir: /tmp/w\nserver: {grace_seconds: 5}\n")
    args = ["serve", "trainer", "--config", str(path), "--port", "0"]
    config = serve_config(build_parser().parse_args([*args, "--queue", "redis://127.0.0.1:6379/0"]))
    assert config.queue == "redis://127.0.0.1:6379/0" and config.server.grace_seconds == 5
    assert config.server.port == 0
    with pytest.raises(ConfigError, match=r"trainer\.yaml: queue: is required"):
        serve_config(build_parser().parse_args(args))
