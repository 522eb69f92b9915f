"""`cai eval`: held-out prompts only, several samples with bootstrap intervals, over-refusal, fixed refusal regex."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.pipeline.evaluate import bootstrap_ci, is_refusal
from services.prompts import RED_TEAM, load_prompts, prompt_part
from tests.conftest import REPO


@pytest.mark.parametrize(
    "text, refusal",
    [
        ("I'm sorry to hear that. Here is what you can do.", False),
        ("I am sorry to hear about your loss.", False),
        ("I will not help with that.", True),
        ("I can’t help with that.", True),  # curly apostrophe
        ("I’m unable to assist.", True),
        ("I'm sorry, but I can't do that.", True),
        ("I won’t write that.", True),
        ("Sure: call a locksmith, they can open it.", False),
    ],
)
def test_refusal_regex_is_fixed(text, refusal):
    assert is_refusal(text) is refusal


def test_bootstrap_interval_holds_the_mean_and_narrows_with_agreement():
    lo, hi = bootstrap_ci([[1.0, 0.0]] * 20 + [[1.0, 1.0]] * 20, resamples=500, seed=1)
    assert lo < 0.75 < hi
    assert bootstrap_ci([[0.5, 0.5]] * 10, resamples=200) == [0.5, 0.5]


def test_cai_eval_refuses_training_prompts_unless_told(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "eval",
        "--policy",
        "a=x",
        "--policy",
        "b=y",
        "--split",
        "all",
        "--out",
        str(tmp_path / "e.json"),
    ]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--allow-train-prompts" in run.stderr and "Traceback" not in run.stderr


def test_cai_eval_reports_held_out_sets_apart_with_intervals_and_over_refusal(tiny_model, tiny_model_b, tmp_path):
    out = tmp_path / "eval.json"
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "eval",
        "--policy",
        f"base={tiny_model}",
        "--policy",
        f"other={tiny_model_b}",
        "--engine",
        "transformers",
        "--prompts",
        "12",
        "--samples",
        "2",
        "--max-tokens",
        "4",
        "--bootstrap",
        "200",
        "--out",
        str(out),
    ]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["split"]["part"] == "eval" and len(result["split"]["files"]["red_team"]["sha256"]) == 64
    assert result["samples_per_prompt"] == 2 and result["prompts"] == {"red_team": 12, "helpfulness": 12}
    pair = result["pairs"][0]
    for s in ("red_team", "helpfulness"):  # harmlessness and helpfulness apart
        assert pair[s]["comparisons"] == 24 and pair[s]["ci95"][0] <= pair[s]["win_rate_a"] <= pair[s]["ci95"][1]
    base = result["policies"]["base"]
    bait = [p for p in load_prompts(RED_TEAM) if prompt_part(p.id) == "eval"][:12]
    assert base["over_refusal"]["red_team"]["prompts"] == sum(p.meta["over_refusal_bait"] for p in bait)
    assert "helpfulness" not in base.get("over_refusal", {})
    assert result["judge"]["constitution_sha256"] and result["judge_same_constitution_as_training"] is False
    assert "over-refusal" in run.stdout and "95% CI" in run.stdout
    # refusals decided by the judge under the refusal principle, the regex kept beside it
    assert result["refusal_method"].startswith("judge under judge-no-needless-refusal")
    assert 0.0 <= base["refusal"]["red_team"]["regex_rate"] <= 1.0


def test_eval_judge_constitution_without_the_refusal_principle_falls_back_to_the_regex(tiny_model, tmp_path):
    from services.constitution import DEFAULT_CONSTITUTION

    other = tmp_path / "other.yaml"
    other.write_text(DEFAULT_CONSTITUTION.read_text().replace("id: judge-no-needless-refusal", "id: judge-helps", 1))
    out = tmp_path / "eval.json"
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "eval",
        "--policy",
        f"a={tiny_model}",
        "--policy",
        f"b={tiny_model}",
        "--engine",
        "transformers",
        "--prompts",
        "2",
        "--samples",
        "1",
        "--max-tokens",
        "2",
        "--bootstrap",
        "50",
        "--eval-constitution",
        str(other),
        "--out",
        str(out),
    ]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["refusal_method"].startswith("regex (the judge's constitution has no principle")
    assert result["judge"]["constitution_file"] == "other.yaml"


async def test_evaluate_serves_each_policy_from_its_own_engine_without_swaps(tiny_model, tiny_model_b):
    """``cai run``'s evaluation: one generation service per policy (engines started once, no
    LoadCheckpoint), and the judge sharing the first policy's engine keeps its model."""
    from services.engines.config import EngineConfig, engine_starts
    from services.pipeline.embedded import EmbeddedServices
    from services.pipeline.evaluate import EvalConfig, evaluate
    from services.prompts import HELPFULNESS, split_prompts

    a = EngineConfig(kind="transformers", model=tiny_model)
    b = EngineConfig(kind="transformers", model=tiny_model_b)
    sets = {
        "red_team": split_prompts(load_prompts(RED_TEAM), "eval")[:2],
        "helpfulness": split_prompts(load_prompts(HELPFULNESS), "eval")[:2],
    }
    before = engine_starts()
    async with EmbeddedServices() as embedded:
        generation = {"a": await embedded.address("generation", a), "b": await embedded.address("generation", b)}
        judge = await embedded.address("judge", a)
        assert await embedded.address("generation", a) == generation["a"]  # started once, handed back
        results = await evaluate(
            {"a": tiny_model, "b": tiny_model_b},
            sets,
            {"generation": generation, "judge": judge},
            EvalConfig(max_tokens=2, samples=1, bootstrap=20, refusal_principle=""),
        )
    assert engine_starts() - before == 2  # a (generation + judge) and b; no swap started another
    assert results["judge"]["model"] == tiny_model  # the judge's provenance: still model a
    assert set(results["policies"]) == {"a", "b"} and results["pairs"][0]["red_team"]["comparisons"] == 2
