"""The reward model: the soft-label Bradley-Terry loss, the p_a column reaching the loss through
TRL's reward trainer, helpfulness mixing and order randomisation, and the saved checkpoint that
the reward service loads and scores with."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from services.prompts import HELPFULNESS_PAIRS
from services.training.checkpoint import read_manifest
from services.training.reward_config import RewardRunConfig
from services.training.reward_trainer import (
    comparisons_to_dataset,
    helpfulness_pairs_to_comparisons,
    mix_helpfulness,
    score,
    soft_bradley_terry_loss,
    soft_label_accuracy,
    split_eval,
    train_reward_model,
)


def good_bad_comparisons(n: int, seed: int, p_good: float = 0.9) -> list[dict]:
    """Comparisons where the answer with "good" is preferred (soft label), in random A/B order: a
    model only learns them if the loss sees p_a."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        good, bad = f"good answer {i % 7}", f"bad answer {i % 5}"
        swap = rng.random() < 0.5
        out.append(
            {
                "id": f"c{i}",
                "kind": "harmlessness",
                "prompt": [{"role": "user", "content": f"question {i}"}],
                "answer_a": bad if swap else good,
                "answer_b": good if swap else bad,
                "p_a": 1 - p_good if swap else p_good,
            }
        )
    return out


# -- the loss ----------------------------------------------------------------------------------


def test_soft_loss_matches_a_hand_computation():
    r_a, r_b, p_a = [1.0, -0.5, 2.0], [0.0, 0.5, 2.0], [0.8, 0.3, 0.5]

    def log_sigmoid(x: float) -> float:
        return math.log(1 / (1 + math.exp(-x)))

    expected = sum(-(p * log_sigmoid(a - b) + (1 - p) * log_sigmoid(b - a)) for a, b, p in zip(r_a, r_b, p_a)) / 3
    got = soft_bradley_terry_loss(torch.tensor(r_a), torch.tensor(r_b), torch.tensor(p_a))
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_hard_label_is_the_usual_bradley_terry_loss():
    r_a, r_b = torch.tensor([0.3, -1.2, 4.0]), torch.tensor([1.0, 0.1, -2.0])
    got = soft_bradley_terry_loss(r_a, r_b, torch.ones(3))
    assert torch.allclose(got, -torch.nn.functional.logsigmoid(r_a - r_b).mean())


def test_gradient_pushes_the_preferred_answer_up_to_the_calibrated_margin():
    def grads(margin: float) -> tuple[float, float]:
        r_a, r_b = torch.tensor([margin], requires_grad=True), torch.tensor([0.0], requires_grad=True)
        soft_bradley_terry_loss(r_a, r_b, torch.tensor([0.8])).backward()
        return r_a.grad.item(), r_b.grad.item()

    g_a, g_b = grads(0.0)
    assert g_a < 0 < g_b  # gradient descent raises r_a and lowers r_b
    assert grads(math.log(0.8 / 0.2))[0] == pytest.approx(0.0, abs=1e-6)  # optimum: sigmoid(margin) = p_a
    assert grads(3.0)[0] > 0  # a soft label does not ask for an unbounded margin


def test_accuracy_ignores_undecided_labels():
    r_a, r_b = torch.tensor([1.0, 0.0, 2.0, 5.0]), torch.tensor([0.0, 1.0, 1.0, 0.0])
    assert soft_label_accuracy(r_a, r_b, torch.tensor([0.9, 0.2, 0.4, 0.5])) == pytest.approx(2 / 3)
    assert soft_label_accuracy(r_a, r_b, torch.full((4,), 0.5)) is None


# -- data --------------------------------------------------------------------------------------


def test_comparisons_become_trl_preference_rows():
    data = comparisons_to_dataset(good_bad_comparisons(3, seed=0))
    row = data[0]
    assert set(data.column_names) == {"prompt", "chosen", "rejected", "p_a"}
    assert row["prompt"] == [{"role": "user", "content": "question 0"}]
    assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    with pytest.raises(ValueError, match="empty"):
        comparisons_to_dataset([])
    with pytest.raises(ValueError, match="p_a"):
        comparisons_to_dataset([{**good_bad_comparisons(1, seed=0)[0], "p_a": 1.5}])


