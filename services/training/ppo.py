"""The mathematics of PPO for language models, as small pure functions on tensors.

Shapes: ``(batch, T)`` per-token tensors over right-padded completions, with ``mask`` 1 on real
completion tokens (up to and including the end-of-sequence token) and 0 on the padding after them.
Token ``t`` is an action; ``values[:, t]`` estimates the return from the state just before it.
"""

from __future__ import annotations

import torch

WHITEN_EPS = 1e-8


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(x * mask) / sum(mask)``: the mean over the real tokens (a scalar)."""
    return (x * mask).sum() / mask.sum()


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` with the mean and (population) variance over the real tokens;
    with ``shift_mean=False`` the mean is added back (only the scale changes). Padding becomes 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) per token:

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, with
    ``V`` and ``A`` zero after the last real token (the episode ends there). Returns
    ``(advantages, returns)`` with ``returns = A + V``, both zero on padding.
    """
    rewards = rewards * mask
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The clipped surrogate objective, as a loss:

    ``ratio = exp(logp - old_logp)``; ``loss = mean(max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c)))``.
    Returns ``(loss, clipfrac, approx_kl)``: ``clipfrac`` is the fraction of tokens where the clipped
    term is the larger one, ``approx_kl = mean((ratio - 1) - log ratio)`` (Schulman's k3 estimate of
    KL(old || new)); means over the real tokens.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, clipfrac.detach(), approx_kl.detach()


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped value loss:

    ``V_clip = old_V + clip(V - old_V, -c, c)``; ``loss = 0.5 * mean(max((V - R)^2, (V_clip - R)^2))``.
    Returns ``(loss, clipfrac)``, ``clipfrac`` the fraction of tokens where the clipped error is the
    larger one; means over the real tokens.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    clipfrac = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clipfrac.detach()


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate ``log pi(token) - log pi_ref(token)`` (k1: unbiased for KL(pi || ref)
    on tokens sampled from pi)."""
    return logprobs - ref_logprobs


def per_token_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """``r_t = -kl_coef * (logp_t - ref_logp_t)`` on every real token, plus the sequence's score
    ``scores[i]`` on its last real token; zero on padding. ``scores`` has shape ``(batch,)``."""
    lengths = mask.sum(dim=1).long()
    if (lengths == 0).any():
        raise ValueError("every completion needs at least one real token (a row of mask is all zero)")
    rewards = -kl_coef * kl_penalty(logprobs, ref_logprobs) * mask
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, lengths - 1] += scores.to(rewards.dtype)
    return rewards


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences"): ``error = clip(kl / target - 1, -0.2, 0.2)``; ``value *= 1 + error * n_steps / horizon``,
    ``n_steps`` being the rollouts the KL was measured on."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current: float, n_steps: int) -> None:
        proportional_error = min(max(current / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon


class FixedKLController:
    """A KL coefficient that never changes."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current: float, n_steps: int) -> None:
        """Keeps the coefficient (same interface as ``AdaptiveKLController.update``)."""
