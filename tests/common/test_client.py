"""services/common/client.py: typed clients share one lazily dialed channel per event loop, the
stub's RPCs, and one conversation-to-proto helper; the server's interceptor answers a failing
stream like a failing call."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.api.cai.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from services.common.client import conversation, prompt_conversation
from services.generation.client import GenerationClient
from services.prompts import Prompt


class _Echo(generation_pb2_grpc.GenerationServicer):
    """Answers each prompt with its id and the sampling it was asked for; the stream fails midway."""

    async def Generate(self, request, context):
        response = generation_pb2.GenerateResponse(model="echo")
        for p in request.prompts:
            text = f"{p.id}:{p.messages[-1].content}:n={request.sampling.n}:seed={request.sampling.seed}"
            response.completions.add().samples.add(text=text)
        return response

    async def GenerateStream(self, request, context):
        yield generation_pb2.GenerateChunk(text_delta="first")
        raise KeyError("a bug in the middle of a stream")


async def _serve():
    from services.common.server import LOOPBACK, GrpcService

    servicer = _Echo()
    service = GrpcService(
        LOOPBACK, lambda s: generation_pb2_grpc.add_GenerationServicer_to_server(servicer, s), ["cai.v1.Generation"]
    )
    return service, await service.start()


def test_conversation_carries_roles_contents_and_the_prompt_id():
    messages = ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"})
    conv = prompt_conversation(Prompt("p7", messages))
    assert conv.id == "p7" and [(m.role, m.content) for m in conv.messages] == [("system", "be brief"), ("user", "hi")]
    assert conversation(messages) == common_pb2.Conversation(messages=conv.messages)


def test_a_client_keeps_one_channel_per_loop_and_closes_it():
    async def main():
        service, port = await _serve()
        client = GenerationClient(f"127.0.0.1:{port}")
        try:
            assert client.stub is client.stub  # one channel and stub for this loop
            await client.Generate(generation_pb2.GenerateRequest(), timeout=10)  # the stub's RPCs are the client's
            assert len(client._channels) == 1
            await client.close()
            assert client._channels == {}
        finally:
            await service.stop(0)

    asyncio.run(main())
    with pytest.raises(AttributeError):
        GenerationClient("127.0.0.1:1").no_such_method  # noqa: B018


def test_a_stream_that_fails_midway_answers_internal_after_its_first_chunk():
    async def main():
        service, port = await _serve()
        got = []
        try:
            async with GenerationClient(f"127.0.0.1:{port}") as client:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    async for chunk in client.GenerateStream(generation_pb2.GenerateRequest(), timeout=10):
                        got.append(chunk.text_delta)
                return got, failed.value
        finally:
            await service.stop(0)

    got, failed = asyncio.run(main())
    assert got == ["first"]
    assert failed.code() == grpc.StatusCode.INTERNAL and "internal error in GenerateStream" in failed.details()
