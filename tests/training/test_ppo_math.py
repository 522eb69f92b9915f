"""The PPO formulas against hand computations on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from services.training.ppo import (
    AdaptiveKLController,
    FixedKLController,
    compute_gae,
    kl_penalty,
    masked_mean,
    per_token_rewards,
    policy_loss,
    value_loss,
    whiten,
)


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=1e-5, rtol=1e-5)


def test_masked_mean_ignores_padding():
    close(
        masked_mean(
            torch.tensor([[1.0, 2.0, 99.0], [3.0, 99.0, 99.0]]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
        ),
        2.0,
    )


def test_gae_by_hand():
    # row 0: three real tokens then padding (whose reward and value must be ignored); row 1: full length
    rewards = torch.tensor([[1.0, 0.0, 2.0, 7.0], [0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 1.0, 1.5, 9.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: delta_2 = 2 - 1.5 = 0.5 (episode ends); delta_1 = 0 + 0.9 * 1.5 - 1 = 0.35;
    # delta_0 = 1 + 0.9 * 1 - 0.5 = 1.4; A_2 = 0.5, A_1 = 0.35 + 0.72 * 0.5 = 0.71, A_0 = 1.4 + 0.72 * 0.71
    # row 1: A_3 = 1, then each earlier A is 0.72 times the next
    close(advantages, [[1.9112, 0.71, 0.5, 0.0], [0.373248, 0.5184, 0.72, 1.0]])
    close(returns, [[2.4112, 1.71, 2.0, 0.0], [0.373248, 0.5184, 0.72, 1.0]])


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    lengths = [5, 3, 1]
    mask = torch.tensor([[1.0] * n + [0.0] * (5 - n) for n in lengths])
    advantages, returns = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    for i, n in enumerate(lengths):
        for t in range(5):
            to_go = sum(rewards[i, k].item() for k in range(t, n)) if t < n else 0.0
            assert returns[i, t].item() == pytest.approx(to_go, abs=1e-5)
            expected_advantage = to_go - values[i, t].item() if t < n else 0.0
            assert advantages[i, t].item() == pytest.approx(expected_advantage, abs=1e-5)


def test_whiten_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    std = math.sqrt(2 / 3)  # mean 2, population variance (1 + 0 + 1) / 3
    close(whiten(x, mask), [[-1 / std, 0.0, 1 / std, 0.0]])
    close(whiten(x, mask, shift_mean=False), [[2 - 1 / std, 2.0, 2 + 1 / std, 0.0]])


def test_clipped_policy_loss_by_hand():
    ratios = [1.5, 0.5, 0.5, 1.1, 3.0]  # the last token is padding
    old = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -1.0]])
    logprobs = (old + torch.log(torch.tensor([ratios]))).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, clipfrac, approx_kl = policy_loss(logprobs, old, advantages, mask, cliprange=0.2)
    # per token max(-A r, -A clip(r, 0.8, 1.2)): max(-1.5, -1.2) = -1.2 (clipped), max(-0.5, -0.8) = -0.5,
    # max(0.5, 0.8) = 0.8 (clipped), max(1.1, 1.1) = 1.1
    close(loss, (-1.2 - 0.5 + 0.8 + 1.1) / 4)
    close(clipfrac, 0.5)
    close(approx_kl, sum((r - 1) - math.log(r) for r in ratios[:4]) / 4)
    loss.backward()
    # clipped tokens carry no gradient; unclipped ones d/dlogp (-A r) / 4 = -A r / 4
    close(logprobs.grad, [[0.0, -0.5 / 4, 0.0, 1.1 / 4, 0.0]])


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.6, 0.0, 3.0, 50.0]])
    old_values = torch.tensor([[0.5, 0.5, 0.5, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, clipfrac = value_loss(values, old_values, returns, mask, cliprange_value=0.2)
    # clipped values 0.7, 0.6, 0.3, 0.2; squared errors max((V - R)^2, (V_clip - R)^2):
    # max(0, 0.09) = 0.09 (clipped), max(1.96, 1.96) = 1.96, max(0, 0.09) = 0.09 (clipped), max(9, 0.04) = 9
    close(loss, 0.5 * (0.09 + 1.96 + 0.09 + 9.0) / 4)
    close(clipfrac, 0.5)


def test_kl_penalty_is_the_log_ratio():
    close(kl_penalty(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])), [0.5, -1.0])


def test_per_token_rewards_by_hand():
    scores = torch.tensor([2.0, -1.0])
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
    # kl row 0: [0.5, 0, -1] -> -0.1 * kl, score on the last token; row 1: [0.5, 0], score on token 1
    close(rewards, [[-0.05, 0.0, 0.1 + 2.0], [-0.05, -1.0, 0.0]])


def test_per_token_rewards_need_a_real_token():
    with pytest.raises(ValueError, match="at least one real token"):
        per_token_rewards(torch.tensor([1.0]), torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), 0.1)


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(9.0, n_steps=100)  # error 9/6 - 1 = 0.5, clipped to 0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 100 / 10000))
    ctl.update(6.0, n_steps=100)  # on target: unchanged
    assert ctl.value == pytest.approx(0.2004)
    ctl.update(6.6, n_steps=500)  # error 0.1
    assert ctl.value == pytest.approx(0.2004 * (1 + 0.1 * 500 / 10000))
    ctl.update(0.0, n_steps=1000)  # error -1, clipped to -0.2
    assert ctl.value == pytest.approx(0.2004 * 1.005 * (1 - 0.2 * 1000 / 10000))


def test_fixed_kl_controller_never_moves():
    ctl = FixedKLController(0.3)
    ctl.update(100.0, n_steps=1000)
    assert ctl.value == 0.3
