"""The ``cai`` command line: a package of command modules with one error boundary."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [
    "run",
    "serve",
    "serve generation",
    "serve trainer",
    "sl-data",
    "label",
    "eval",
    "train sft",
    "tiny-model",
    "model prepare",
    "judge validate",
    "constitution check",
    "constitution diff",
    "generate",
    "trace",
    "protos",
    "k8s",
]


def _cai(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_every_command_is_a_module_with_add_parser_and_run():
    import services.cli as cli

    for module in cli.COMMANDS:
        assert callable(module.add_parser) and callable(module.run), module.__name__
    parser = cli.build_parser()
    for command in COMMANDS:
        with pytest.raises(SystemExit) as done:
            parser.parse_args([*command.split(), "--help"])
        assert done.value.code == 0, command


def test_a_cai_error_exits_2_with_one_line_and_no_traceback(tmp_path):
    out = _cai("model", "prepare", str(tmp_path / "no-such-model"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("cai: error: ") and "no-such-model" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_failed_grpc_call_exits_2_naming_code_and_details(capsys):
    import grpc

    from services.api.cai.v1 import judge_pb2, judge_pb2_grpc
    from services.cli import run_command

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class Args:
        @staticmethod
        def func(args):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                judge_pb2_grpc.JudgeStub(channel).Compare(judge_pb2.CompareRequest(), timeout=2)
            return 0

    assert run_command(Args()) == 2
    err = capsys.readouterr().err
    assert err.startswith("cai: error: service call failed: UNAVAILABLE: ") or err.startswith(
        "cai: error: service call failed: DEADLINE_EXCEEDED: "
    ), err


def test_label_and_sl_data_flags_are_generated_from_the_config_fields_with_their_docstrings():
    import dataclasses

    from services.cli import build_parser
    from services.cli._config_flags import config_fields, field_docs
    from services.pipeline.label import LabelConfig
    from services.pipeline.sl_data import SLDataConfig

    parser = build_parser()
    for command, config_type, exclude in (("label", LabelConfig, {"swap_debias"}), ("sl-data", SLDataConfig, set())):
        sub = parser._subparsers._group_actions[0].choices[command]
        flags = {a.dest: a for a in sub._actions}
        docs = field_docs(config_type)
        scalar = [f.name for f, _ in config_fields(config_type)]
        assert len(scalar) >= 10 and set(docs) >= set(scalar)
        for name in scalar:
            if name in exclude:
                continue
            assert f"--{name.replace('_', '-')}" in flags[name].option_strings, (command, name)
            assert flags[name].help.startswith(docs[name].replace("%", "%%")), (command, name)
        assert {f.name for f in dataclasses.fields(config_type)} - set(scalar) <= {"policy", "judge_model"}


def test_old_flag_names_keep_working_and_flags_win_over_the_config_file(tmp_path, monkeypatch):
    from services.cli import build_parser
    from services.cli.label import label_config
    from services.cli.sl_data import sl_data_config

    monkeypatch.delenv("CAI_QUEUE_URL", raising=False)
    monkeypatch.delenv("CAI_QUEUE_URL_FILE", raising=False)
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    monkeypatch.delenv("CAI_NUM_SHARDS", raising=False)
    file = tmp_path / "label.yaml"
    file.write_text("queue: sqlite:///q.db\nbatch_size: 3\nseed: 5\nmode: chain-of-thought\n")
    parse = build_parser().parse_args
    cfg = label_config(parse(["label", "--config", str(file), "--seed", "9", "--samples", "3", "--no-swap"]))
    assert (cfg.queue, cfg.batch_size, cfg.mode) == ("sqlite:///q.db", 3, "chain-of-thought")  # the file's
    assert (cfg.seed, cfg.samples_per_prompt, cfg.swap_debias) == (9, 3, False)  # the flags win
    assert cfg.max_tokens == 128  # neither: the field's default
    assert (
        label_config(parse(["label", "--queue", "sqlite:///x.db", "--samples-per-prompt", "4"])).samples_per_prompt == 4
    )
    file = tmp_path / "sl.yaml"
    file.write_text("rounds: 2\nlimit: 7\n")
    cfg = sl_data_config(
        parse(["sl-data", "--out", "o", "--config", str(file), "--rounds", "3", "--eval-fraction", "0.5"])
    )
    assert (cfg.rounds, cfg.limit, cfg.eval_fraction) == (3, 7, 0.5)
    out = _cai("label", "--queue", "sqlite:///x.db", "--samples", "1", "--helpfulness-pairs", "")
    assert out.returncode == 2 and out.stderr.startswith("cai: error: ") and "samples_per_prompt" in out.stderr
    assert "Traceback" not in out.stderr


def test_run_flags_are_generated_from_the_run_config_and_its_sections_and_win_over_the_file(tmp_path):
    """Every field of RunConfig and of its sections is a flag named by its dotted path, with the
    field's docstring and the run's default as help; flags win over --config, which wins over the
    defaults; fields the run fills in itself have no flag."""
    from services.cli import build_parser
    from services.cli._config_flags import field_docs, flag_fields
    from services.cli.run import run_config
    from services.pipeline.run import RunConfig
    from services.training.ppo_config import PPOConfig

    sub = build_parser()._subparsers._group_actions[0].choices["run"]
    flags = {a.dest: a for a in sub._actions}
    paths = [path for path, *_ in flag_fields(RunConfig, nested=True)]
    assert {"sft.epochs", "rl.ppo.kl_coef", "label.mode", "eval.samples", "sl_data.rounds", "seed"} <= set(paths)
    assert not {"sft.data", "sl_data.seed", "label.queue", "rl.policy", "rl.ppo.seed"} & set(paths)
    for path in paths:
        assert "--" + path.replace("_", "-") in flags[path].option_strings, path
    assert flags["rl.ppo.kl_coef"].help.startswith(field_docs(PPOConfig)["kl_coef"].replace("%", "%%"))
    assert flags["sft.learning_rate"].help.endswith("(default: 2e-05)")  # the run's, not SFTRunConfig's 1e-05
    file = tmp_path / "run.yaml"
    file.write_text("sft_epochs: 5\nsft: {learning_rate: 1.0e-3}\nrl: {ppo: {steps: 3}}\n")  # an old key too
    parse = build_parser().parse_args
    with pytest.warns(FutureWarning, match="sft_epochs is deprecated, use sft.epochs"):
        cfg = run_config(parse(["run", "--config", str(file), "--sft.epochs", "4", "--rl.ppo.kl-coef", "0.3"]))
    assert (cfg.sft.epochs, cfg.rl.ppo.kl_coef) == (4.0, 0.3)  # the flags
    assert (cfg.sft.learning_rate, cfg.rl.ppo.steps) == (1e-3, 3)  # the file
    assert (cfg.sft.batch_size, cfg.sft.gradient_accumulation_steps, cfg.rl.ppo.batch_size) == (
        1,
        4,
        4,
    )  # the run's defaults
    assert run_config(parse(["run", "--no-label.swap-debias", "--sft.rounds", "all"])).label.swap_debias is False


def test_train_sft_and_eval_flags_keep_their_names_and_come_from_the_config_fields(tmp_path):
    from services.cli import build_parser
    from services.cli.train import sft_config

    parse = build_parser().parse_args
    cfg = sft_config(
        parse(["train", "sft", "--data", "d", "--out", "o", "--rounds", "all", "--include-flagged", "--lora"])
    )
    assert (cfg.data, cfg.out, cfg.rounds, cfg.include_flagged, cfg.lora) == ("d", "o", 0, True, True)
    file = tmp_path / "sft.yaml"
    file.write_text("data: d\nout: o\nepochs: 3\nlearning_rate: 1.0e-4\n")
    cfg = sft_config(parse(["train", "sft", "--config", str(file), "--epochs", "2", "--lora-r", "4"]))
    assert (cfg.epochs, cfg.learning_rate, cfg.lora_r) == (2.0, 1e-4, 4)
    args = parse(["eval", "--policy", "a=x", "--policy", "b=y", "--prompts", "3", "--samples", "2", "--split", "all"])
    assert (args.prompts, args.samples, args.split) == (3, 2, "all")
    out = _cai("train", "sft", "--out", "o")
    assert out.returncode == 2 and "cai: error: command line: data: is required" in out.stderr, out.stderr


def test_a_deprecated_config_key_prints_one_warning_line_naming_the_new_key(tmp_path):
    file = tmp_path / "old.yaml"
    file.write_text("sft_epochs: 2\nrl_algorithm: dpo\n")
    out = _cai("run", "--config", str(file), "--out", str(tmp_path / "run"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"cai: warning: {file}: sft_epochs is deprecated, use sft.epochs\n" in out.stderr
    assert f"cai: error: {file}: rl.algorithm: must be ppo, grpo or rloo" in out.stderr
