"""`cai label` and `cai sl-data` report a bad prompts file (file and line) before any engine
starts, not after the services have loaded their models."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize(
    "command",
    [
        ["label", "--queue", "sqlite:///{tmp}/q.db?stream=helper12_fail_fast", "--helpfulness-pairs", ""],
        ["sl-data", "--out", "{tmp}/out", "--helpfulness", ""],
    ],
)
def test_bad_prompts_file_is_reported_before_engines_start(command, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "p1", "messages": [{"role": "user", "content": "Hi"}]}\n{"id": "p2", "messages": 7}\n')
    args = [a.format(tmp=tmp_path) for a in command]
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", *args, "--prompts", str(bad), "--model", str(tmp_path / "no-model")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{bad}:2" in result.stderr, result.stderr[-2000:]
    assert "no-model" not in result.stderr and "Traceback" not in result.stderr
