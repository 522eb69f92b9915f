"""What every typed client of ours shares: the asyncio channel, opened lazily, and the chat
conversation as a proto.

A client (``services/<name>/client.py``) names its generated stub; its channel is dialed through
``services.common.channels`` (TLS, retries, round-robin) the first time the client is used inside
an event loop, one channel per loop (trainers such as TRL call async functions on their own loop
in another thread). Importing this module is cheap (grpc loads on first use). The stub's methods are the client's own (``client.Generate(request)``); typed
helpers build the requests. Use a client as ``async with Client(address) as c:`` or call
``close()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping


def conversation(messages: Iterable[Mapping[str, str]], id: str = ""):
    """``messages`` (``{role, content}`` dicts) as a ``cai.v1.Conversation``."""
    from services.api.cai.v1 import common_pb2

    return common_pb2.Conversation(
        id=id, messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages]
    )


def prompt_conversation(prompt) -> object:
    """A ``services.prompts.Prompt`` as a ``cai.v1.Conversation`` carrying its id."""
    return conversation(prompt.messages, prompt.id)


class ServiceClient:
    """An asyncio client of one of our services at ``address`` (any gRPC target)."""

    service = ""
    """The registry name of the service (``services.registry``)."""

    def __init__(self, address: str, *, timeout: float = 3600.0):
        self.address = address
        self.timeout = timeout
        """Default deadline of a call, in seconds."""
        self._channels: dict[int, object] = {}

    def _new_stub(self, channel):
        raise NotImplementedError

    @property
    def stub(self):
        """The generated stub over this loop's channel (opened on first use)."""
        loop = id(asyncio.get_running_loop())
        if loop not in self._channels:
            from services.common.channels import open_aio_channel

            channel = open_aio_channel(self.address)
            self._channels[loop] = (channel, self._new_stub(channel))
        return self._channels[loop][1]

    def __getattr__(self, name: str):
        if name[:1].isupper():  # an RPC: Generate, Compare, GetModelInfo...
            return getattr(self.stub, name)
        raise AttributeError(name)

    async def close(self) -> None:
        """Closes the channel of the running loop (those of other loops close with their loops)."""
        entry = self._channels.pop(id(asyncio.get_running_loop()), None)
        if entry is not None:
            await entry[0].close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
