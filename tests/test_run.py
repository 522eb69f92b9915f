"""`cai run` on the shipped tiny config: the whole method end to end, with its report."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_cai_run_tiny_config_completes_with_report(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "services.cli", "run", "--config", str(REPO / "configs" / "tiny.yaml"),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stage_seconds"]) == {"models", "sl_data", "sft", "label", "reward_model", "rl", "eval", "report"}
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 4
    for title in ("Label throughput", "Reward model accuracy", "RL: reward and KL", "Before / after"):
        assert title in report
    results = json.loads((out / "eval.json").read_text())
    assert set(results["policies"]) == {"base", "sl-cai", "rl-cai"}
    assert len(results["pairs"]) == 3
    assert (out / "checkpoints" / "sl-cai" / "manifest.json").exists()
    assert (out / "checkpoints" / "rl-cai" / "manifest.json").exists()
    rows = [json.loads(line) for line in (out / "sl_data" / "sl_cai.jsonl").read_text().splitlines()]
    assert {r["round"] for r in rows} == {1, 2, 3, 4}
    assert summary["reward_model"]["items_consumed"] == summary["label"]["comparisons_published"] + summary["label"]["helpfulness_published"]
