"""`cai run` on the shipped tiny config: the whole method end to end, with its report, its time
table, each engine started once, training on the train part of the prompt split and evaluation
on the eval part. One run (module-scoped) serves every test here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.prompts import prompt_part
from tests.conftest import REPO

STAGES = ("models", "sl_data", "sft", "label", "reward_model", "rl", "eval", "report")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cai-run") / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "run",
            "--config",
            str(REPO / "configs" / "tiny.yaml"),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return out, done.stdout, json.loads((out / "summary.json").read_text())


def test_cai_run_tiny_config_completes_with_report(tiny_run):
    out, _, summary = tiny_run
    assert set(summary["stage_seconds"]) == set(STAGES)
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
    assert (
        summary["reward_model"]["items_consumed"]
        == summary["label"]["comparisons_published"] + summary["label"]["helpfulness_published"]
    )


def test_run_starts_each_engine_once(tiny_run):
    # the base model (SL-data generation, critique and the judge), the SL-CAI policy (labelling,
    # then evaluation) and the RL-CAI policy (evaluation): three engines, none restarted for a
    # stage or swapped for a policy (before: 8, one per stage and one per LoadCheckpoint in eval)
    _, stdout, summary = tiny_run
    assert summary["engine_starts"] == 3
    assert "engines started: 3" in stdout


def test_run_prints_time_table_and_labels_per_second(tiny_run):
    _, stdout, summary = tiny_run
    table = stdout[stdout.rindex("\nstage ") + 1 :]
    for name in STAGES:
        line = next(x for x in table.splitlines() if x.startswith(name + " "))
        assert abs(float(line.split()[1]) - summary["stage_seconds"][name]) < 0.11
    assert "total" in table and "labels/s" in table
    assert summary["labels_per_second"] == pytest.approx(
        summary["label"]["comparisons_published"] / summary["stage_seconds"]["label"]
    )
    assert summary["labels_per_second"] > 0 and summary["time_table"] in stdout


def test_run_trains_on_the_train_split_and_evaluates_on_the_eval_split(tiny_run):
    out, _, summary = tiny_run
    results = json.loads((out / "eval.json").read_text())
    assert results["split"]["part"] == "eval" and results["prompts"] == {"red_team": 6, "helpfulness": 6}
    evaluated = {s["prompt_id"] for per in results["samples"].values() for rows in per.values() for s in rows}
    assert evaluated and all(prompt_part(i) == "eval" for i in evaluated)
    sl_rows = [
        json.loads(line)
        for f in ("sl_cai.jsonl", "helpfulness.jsonl")
        for line in (out / "sl_data" / f).read_text().splitlines()
    ]
    assert sl_rows and all(prompt_part(r["prompt_id"]) == "train" for r in sl_rows)
    labelled = [json.loads(line)["id"] for line in (out / "prompts_red_team_train.jsonl").read_text().splitlines()]
    assert labelled and all(prompt_part(i) == "train" for i in labelled)
    rl = json.loads((out / "checkpoints" / "rl-cai" / "manifest.json").read_text())
    assert rl["data"]["prompt_split"] == "train"
    assert summary["split"]["part"] == "train"
