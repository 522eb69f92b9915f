"""Checkpoints: a Hugging Face folder (safetensors) plus ``manifest.json`` saying what it is;
and the training arguments the trainers share."""

from __future__ import annotations

import json
import time
from pathlib import Path

MANIFEST = "manifest.json"


PRECISIONS = ("auto", "bf16", "fp32")
"""Training precision: "auto" is bf16 on a GPU that supports it and float32 on a CPU; "bf16"
autocasts to bfloat16 on a CPU too (about 1.6x faster on one with AVX512-BF16 or AMX, see
``cpu_has_bf16``; weights and optimizer state stay float32); "fp32" never autocasts."""


def precision_problem(precision: str) -> tuple[str, str] | None:
    """What a config's ``validate`` answers for a ``precision`` field outside ``PRECISIONS``."""
    if precision not in PRECISIONS:
        return "precision", f"must be one of {', '.join(PRECISIONS)}"
    return None


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16, from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def uses_bf16(precision: str = "auto") -> bool:
    """Whether a trainer with ``precision`` (``PRECISIONS``) autocasts to bfloat16 here."""
    import torch

    if precision == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def training_args(precision: str = "auto") -> dict:
    """TRL/transformers training arguments every trainer here shares: bf16 as ``precision`` says
    (``PRECISIONS``; set explicitly because TRL defaults to bf16, which silently autocasts on a
    CPU), the CPU when there is no GPU; gradient checkpointing (TRL's default) only on a GPU, where
    it saves memory, not on a CPU, where memory is rarely what limits and recomputing the forward
    pass costs about a third more time; loss logged every step; checkpoints written by us (with a
    manifest), not by the Trainer."""
    import torch

    on_gpu = torch.cuda.is_available()
    return {
        "bf16": uses_bf16(precision),
        "use_cpu": not on_gpu,
        "gradient_checkpointing": on_gpu,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
    }


def run_args(cfg, output_dir: Path) -> dict:
    """TRL arguments of a supervised run from a run config with the fields SFT and reward-model
    training share (epochs, max_steps, learning_rate, batch_size, gradient_accumulation_steps,
    max_length, seed), plus ``training_args()``."""
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "learning_rate": cfg.learning_rate,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "max_length": cfg.max_length,
        "seed": cfg.seed,
        "disable_tqdm": True,
        **training_args(cfg.precision),
    }


def write_manifest(
    folder: Path,
    *,
    kind: str,
    step: int,
    base_model: str,
    data: dict,
    constitution_sha256: str = "",
    metrics: dict | None = None,
    **extra,
) -> dict:
    manifest = {
        "id": folder.name,
        "kind": kind,
        "step": step,
        "base_model": base_model,
        "data": data,
        "constitution_sha256": constitution_sha256,
        "metrics": metrics or {},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())
