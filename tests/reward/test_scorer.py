"""The reward scorer: scores from token ids equal scores from text, and its OpenMP workers sleep
between requests unless the operator chose a wait policy."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from services.reward.scorer import RewardScorer
from tests.conftest import REPO

PROMPTS = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
ANSWERS = ["yes", "", "Rinse the rice and simmer it.", "no " * 20, "(A)"]


def test_scoring_token_ids_equals_scoring_the_texts(tiny_reward_model_path):
    async def both():
        scorer = await RewardScorer.load(tiny_reward_model_path, batch_size=2)
        ids = scorer.token_ids(PROMPTS, ANSWERS)
        assert [len(i) for i in ids] == [scorer.count_tokens(p, a) for p, a in zip(PROMPTS, ANSWERS)]
        return await scorer.score(PROMPTS, ANSWERS), await scorer.score_token_ids(ids)

    from_text, from_ids = asyncio.run(both())
    assert from_text == from_ids and len(set(from_text)) > 1


LOAD_AND_REPORT = (
    "import asyncio, os, sys; from services.reward.scorer import RewardScorer; "
    "asyncio.run(RewardScorer.load(sys.argv[1])); print(os.environ.get('OMP_WAIT_POLICY'))"
)


@pytest.mark.parametrize(("preset", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_workers_sleep_between_requests_unless_the_operator_set_a_policy(
    tiny_reward_model_path, preset, expected
):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    out = subprocess.run(
        [sys.executable, "-c", LOAD_AND_REPORT, tiny_reward_model_path],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert out.stdout.split()[-1] == expected
