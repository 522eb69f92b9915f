"""Typed client of ``cai.v1.Critique``."""

from __future__ import annotations

from services.common.client import ServiceClient


class CritiqueClient(ServiceClient):
    """``Revise`` of a critique service."""

    service = "critique"

    def _new_stub(self, channel):
        from services.api.cai.v1 import critique_pb2_grpc

        return critique_pb2_grpc.CritiqueStub(channel)
