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


def test_old_flat_run_keys_map_onto_the_sections_with_a_warning_naming_the_new_key(tmp_path):
    """A run config written before the sections (flat ``sft_epochs``, ``rl_steps``, ...) loads into
    the same RunConfig as its new shape, each old key warned about with its new name."""
    from services.config import ConfigDeprecationWarning
    from services.pipeline.run import RunConfig

    old = tmp_path / "old.yaml"
    old.write_text(
        "tiny: true\neval_prompts: 6\nsl_prompts: 8\nrounds: 3\nsl_max_tokens: 24\nsft_epochs: 3\n"
        "sft_learning_rate: 1.0e-3\nlabel_prompts: 16\nsamples_per_prompt: 4\nlabel_max_tokens: 24\n"
        "label_batch_size: 2\njudge_mode: chain-of-thought\nreward_epochs: 3\nreward_learning_rate: 1.0e-3\n"
        "rl_algorithm: grpo\nrl_steps: 8\nrl_batch_size: 8\nrl_max_new_tokens: 16\nrl_learning_rate: 1.0e-3\n"
        "kl_coef: 0.1\neval_samples: 3\neval_max_tokens: 24\n"
    )
    new = tmp_path / "new.yaml"
    new.write_text(
        "tiny: true\nsl_data: {limit: 8, rounds: 3, max_tokens: 24}\nsft: {epochs: 3, learning_rate: 1.0e-3}\n"
        "label: {limit: 16, samples_per_prompt: 4, max_tokens: 24, batch_size: 2, mode: chain-of-thought}\n"
        "reward: {epochs: 3, learning_rate: 1.0e-3}\n"
        "rl: {algorithm: grpo, ppo: {steps: 8, batch_size: 8, max_new_tokens: 16, learning_rate: 1.0e-3, kl_coef: 0.1}}\n"
        "eval: {prompts: 6, samples: 3, max_tokens: 24}\n"
    )
    with pytest.warns(ConfigDeprecationWarning) as caught:
        from_old = load_config(RunConfig, old)
    messages = {str(w.message) for w in caught}
    assert f"{old}: sft_epochs is deprecated, use sft.epochs" in messages
    assert f"{old}: kl_coef is deprecated, use rl.ppo.kl_coef" in messages
    assert len(messages) == len(RunConfig.renamed_keys)  # one per old key
    assert from_old == load_config(RunConfig, new)
    assert (from_old.sft.epochs, from_old.rl.ppo.kl_coef, from_old.label.mode) == (3.0, 0.1, "chain-of-thought")


def test_a_section_keeps_the_run_defaults_for_the_keys_the_file_leaves_out(tmp_path):
    from services.pipeline.run import RunConfig
    from services.training.sft_config import SFTRunConfig

    path = tmp_path / "run.yaml"
    path.write_text("sft: {epochs: 3}\nrl: {ppo: {steps: 2}}\n")
    cfg = load_config(RunConfig, path)
    assert cfg.sft.epochs == 3.0 and cfg.sft.learning_rate == 2e-5 != SFTRunConfig().learning_rate  # the run's
    assert (cfg.rl.ppo.steps, cfg.rl.ppo.batch_size, cfg.rl.ppo.max_new_tokens) == (2, 4, 32)
    assert RunConfig().sft.epochs == 1.0 and RunConfig().eval.prompts == 8


