"""The engine a service is serving now, swappable without a restart.

``ServedModel.use()`` lends the current engine to one request; ``replace(new)`` makes new requests
use the new engine at once, while requests already running finish on the old one, which is closed
when the last of them returns. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from services.api.cai.v1 import common_pb2
from services.common import metrics
from services.engines import Engine

log = logging.getLogger(__name__)


class ServedModel:
    def __init__(self, service: str, engine: Engine):
        self.service = service
        self._engine = engine
        self._users: dict[int, int] = {}
        self._retired: dict[int, Engine] = {}
        self._idle: dict[int, asyncio.Event] = {}
        self.load_lock = asyncio.Lock()
        self._closing: set[asyncio.Task] = set()
        self._closed = False
        self._publish(None)

    @property
    def engine(self) -> Engine:
        return self._engine

    def _publish(self, old: Engine | None) -> None:
        if old is not None:
            metrics.MODEL_INFO.remove(self.service, old.model, old.checkpoint_id)
        metrics.MODEL_INFO.labels(self.service, self._engine.model, self._engine.checkpoint_id).set(1)
        metrics.CHECKPOINT_LOADED.labels(self.service).set(time.time())

    @asynccontextmanager
    async def use(self):
        engine = self._engine
        key = id(engine)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            yield engine
        finally:
            self._users[key] -= 1
            if self._users[key] == 0:
                del self._users[key]
                if key in self._retired:
                    self._idle[key].set()

    async def replace(self, new: Engine) -> Engine:
        """Serves ``new`` from now on; closes the old engine once its requests have finished."""
        old, self._engine = self._engine, new
        self._publish(old)
        key = id(old)
        self._retired[key] = old
        self._idle[key] = event = asyncio.Event()
        if key not in self._users:
            event.set()

        async def close_when_idle():
            await event.wait()
            self._retired.pop(key, None)
            self._idle.pop(key, None)
            await old.close()

        task = asyncio.get_running_loop().create_task(close_when_idle())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return old

    async def close(self) -> None:
        """Closes the serving engine (and waits for retired ones to close). Idempotent: services
        sharing one served model each call it on stop."""
        if self._closed:
            return
        self._closed = True
        for key, event in list(self._idle.items()):
            event.set()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self._engine.close()


async def load_checkpoint(
    served: ServedModel,
    request: common_pb2.LoadCheckpointRequest,
    context,
    start: Callable[[str, str], Awaitable[Engine]],
) -> common_pb2.LoadCheckpointResponse:
    """``LoadCheckpoint`` for any model-serving service: checks the path, starts the new engine
    with ``start(path, checkpoint_id)`` and swaps it in. A checkpoint that fails to load leaves
    the old one serving and answers FAILED_PRECONDITION."""
    if not request.path:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "path: must not be empty")
    if not (Path(request.path) / "config.json").is_file():
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"path: {request.path!r} is not a model folder on the server (no config.json)",
        )
    async with served.load_lock:
        previous = served.engine.checkpoint_id
        started = time.perf_counter()
        try:
            engine = await start(request.path, request.checkpoint_id or Path(request.path).name)
        except Exception as exc:  # a broken checkpoint must not take the service down
            metrics.CHECKPOINT_LOADS.labels(served.service, "failed").inc()
            log.warning("loading %s failed: %s", request.path, exc)
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"path: could not load {request.path!r}: {exc}; still serving {previous!r}",
            )
        await served.replace(engine)
        metrics.CHECKPOINT_LOADS.labels(served.service, "ok").inc()
    log.info("%s now serves checkpoint %s (was %s)", served.service, engine.checkpoint_id, previous)
    return common_pb2.LoadCheckpointResponse(
        checkpoint_id=engine.checkpoint_id,
        previous_checkpoint_id=previous,
        load_seconds=time.perf_counter() - started,
    )
