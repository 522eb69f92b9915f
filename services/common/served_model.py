"""The engine a service is serving now, swappable without a restart.

``ServedModel.use()`` lends the current engine to one request; ``replace(new)`` makes new requests
use the new engine at once, while requests already running finish on the old one, which is closed
when the last of them returns. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

from services.common import metrics
from services.engines import Engine


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
