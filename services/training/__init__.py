"""The training library: what the trainer service and ``cai train`` run, with no queue or server in it.

- ``ppo``: the PPO math (GAE, clipped losses, KL penalty and controllers), pure tensor functions;
- ``ppo_config`` / ``ppo_trainer``: our PPO (policy + value head, rollouts, reward over gRPC or in-process);
- ``policy``: one policy-optimisation round (PPO, or TRL's GRPO/RLOO) against a reward model;
- ``sft_config`` / ``sft_trainer``: supervised fine-tuning on SL-CAI data;
- ``reward_config`` / ``reward_trainer``: the soft-label Bradley-Terry reward model;
- ``checkpoint``: checkpoint folders with their ``manifest.json``, and the shared TRL arguments.

The public names below are imported on first use (``from services.training import PPOConfig``), so
importing the package does not load torch or TRL.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PPOConfig": "ppo_config",
    "PPOTrainer": "ppo_trainer",
    "SFTRunConfig": "sft_config",
    "train_sft": "sft_trainer",
    "RewardRunConfig": "reward_config",
    "train_reward_model": "reward_trainer",
    "SoftLabelRewardTrainer": "reward_trainer",
    "optimize_policy": "policy",
    "read_manifest": "checkpoint",
    "write_manifest": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