@pytest.mark.parametrize(
    "text, expected",
    [
        ("sft_epochs: 2\nsft: {epochs: 3}", "sft_epochs: given twice, also as sft.epochs (keep only sft.epochs)"),
        ("sft: {data: /x}", "sft.data: set by RunConfig itself; leave it out"),
        ("rl: {ppo: {seed: 3}}", "rl.ppo.seed: set by PolicyTrainingConfig itself"),
        ("rl: {algorithm: dpo}", "rl.algorithm: must be ppo, grpo or rloo"),
        ("rl_algorithm: dpo", "rl.algorithm: must be ppo, grpo or rloo"),
        ("label: {samples_per_prompt: 1}", "label.samples_per_prompt: must be at least 2"),
        ("rl: {ppo: {batch_size: 1}}", "rl.ppo.mini_batch_size: must be between 1 and batch_size"),
        ("sl_data: {limit: 0}", "sl_data.limit: must be at least 1"),
        ("eval: {samples: 0}", "eval.samples: must be at least 1"),
    ],
)
def test_run_config_errors_name_the_section_and_field(tmp_path, text, expected):
    from services.pipeline.run import RunConfig

    path = tmp_path / "run.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, path)
    assert str(err.value) == f"{path}: {expected}" or str(err.value).startswith(f"{path}: {expected}")


def test_a_trainer_config_with_the_old_flat_keys_loads_with_them_moved_into_the_sections(tmp_path):
    """The k8s trainer config as it was (flat reward_* keys) still loads; so do policy_training's
    old keys; the shipped one (new shape) loads without a warning."""
    import warnings

    from services.config import ConfigDeprecationWarning
    from services.paths import REPO_ROOT
    from services.trainer.config import TrainerConfig

    old = tmp_path / "k8s-trainer.yaml"
    old.write_text(
        "group: trainer\nwork_dir: /var/lib/cai/work\nreward_base_model: /models/reward-base\ntrain_every: 256\n"
        "reward_service: dns:///reward-headless:50051\n"
        "policy_training: {enabled: false, generation_service: dns:///generation-headless:50051,\n"
        "  reward_service: dns:///reward-headless:50051}\n"
        "server: {grace_seconds: 30}\n"
    )
    with pytest.warns(ConfigDeprecationWarning, match="reward_base_model is deprecated, use reward.model"):
        cfg = load_config(TrainerConfig, old, check=False)
    assert cfg.reward.model == "/models/reward-base" and cfg.reward.batch_size == 8  # the trainer's default
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigDeprecationWarning)
        assert load_config(TrainerConfig, REPO_ROOT / "k8s" / "base" / "config" / "trainer.yaml", check=False) == cfg
    path = tmp_path / "trainer.yaml"
    path.write_text(
        "queue: sqlite:///q.db\nwork_dir: /w\nreward_batch_size: 4\nhelpfulness_ratio: 0.5\n"
        "policy_training: {enabled: true, policy: /p, steps: 3, batch_size: 4, kl_coef: 0.2, lora: true}\n"
    )
    with pytest.warns(ConfigDeprecationWarning, match=r"policy_training\.kl_coef is deprecated, use policy_training"):
        cfg = load_config(TrainerConfig, path)
    assert (cfg.reward.batch_size, cfg.reward.helpfulness_ratio) == (4, 0.5)
    ppo = cfg.policy_training.ppo
    assert (ppo.steps, ppo.batch_size, ppo.kl_coef, ppo.lora, ppo.max_new_tokens) == (3, 4, 0.2, True, 48)


def test_code_passing_the_old_flat_keywords_keeps_working_with_a_warning():
    from services.config import ConfigDeprecationWarning
    from services.trainer.config import PolicyTrainingConfig, TrainerConfig

    with pytest.warns(ConfigDeprecationWarning, match=r"TrainerConfig\(reward_batch_size=\.\.\.\) is deprecated"):
        cfg = TrainerConfig(queue="q", work_dir="w", reward_base_model="/m", reward_batch_size=4)
    assert (cfg.reward.model, cfg.reward.batch_size, cfg.reward.epochs) == ("/m", 4, 1.0)
    with pytest.warns(ConfigDeprecationWarning):
        pt = PolicyTrainingConfig(steps=2, batch_size=4, learning_rate=0.5)
    assert (pt.ppo.steps, pt.ppo.batch_size, pt.ppo.learning_rate, pt.ppo.max_new_tokens) == (2, 4, 0.5, 48)
    with pytest.warns(ConfigDeprecationWarning, match=r"PolicyTrainingConfig\.steps is deprecated, use \.ppo\.steps"):
        assert pt.steps == 2
