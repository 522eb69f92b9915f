"""Typed client of ``cai.v1.Trainer``."""

from __future__ import annotations

from services.common.client import ServiceClient


class TrainerClient(ServiceClient):
    """``Status`` of the trainer."""

    service = "trainer"

    def _new_stub(self, channel):
        from services.api.cai.v1 import trainer_pb2_grpc

        return trainer_pb2_grpc.TrainerStub(channel)

    async def status(self, timeout: float = 30.0):
        """What the trainer is doing now (``TrainerStatus``)."""
        from services.api.cai.v1 import trainer_pb2

        return await self.stub.Status(trainer_pb2.TrainerStatusRequest(), timeout=timeout)