def test_helpfulness_pairs_are_labeled_in_random_order():
    pairs = [json.loads(line) for line in HELPFULNESS_PAIRS.read_text().splitlines() if line.strip()]
    comps = helpfulness_pairs_to_comparisons(pairs, seed=3)
    assert len(comps) == len(pairs)
    for pair, c in zip(pairs, comps):
        assert c["kind"] == "helpfulness" and c["prompt"] == pair["messages"]
        better = c["answer_a"] if c["p_a"] == 1.0 else c["answer_b"]
        assert c["p_a"] in (0.0, 1.0) and better == pair["chosen"]
    swapped = sum(c["p_a"] == 0.0 for c in comps)
    assert 0.25 * len(comps) < swapped < 0.75 * len(comps)
    assert comps == helpfulness_pairs_to_comparisons(pairs, seed=3)
    assert comps != helpfulness_pairs_to_comparisons(pairs, seed=4)


def test_helpfulness_is_mixed_at_the_ratio():
    harmless = [{"id": f"h{i}"} for i in range(30)]
    helpful = [{"id": f"p{i}"} for i in range(100)]
    mixed = mix_helpfulness(harmless, helpful, 0.25, seed=0)
    assert mixed[:30] == harmless and len(mixed) == 40  # 10 of 40 = 0.25
    assert mixed == mix_helpfulness(harmless, helpful, 0.25, seed=0)
    assert mixed != mix_helpfulness(harmless, helpful, 0.25, seed=1)
    assert len(mix_helpfulness(harmless, helpful[:5], 0.25, seed=0)) == 35  # fewer available: all
    assert mix_helpfulness(harmless, helpful, 0.0, seed=0) == harmless
    train, held_out = split_eval(mixed, 0.1, seed=0)
    assert len(held_out) == 4 and sorted(c["id"] for c in train + held_out) == sorted(c["id"] for c in mixed)


# -- training ----------------------------------------------------------------------------------


def test_training_uses_the_soft_labels(tiny_model, tmp_path):
    out = train_reward_model(
        RewardRunConfig(
            model=tiny_model,
            out=str(tmp_path / "rm"),
            max_steps=24,
            learning_rate=3e-3,
            batch_size=8,
            eval_fraction=0.25,
            seed=0,
        ),
        good_bad_comparisons(64, seed=1),
    )
    m = read_manifest(out)["metrics"]
    # Minimum of the loss with labels 0.9/0.1 is their entropy, 0.325; ln 2 = 0.693 is chance.
    assert m["eval_loss"] < 0.45 < m["initial_eval_loss"]
    assert m["eval_accuracy"] == 1.0 and m["last_loss"] < m["first_loss"]


def test_checkpoint_loads_and_scores_like_training(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from services.models.tiny import build_tiny_model

    base = build_tiny_model(tmp_path / "tiny-rm", reward=True)
    harmless = good_bad_comparisons(12, seed=2)
    helpful = good_bad_comparisons(10, seed=3, p_good=1.0)
    cfg = RewardRunConfig(
        model=str(base),
        out=str(tmp_path / "rm"),
        max_steps=2,
        learning_rate=1e-3,
        batch_size=4,
        eval_fraction=0.25,
        lora=True,
        lora_r=4,
        seed=5,
    )
    out = train_reward_model(cfg, harmless, helpfulness=helpful)
    manifest = read_manifest(out)
    assert manifest["kind"] == "reward" and manifest["id"] == "rm" and manifest["step"] == 2
    assert manifest["data"] == {
        "harmlessness": 12,
        "helpfulness": 4,
        "helpfulness_available": 10,
        "train": 12,
        "eval": 4,
        "too_long": 0,
        "helpfulness_wanted": 4,
        "helpfulness_share": 0.25,
        "helpfulness_share_target": 0.25,
        "helpfulness_short": False,
    }
    assert not any("lora" in k or "modules_to_save" in k for k in load_file(out / "model.safetensors"))

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id is not None
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "a much longer question here"}]] * 2
    answers = ["good answer", "bad", "a long long answer to pad the others", "x"]
    batched = score(model, tokenizer, prompts, answers, batch_size=4)
    alone = [score(model, tokenizer, [p], [a], batch_size=1)[0] for p, a in zip(prompts, answers)]
    assert batched == pytest.approx(alone, abs=1e-5) and len(set(batched)) == 4

    # Scoring the held-out comparisons reproduces the evaluation made on TRL's tokenization.
    _, held_out = split_eval(
        mix_helpfulness(harmless, helpful, cfg.helpfulness_ratio, cfg.seed), cfg.eval_fraction, cfg.seed
    )
    r_a = torch.tensor(score(model, tokenizer, [c["prompt"] for c in held_out], [c["answer_a"] for c in held_out]))
    r_b = torch.tensor(score(model, tokenizer, [c["prompt"] for c in held_out], [c["answer_b"] for c in held_out]))
    p_a = torch.tensor([c["p_a"] for c in held_out])
    assert soft_bradley_terry_loss(r_a, r_b, p_a).item() == pytest.approx(manifest["metrics"]["eval_loss"], abs=1e-5)
