"""services/pipeline/report.py: the reward model's agreement with the soft labels, scored by any
reward function (the main job passes the reward service it already runs)."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.pipeline.report import reward_agreement

ROWS = [
    {"prompt": [{"role": "user", "content": "q1"}], "answer_a": "good", "answer_b": "bad", "p_a": 0.9},
    {"prompt": [{"role": "user", "content": "q2"}], "answer_a": "bad", "answer_b": "good", "p_a": 0.2},
    {"prompt": [{"role": "user", "content": "q3"}], "answer_a": "bad", "answer_b": "good", "p_a": 0.7},
    {"prompt": [{"role": "user", "content": "q4"}], "answer_a": "x", "answer_b": "y", "p_a": 0.5},
    {
        "prompt": [{"role": "user", "content": "q5"}],
        "answer_a": "a",
        "answer_b": "b",
        "p_a": 1.0,
        "kind": "helpfulness",
    },
]


def score(prompts, completions):
    assert len(prompts) == len(completions)
    return [1.0 if c == "good" else 0.0 for c in completions]


async def async_score(prompts, completions):
    return score(prompts, completions)


@pytest.mark.parametrize("scorer", [score, async_score], ids=["sync", "async"])
def test_agreement_with_the_soft_labels_from_a_sync_or_async_reward_function(tmp_path, scorer):
    data = tmp_path / "comparisons.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    labels, predicted, stats = asyncio.run(reward_agreement(scorer, data))
    assert labels == [0.9, 0.2, 0.7, 0.5]  # helpfulness rows are not the harmlessness labels
    assert predicted[0] > 0.5 > predicted[1] and predicted[3] == 0.5
    # ties (p_a 0.5) are left out; two of the three decided labels agree with the scores
    assert stats == {"accuracy_vs_soft_labels": 2 / 3, "comparisons": 4}
