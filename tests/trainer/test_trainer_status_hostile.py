"""Trainer.Status over a real socket answers when the latest checkpoint's manifest is torn (a
crash mid-write): the checkpoint is reported by path with a warning, never an error."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.api.cai.v1 import trainer_pb2, trainer_pb2_grpc
from services.common.server import GrpcService, ServerConfig
from services.trainer.config import TrainerConfig
from services.trainer.service import TrainerServicer
from services.trainer.worker import TrainerWorker


@pytest.mark.parametrize(
    "manifest",
    [
        '{"id": "ckpt-7", "step": 7, "created_',
        '["not", "an", "object"]',
        '{"id": "ckpt-7", "step": "seven", "created_at": "yesterday"}',
    ],
)
def test_status_on_a_torn_manifest_answers_with_a_warning(manifest, tmp_path):
    folder = tmp_path / "ckpt-7"
    folder.mkdir()
    (folder / "manifest.json").write_text(manifest)
    config = TrainerConfig(queue="redis://:hunter2@127.0.0.1:6379/0?password=hunter2", work_dir=str(tmp_path))
    worker = TrainerWorker(config)  # not started: its status as after a checkpoint at step 7
    worker._status.update(last_checkpoint=str(folder), step=7)
    servicer = TrainerServicer(worker, config)

    async def main():
        service = GrpcService(
            ServerConfig(host="127.0.0.1", port=0, metrics_port=-1),
            lambda s: trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, s),
            ["cai.v1.Trainer"],
        )
        port = await service.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await trainer_pb2_grpc.TrainerStub(channel).Status(
                    trainer_pb2.TrainerStatusRequest(), timeout=10
                )
        finally:
            await service.stop(0)

    status = asyncio.run(main())
    assert status.step == 7 and status.last_checkpoint.path == str(folder)
    assert status.warning.startswith("last_checkpoint: ")
    assert "hunter2" not in status.queue_url and "***" in status.queue_url
