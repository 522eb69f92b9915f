"""Checkpoints: a Hugging Face folder (safetensors) plus ``manifest.json`` saying what it is;
and the training arguments the trainers share."""

from __future__ import annotations

import json
import time
from pathlib import Path

MANIFEST = "manifest.json"


def training_args() -> dict:
    """TRL/transformers training arguments every trainer here shares: bf16 only on a GPU that
    supports it (TRL defaults to bf16, which silently autocasts on a CPU), the CPU otherwise;
    loss logged every step; checkpoints written by us (with a manifest), not by the Trainer."""
    import torch

    on_gpu = torch.cuda.is_available()
    return {
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),
        "use_cpu": not on_gpu,
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
        **training_args(),
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
