"""The RL phase over the trainer's repeated rounds: both halves of the prompts mixed, the
reference kept at the SL-CAI policy, the prompt order advanced, PPO's value head and KL
coefficient carried from one round to the next; the helpfulness share of reward-model data
reported and warned about."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from safetensors.torch import load_file

from services.trainer.config import PolicyTrainingConfig, TrainerConfig
from services.trainer.worker import TrainerWorker
from services.training.policy import folder_fingerprint, prompt_sets, rollout_prompts, weights_fingerprint
from services.training.ppo_config import PPOConfig


def _two_rounds(tmp_path: Path, tiny_model: str, reward_model: str, ppo: dict, **pt_fields) -> list[dict]:
    """Two RL rounds run by the trainer's worker, as after two reward-model checkpoints."""
    pt = PolicyTrainingConfig(
        enabled=True, policy=tiny_model, ppo=PPOConfig(steps=1, batch_size=4, max_new_tokens=4, **ppo), **pt_fields
    )
    worker = TrainerWorker(
        TrainerConfig(queue=f"sqlite:///{tmp_path / 'q.db'}", work_dir=str(tmp_path / "work"), policy_training=pt)
    )
    (tmp_path / "work" / "checkpoints").mkdir(parents=True)
    state = {"trained_rows": 0, "reward_checkpoints": [], "policy_checkpoints": []}
    for _ in range(2):
        state = worker.train_policy(state, Path(reward_model))
    return [json.loads((Path(p) / "manifest.json").read_text()) for p in state["policy_checkpoints"]]


def test_reference_stays_the_sl_cai_policy_across_two_rounds(tiny_model, tiny_reward_model_path, tmp_path):
    first, second = _two_rounds(
        tmp_path, tiny_model, tiny_reward_model_path, {"learning_rate": 5e-2}, algorithm="grpo", num_generations=4
    )
    sl_cai = folder_fingerprint(tiny_model)
    assert second["start"].endswith("policy-00001")  # round 2 continues from round 1's policy ...
    assert folder_fingerprint(second["start"]) != sl_cai  # ... which training changed ...
    # ... but both rounds hold the SL-CAI weights as their KL reference
    assert first["reference_fingerprint"] == second["reference_fingerprint"] == sl_cai
    assert second["reference"] == tiny_model and second["num_generations"] == 4


def test_prompt_order_differs_between_rounds_with_both_halves_mixed():
    pt = PolicyTrainingConfig(ppo=PPOConfig(steps=6, batch_size=8), helpfulness_share=0.25)
    sets = prompt_sets(pt)
    assert set(sets) == {"red_team", "helpfulness"}
    helpful = {json.dumps(c) for c in sets["helpfulness"]}
    round0, round1 = rollout_prompts(pt, 0, 0, sets=sets), rollout_prompts(pt, 0, 1, sets=sets)
    assert round0 != round1 and rollout_prompts(pt, 0, 0, sets=sets) == round0
    for prompts in (round0, round1):
        for b in range(0, len(prompts), 8):
            assert sum(json.dumps(c) in helpful for c in prompts[b : b + 8]) == 2  # 0.25 of every batch
    # the train part of the split only: no prompt cai eval scores
    from services.prompts import HELPFULNESS, RED_TEAM, load_prompts, split_prompts

    held_out = {
        json.dumps(list(p.messages)) for f in (RED_TEAM, HELPFULNESS) for p in split_prompts(load_prompts(f), "eval")
    }
    assert not held_out & {json.dumps(c) for c in round0 + round1}


def test_kl_coefficient_and_value_head_restored(tiny_model, tiny_reward_model_path, tmp_path):
    import shutil

    reward = tmp_path / "reward-00007"  # a reward checkpoint as the trainer writes it, with its manifest
    shutil.copytree(tiny_reward_model_path, reward)
    (reward / "manifest.json").write_text(
        json.dumps(
            {
                "id": "reward-00007",
                "kind": "reward",
                "constitution_sha256": "c" * 64,
                "constitution_sha256s": ["c" * 64],
            }
        )
    )
    first, second = _two_rounds(
        tmp_path, tiny_model, str(reward), {"learning_rate": 1e-3, "kl_coef": 0.2}, algorithm="ppo"
    )
    # RL manifests carry the reward model's id and the constitution its labels came from
    assert second["constitution_sha256"] == "c" * 64 and second["reward_model_id"] == "reward-00007"
    round1 = Path(second["start"])
    saved = json.loads((round1 / "ppo" / "state.json").read_text())
    assert first["kl_coef_start"] == 0.2 and saved["kl_coef"] == first["kl_coef_end"] != 0.2  # adaptive: moved
    assert second["resumed_ppo_state"] and second["kl_coef_start"] == saved["kl_coef"]
    head = load_file(round1 / "ppo" / "value_head.safetensors")
    assert any(v.abs().sum() > 0 for v in head.values())  # trained away from its zero start

    class Head(dict):
        def state_dict(self):
            return {k: v for k, v in self.items()}

    assert second["value_head_fingerprint_start"] == weights_fingerprint(Head(head))
    assert second["value_head_fingerprint_start"] != first["value_head_fingerprint_start"]
    assert first["reference_fingerprint"] == second["reference_fingerprint"] == folder_fingerprint(tiny_model)
    assert second["data"]["round"] == 1 and second["data"]["helpfulness_prompts"] == 2  # 0.5 of 4


def test_helpfulness_share_reported_and_warned(tiny_reward_model_path, tmp_path, caplog):
    from services.training.reward_config import RewardRunConfig
    from services.training.reward_trainer import helpfulness_pairs_to_comparisons, train_reward_model

    harmless = [
        {
            "id": f"h{i}",
            "kind": "harmlessness",
            "prompt": [{"role": "user", "content": f"q {i}"}],
            "answer_a": "fine",
            "answer_b": "harmful",
            "p_a": 0.8,
        }
        for i in range(12)
    ]
    helpful = helpfulness_pairs_to_comparisons(
        [
            {
                "id": f"p{i}",
                "messages": [{"role": "user", "content": f"help {i}"}],
                "chosen": "useful",
                "rejected": "no",
            }
            for i in range(2)
        ]
    )
    with caplog.at_level(logging.WARNING, logger="services.training.reward_trainer"):
        out = train_reward_model(
            RewardRunConfig(
                model=tiny_reward_model_path,
                out=str(tmp_path / "rm"),
                max_steps=1,
                helpfulness_ratio=0.25,
                eval_fraction=0.0,
            ),
            harmless,
            helpful,
        )
    manifest = json.loads((out / "manifest.json").read_text())
    data = manifest["data"]
    assert data["helpfulness_wanted"] == 4 and data["helpfulness"] == 2 and data["helpfulness_short"] is True
    assert data["helpfulness_share"] == pytest.approx(2 / 14) and data["helpfulness_share_target"] == 0.25
    assert manifest["metrics"]["helpfulness_share"] == pytest.approx(2 / 14)
    assert manifest["warnings"] and "below its target" in manifest["warnings"][0]
    assert any("below its target" in r.getMessage() for r in caplog.records)
