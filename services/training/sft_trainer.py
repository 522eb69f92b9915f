"""Supervised fine-tuning of the policy on SL-CAI revisions with TRL's ``SFTTrainer``.

Runs on CPU for tiny models and with accelerate on GPUs (``accelerate launch -m services.cli
train sft ...``). The saved checkpoint is a plain model folder (LoRA adapters merged), so the
generation service loads it with ``LoadCheckpoint``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from services.training.checkpoint import run_args, write_manifest
from services.training.sft_config import SFTRunConfig


def train_sft(cfg: SFTRunConfig) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from services.models.registry import resolve_model
    from services.pipeline.sl_data import load_sft_dataset

    model_path = resolve_model(cfg.model)
    dataset = load_sft_dataset(cfg.data, cfg.rounds or None, cfg.helpfulness, cfg.include_flagged)
    out = Path(cfg.out)
    work = out.with_name(out.name + ".work")
    args = SFTConfig(
        **run_args(cfg, work),
    )
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    result = trainer.train()
    trained = trainer.model
    if cfg.lora:
        trained = trained.merge_and_unload()
    if trainer.accelerator.is_main_process:
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.accelerator.unwrap_model(trained).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        data_manifest = Path(cfg.data) / "manifest.json"
        made = json.loads(data_manifest.read_text()) if data_manifest.exists() else {}
        sha = made.get("constitution_sha256", "")
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        write_manifest(
            tmp,
            id=out.name,
            kind="sft",
            step=trainer.state.global_step,
            base_model=cfg.model,
            data={
                "folder": str(Path(cfg.data).resolve()),
                "rows": len(dataset),
                "rounds": f"1..{cfg.rounds}" if cfg.rounds else "all",
                "include_flagged": cfg.include_flagged,
                "quality": made.get("quality", {}),
            },
            constitution_sha256=sha,
            metrics={
                "train_loss": result.training_loss,
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
            },
            lora=cfg.lora,
        )
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        shutil.rmtree(work, ignore_errors=True)
    return out
