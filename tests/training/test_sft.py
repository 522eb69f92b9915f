"""SFT on SL-CAI data with TRL changes the weights and yields a checkpoint the generation service
loads without a restart."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from services.api.cai.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from services.pipeline.sl_data import SLDataConfig, produce_sl_data
from services.training.checkpoint import read_manifest
from services.training.sft_config import SFTRunConfig
from services.training.sft_trainer import train_sft


@pytest.fixture(scope="module")
async def sl_data(generation_server, critique_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("sl-data")
    cfg = SLDataConfig(
        generation=generation_server.address,
        critique=critique_server.address,
        limit=6,
        rounds=2,
        max_tokens=8,
        batch_size=6,
    )
    await produce_sl_data(cfg, out, progress=False)
    return out


def changed(before: dict, after_dir) -> float:
    after = load_file(after_dir / "model.safetensors")
    return max((after[k] - v).abs().max().item() for k, v in before.items() if k in after)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_changes_weights_and_writes_a_checkpoint(tiny_model, sl_data, tmp_path, lora):
    from pathlib import Path

    before = load_file(Path(tiny_model) / "model.safetensors")
    out = train_sft(
        SFTRunConfig(
            data=str(sl_data),
            out=str(tmp_path / "sft"),
            model=tiny_model,
            max_steps=3,
            learning_rate=1e-3,
            batch_size=4,
            lora=lora,
            lora_r=4,
            rounds=1,
            include_flagged=True,
        )
    )  # tiny-model text: every row is flagged
    assert changed(before, out) > 1e-4
    manifest = read_manifest(out)
    assert manifest["kind"] == "sft" and manifest["step"] == 3 and manifest["lora"] is lora
    assert manifest["data"]["rows"] == 12 and len(manifest["constitution_sha256"]) == 64
    assert torch.isfinite(torch.tensor(manifest["metrics"]["train_loss"]))
    assert not any(p.name.startswith("adapter") for p in out.iterdir())  # LoRA merged


def test_generation_service_loads_the_sft_checkpoint(tiny_model, sl_data, tmp_path, generation_channel):
    out = train_sft(
        SFTRunConfig(
            data=str(sl_data),
            out=str(tmp_path / "sl-cai"),
            model=tiny_model,
            max_steps=2,
            learning_rate=1e-3,
            include_flagged=True,
        )
    )
    stub = generation_pb2_grpc.GenerationStub(generation_channel)
    original = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10).checkpoint_id
    loaded = stub.LoadCheckpoint(common_pb2.LoadCheckpointRequest(path=str(out)), timeout=300)
    try:
        assert loaded.checkpoint_id == "sl-cai"
        response = stub.Generate(
            generation_pb2.GenerateRequest(
                prompts=[common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content="hi")])],
                sampling=common_pb2.SamplingParams(max_tokens=4),
            ),
            timeout=60,
        )
        assert response.checkpoint_id == "sl-cai" and response.completions[0].samples[0].token_count >= 1
    finally:
        stub.LoadCheckpoint(common_pb2.LoadCheckpointRequest(path=tiny_model, checkpoint_id=original), timeout=300)
