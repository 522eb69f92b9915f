"""Training arguments every trainer shares (services/training/checkpoint.py)."""

from __future__ import annotations

import pytest
import torch

from services.training.checkpoint import PRECISIONS, cpu_has_bf16, training_args, uses_bf16
from services.training.ppo_config import PPOConfig
from services.training.reward_config import RewardRunConfig
from services.training.sft_config import SFTRunConfig


def test_bf16_precision_autocasts_on_a_cpu_too_and_auto_keeps_float32_there():
    assert training_args("bf16")["bf16"] is True
    assert training_args("fp32")["bf16"] is False
    on_gpu = torch.cuda.is_available()
    assert uses_bf16("auto") == (on_gpu and torch.cuda.is_bf16_supported())


def test_no_gradient_checkpointing_on_a_cpu():
    assert training_args()["gradient_checkpointing"] == torch.cuda.is_available()


def test_cpu_bf16_detection_reads_the_cpu_flags():
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    assert cpu_has_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.mark.parametrize(
    "config",
    [
        SFTRunConfig(data="d", out="o", precision="fp16"),
        RewardRunConfig(out="o", precision="fp16"),
        PPOConfig(precision="fp16"),
    ],
)
def test_an_unknown_precision_is_a_config_error_naming_the_field(config):
    assert config.validate() == ("precision", f"must be one of {', '.join(PRECISIONS)}")
