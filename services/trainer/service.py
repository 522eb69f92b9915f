"""``cai.v1.Trainer``: the trainer process. The work loop runs in a thread (``TrainerWorker``);
the gRPC server answers ``Status`` and serves /metrics while it trains."""

from __future__ import annotations

import asyncio

from google.protobuf.timestamp_pb2 import Timestamp

from services.api.cai.v1 import trainer_pb2, trainer_pb2_grpc
from services.common.server import GrpcService
from services.trainer.config import TrainerConfig
from services.trainer.worker import TrainerWorker, redact_url

SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
PHASES = {
    "idle": trainer_pb2.TRAINER_PHASE_IDLE,
    "reward_model": trainer_pb2.TRAINER_PHASE_REWARD_MODEL,
    "policy": trainer_pb2.TRAINER_PHASE_POLICY,
    "sft": trainer_pb2.TRAINER_PHASE_SFT,
    "done": trainer_pb2.TRAINER_PHASE_DONE,
    "failed": trainer_pb2.TRAINER_PHASE_FAILED,
}


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, worker: TrainerWorker, config: TrainerConfig):
        self.worker = worker
        self.config = config

    async def Status(self, request, context):
        from services.training.checkpoint import read_manifest

        s = self.worker.status()
        response = trainer_pb2.TrainerStatus(
            phase=PHASES[s["phase"]],
            items_consumed=s["items_consumed"],
            items_dead_lettered=s["items_dead_lettered"],
            step=s["step"],
            queue_url=redact_url(self.config.queue),
            queue_lag=s["queue_lag"],
            error=s["error"],
            queue_connected=s["queue_connected"],
            queue_error=s["queue_error"],
            promotions_pending=s["promotions_pending"],
            constitution_sha256=s.get("constitution_sha256", ""),
            warning=s.get("warning", ""),
        )
        for k, v in s["metrics"].items():
            response.metrics[k] = float(v)
        if s["last_checkpoint"]:
            try:
                m = read_manifest(s["last_checkpoint"])
                if not isinstance(m, dict):
                    raise ValueError("the manifest is not a JSON object")
            except (OSError, ValueError) as exc:  # torn or unreadable: answer without it
                response.warning = f"last_checkpoint: manifest of {s['last_checkpoint']} unreadable ({exc})"
                m = {}
            created = Timestamp()
            try:
                if m.get("created_at"):
                    created.FromJsonString(str(m["created_at"]))
            except ValueError:
                response.warning = f"last_checkpoint: created_at {m['created_at']!r} is not a timestamp"
            try:
                checkpoint = trainer_pb2.Checkpoint(
                    id=m.get("id", ""),
                    path=s["last_checkpoint"],
                    step=m.get("step", 0),
                    created_at=created,
                    constitution_sha256=",".join(m.get("constitution_sha256s", [])) or m.get("constitution_sha256", ""),
                    kind=m.get("kind", ""),
                )
            except (TypeError, ValueError) as exc:  # fields of the wrong type in the manifest
                response.warning = f"last_checkpoint: manifest of {s['last_checkpoint']} has bad fields ({exc})"
                checkpoint = trainer_pb2.Checkpoint(path=s["last_checkpoint"])
            response.last_checkpoint.CopyFrom(checkpoint)
        return response


async def build_trainer_service(config: TrainerConfig) -> GrpcService:
    """The trainer, ready to ``start()``: the worker starts with the server and the process ends
    when the worker has finished a bounded job (``max_comparisons``/``exit_when_idle_seconds``)."""
    worker = TrainerWorker(config)
    servicer = TrainerServicer(worker, config)

    async def on_start():
        worker.start()

    async def on_stop():
        await asyncio.to_thread(worker.stop)

    async def done():
        await asyncio.to_thread(worker.finished.wait)
        if worker.failed:  # the process exits non-zero, so Kubernetes restarts the trainer
            service.exit_code = 1

    service = GrpcService(
        config.server,
        lambda server: trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, server),
        [SERVICE],
        on_stop=on_stop,
        on_start=on_start,
        done=done,
    )
    return service
