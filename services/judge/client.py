"""Typed client of ``cai.v1.Judge``."""

from __future__ import annotations

from services.common.client import ServiceClient


class JudgeClient(ServiceClient):
    """``Compare`` of a judge service."""

    service = "judge"

    def _new_stub(self, channel):
        from services.api.cai.v1 import judge_pb2_grpc

        return judge_pb2_grpc.JudgeStub(channel)
