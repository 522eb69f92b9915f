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
