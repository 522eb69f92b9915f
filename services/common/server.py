"""Running a gRPC service: the aio server with standard health checking and reflection, metrics
for every RPC, limits, and a graceful shutdown that finishes in-flight work.

Every service of the system starts through ``GrpcService``; it is the one place that knows about
server options, probes and signals.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import metrics, tls
from services.errors import CaiError, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ServerConfig:
    """Network settings of a service."""

    host: str = "0.0.0.0"
    """Address to listen on ("0.0.0.0" for all IPv4 interfaces, "127.0.0.1" for loopback only)."""
    port: int = 50051
    """gRPC port; 0 picks a free one (it is logged and returned by ``start``)."""
    metrics_port: int = 9090
    """Port of the Prometheus /metrics endpoint; -1 disables it, 0 picks a free one."""
    max_concurrent_rpcs: int = 256
    """RPCs handled at once (health checks included); more are refused with RESOURCE_EXHAUSTED."""
    max_message_bytes: int = 64 * 1024 * 1024
    """Largest response message, and a cap on requests. Each method accepts requests only up to
    the size its request limits need (``GrpcService(message_limits=...)``), far less than this."""
    max_concurrent_work: int = 32
    """Requests doing engine work at once; more wait (health and GetModelInfo/Status never do)."""
    max_queued_work: int = 64
    """Requests waiting for engine work; beyond this they are refused with RESOURCE_EXHAUSTED, so
    a flood cannot hold a service (and its health checks) hostage."""
    grace_seconds: float = 30.0
    """On SIGTERM: how long in-flight RPCs may run before they are cancelled."""
    tls_cert_file: str = ""
    """PEM certificate chain for TLS; empty serves plaintext (for example behind a mesh)."""
    tls_key_file: str = ""
    """PEM private key for TLS (with tls_cert_file)."""
    tls_client_ca_file: str = ""
    """PEM bundle of the CAs that sign client certificates: set, the server requires and verifies
    a client certificate on every connection (mutual TLS); empty, any client may connect."""
    tls_allowed_client_names: tuple[str, ...] = ()
    """Names (certificate SAN or CN) of the clients allowed to call privileged RPCs such as
    LoadCheckpoint (``services.common.tls.require_client_identity``); empty allows every client
    the transport lets in. Needs tls_client_ca_file."""

    def validate(self):
        if not 0 <= self.port <= 65535:
            return "port", f"must be in [0, 65535], got {self.port}"
        if not -1 <= self.metrics_port <= 65535:
            return "metrics_port", f"must be -1 or in [0, 65535], got {self.metrics_port}"
        if self.max_concurrent_rpcs < 1:
            return "max_concurrent_rpcs", "must be at least 1"
        if self.max_concurrent_work < 1:
            return "max_concurrent_work", "must be at least 1"
        if self.max_queued_work < 0:
            return "max_queued_work", "must be at least 0"
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            return "tls_key_file", "tls_cert_file and tls_key_file go together"
        if self.tls_client_ca_file and not self.tls_cert_file:
            return "tls_client_ca_file", "mutual TLS needs the server's own tls_cert_file and tls_key_file"
        if self.tls_allowed_client_names and not self.tls_client_ca_file:
            return "tls_allowed_client_names", "client names can only be checked with mutual TLS (tls_client_ca_file)"
        return None


LOOPBACK = ServerConfig(host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=5)
"""A server only this machine reaches, on a free port, without its own /metrics: the embedded
services, benchmarks and tests."""

KEEPALIVE_SERVER_OPTIONS = [
    # Clients (services/common/channels.py) ping after 30 s idle, with or without calls: allow it,
    # else the server answers GOAWAY "too_many_pings" and drops their connections.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    # Connections are renewed every ~5 min so that clients dialing dns:/// (a headless Service)
    # re-resolve and find replicas added since; in-flight calls get 10 min to finish.
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 600_000),
]


def _split_method(full: str) -> tuple[str, str]:
    # "/cai.v1.Generation/Generate" -> ("cai.v1.Generation", "Generate")
    _, service, method = full.split("/", 2)
    return service, method


SMALL_REQUEST_BYTES = 64 * 1024
"""Largest request of a method without its own limit (GetModelInfo, Status, LoadCheckpoint)."""
LIGHT_METHODS = frozenset({"GetModelInfo", "Status"})
"""Methods that do no engine work: never queued behind it."""


class PortInUse(Unavailable, OSError):
    """A port the service must listen on cannot be bound (found before any model loads)."""


class _BadMessage:
    """What the guarded deserializer returns for a request it cannot accept (the interceptor
    answers it, so it is counted and logged like every other error)."""

    __slots__ = ("code", "message")

    def __init__(self, code: grpc.StatusCode, message: str):
        self.code = code
        self.message = message


def _request_type(service: str, method: str) -> str:
    try:
        return descriptor_pool.Default().FindMethodByName(f"{service}.{method}").input_type.full_name
    except KeyError:
        return f"{service}.{method} request"


def _guard(deserialize, service: str, method: str, limit: int):
    """``deserialize`` that never raises: an oversized or undecodable request becomes a
    ``_BadMessage`` (RESOURCE_EXHAUSTED / INVALID_ARGUMENT) instead of gRPC's UNKNOWN."""
    type_name = _request_type(service, method)

    def guarded(data: bytes):
        if len(data) > limit:
            return _BadMessage(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"request is {len(data)} bytes; {method} accepts at most {limit}"
            )
        try:
            return deserialize(data) if deserialize is not None else data
        except Exception as exc:  # DecodeError, invalid UTF-8 in a string field, ...
            reason = str(exc) or type(exc).__name__
            return _BadMessage(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {type_name}: {reason}")

    return guarded


class WorkLimiter:
    """Bounds the requests doing engine work: ``running`` at once, ``queued`` more waiting, the
    rest refused at once with RESOURCE_EXHAUSTED."""

    def __init__(self, running: int, queued: int):
        self.running, self.queued = running, queued
        self._sem: asyncio.Semaphore | None = None
        self.admitted = 0

    @asynccontextmanager
    async def slot(self, method: str):
        if self.admitted >= self.running + self.queued:
            raise ResourceExhausted(
                f"server busy: {self.admitted} requests running or waiting (max_concurrent_work="
                f"{self.running}, max_queued_work={self.queued}); {method} refused, retry later"
            )
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.running)
        self.admitted += 1
        try:
            async with self._sem:
                yield
        finally:
            self.admitted -= 1


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """The one place that turns failures into statuses, and counts and times every RPC.

    * undecodable or oversized requests (guarded deserializer): INVALID_ARGUMENT /
      RESOURCE_EXHAUSTED naming the request type or the limit;
    * a :class:`~services.errors.CaiError` raised by a servicer: its ``status``, ``str(error)``;
    * anything else: our bug, INTERNAL "internal error in M; see the server log (id X)", with the
      traceback logged once under that id.

    Every non-OK answer is one log line (method, code, message) and counted in
    ``cai_grpc_errors_total``; engine work is bounded by ``limiter`` (light methods skip it).
    """

    def __init__(
        self,
        message_limits: Mapping[str, int] | None = None,
        default_limit: int = SMALL_REQUEST_BYTES,
        limiter: WorkLimiter | None = None,
        light: Collection[str] = LIGHT_METHODS,
    ):
        self.message_limits = dict(message_limits or {})
        self.default_limit = default_limit
        self.limiter = limiter
        self.light = frozenset(light)

    async def _answer(self, context, method: str, exc: BaseException):
        """Aborts the RPC for ``exc`` (raises ``AbortError``)."""
        if isinstance(exc, CaiError):
            code = getattr(grpc.StatusCode, exc.status, grpc.StatusCode.FAILED_PRECONDITION)
            message = str(exc) or type(exc).__name__
        else:
            error_id = uuid.uuid4().hex[:12]
            log.error("internal error in %s (id %s)", method, error_id, exc_info=exc)
            code, message = grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log (id {error_id})"
        await context.abort(code, message)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(("/grpc.health", "/grpc.reflection")):
            return handler
        service, method = _split_method(details.method)
        limit = self.message_limits.get(method, self.default_limit)
        deserializer = _guard(handler.request_deserializer, service, method, limit)
        limiter = None if method in self.light else self.limiter

        def finish(context, started: float, exc: BaseException | None) -> None:
            code = context.code()
            if isinstance(exc, asyncio.CancelledError):
                code = code or grpc.StatusCode.CANCELLED
            elif exc is not None and code is None:
                code = grpc.StatusCode.UNKNOWN
            name = (code or grpc.StatusCode.OK).name
            metrics.RPC_REQUESTS.labels(service, method, name).inc()
            if name != "OK":
                metrics.RPC_ERRORS.labels(service, method, name).inc()
                if name != "CANCELLED":
                    log.info("%s/%s -> %s: %s", service, method, name, context.details() or "")
            metrics.RPC_LATENCY.labels(service, method).observe(time.perf_counter() - started)
            metrics.RPC_IN_FLIGHT.labels(service, method).dec()

        @asynccontextmanager
        async def handled(request, context):
            """Counts and times the call, refuses a bad message, waits for a work slot and
            answers an exception of the handler with its status."""
            started, exc = time.perf_counter(), None
            metrics.RPC_IN_FLIGHT.labels(service, method).inc()
            try:
                if isinstance(request, _BadMessage):
                    await context.abort(request.code, request.message)
                try:
                    async with limiter.slot(method) if limiter is not None else nullcontext():
                        yield
                except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as e:
                    await self._answer(context, method, e)
            except BaseException as e:
                exc = e
                raise
            finally:
                finish(context, started, exc)

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request, context):
                async with handled(request, context):
                    return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, deserializer, handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                async with handled(request, context):
                    async for item in inner_stream(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(stream, deserializer, handler.response_serializer)
        return handler


MetricsInterceptor = ServiceInterceptor
"""The old name (it counted and timed RPCs before it also mapped errors)."""


class GrpcService:
    """One gRPC server process part: servicers, health, reflection, metrics, graceful stop.

    ``register`` is called with the aio server to add servicers; ``service_names`` are the full
    names (``cai.v1.Generation``) reported by health and reflection; ``on_stop`` runs after the
    server has stopped (release engines); ``on_start`` after it started. ``message_limits`` gives
    the largest request (bytes) per method name; other methods accept ``SMALL_REQUEST_BYTES``.

    To fail fast, a builder calls ``await service.bind()`` before it loads any model (the gRPC
    and metrics ports are taken then, or a clear :class:`PortInUse` is raised) and ``attach``
    (register, on_stop, ...) once its servicer exists; ``start()`` binds if nobody did.
    """

    def __init__(
        self,
        config: ServerConfig,
        register: Callable[[grpc.aio.Server], None] | None,
        service_names: Sequence[str],
        on_stop: Callable[[], Awaitable[None]] | None = None,
        on_start: Callable[[], Awaitable[None]] | None = None,
        done: Callable[[], Awaitable[None]] | None = None,
        healthy: Callable[[], bool] | None = None,
        message_limits: Mapping[str, int] | None = None,
    ):
        self.config = config
        self._register = register
        self._names = list(service_names)
        self._on_stop = on_stop
        self._on_start = on_start
        self.done = done
        self._healthy = healthy
        self.message_limits = dict(message_limits or {})
        self._watch: asyncio.Task | None = None
        """Optional: a coroutine function that returns when the service has finished its work
        (a trainer with a bounded job); ``serve_until_signal`` then stops the server."""
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._stopped = asyncio.Event()
        self.port = 0
        self.metrics_port = -1

    def attach(self, register: Callable[[grpc.aio.Server], None], **hooks) -> GrpcService:
        """Sets ``register`` and any of on_stop/on_start/done/healthy after ``bind()``."""
        self._register = register
        for name in ("on_stop", "on_start", "healthy"):
            if name in hooks:
                setattr(self, f"_{name}", hooks.pop(name))
        if "done" in hooks:
            self.done = hooks.pop("done")
        if hooks:
            raise TypeError(f"unknown hooks: {', '.join(hooks)}")
        return self

    async def bind(self) -> int:
        """Creates the server and takes its gRPC port and the metrics port, before any model
        loads; raises :class:`PortInUse` naming the port. Returns the gRPC port."""
        if self._server is not None:
            return self.port
        cfg = self.config
        largest = max([SMALL_REQUEST_BYTES, *self.message_limits.values()])
        options = [
            # gRPC itself drops anything over twice the largest method limit before decoding it;
            # between that and a method's own limit the guarded deserializer answers.
            ("grpc.max_receive_message_length", min(cfg.max_message_bytes, 2 * largest)),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 0),
            *KEEPALIVE_SERVER_OPTIONS,
        ]
        server = grpc.aio.server(
            interceptors=[
                ServiceInterceptor(
                    self.message_limits, limiter=WorkLimiter(cfg.max_concurrent_work, cfg.max_queued_work)
                )
            ],
            options=options,
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
        )
        try:
            address = f"{cfg.host}:{cfg.port}"
            if cfg.tls_cert_file:
                creds = tls.server_credentials(cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_client_ca_file)
                self.port = server.add_secure_port(address, creds)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
            raise PortInUse(f"cannot listen on {cfg.host}:{cfg.port} (gRPC): {exc}; is the port in use?") from None
        if not self.port:
            raise PortInUse(f"cannot listen on {cfg.host}:{cfg.port} (gRPC); is the port in use?")
        self._server = server
        if cfg.metrics_port >= 0:
            try:
                self.metrics_port = metrics.start_metrics_server(cfg.metrics_port, host=cfg.host)
            except OSError as exc:
                await server.stop(None)
                self._server = None
                raise PortInUse(f"cannot serve /metrics on {cfg.host}:{cfg.metrics_port}: {exc}") from None
        return self.port

    async def start(self) -> int:
        cfg = self.config
        await self.bind()
        server = self._server
        self._register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [*self._names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
        await server.start()
        if self._on_start is not None:
            await self._on_start()
        for name in ["", *self._names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self._healthy is not None:
            self._watch = asyncio.create_task(self._watch_health())
        log.info(
            "serving %s on %s:%d (metrics on %s)",
            ", ".join(self._names),
            cfg.host,
            self.port,
            self.metrics_port if self.metrics_port >= 0 else "off",
        )
        return self.port

    async def _watch_health(self, every: float = 2.0) -> None:
        """Reports NOT_SERVING (so probes restart the pod) once the engine has died."""
        while True:
            await asyncio.sleep(every)
            if not self._healthy():
                log.error("engine is no longer healthy: reporting NOT_SERVING")
                for name in ["", *self._names]:
                    await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
                return

    async def bind_then(self, load: Callable[[], Awaitable[T]]) -> T:
        """``bind()``, then awaits ``load()`` (the model): a port in use is found before the model
        loads, and a model that fails to load gives the ports back."""
        await self.bind()
        try:
            return await load()
        except BaseException:
            await self.release()
            raise

    async def release(self) -> None:
        """Gives the ports back when the service was bound but will not start (its model failed
        to load)."""
        if self._server is not None and not self._stopped.is_set():
            self._stopped.set()
            await self._server.stop(None)

    async def stop(self, grace: float | None = None) -> None:
        """Stops taking new RPCs (health NOT_SERVING), lets in-flight ones finish for ``grace``
        seconds, then releases resources. Safe to call twice."""
        if self._server is None or self._stopped.is_set():
            return
        self._stopped.set()
        if self._watch is not None:
            self._watch.cancel()
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self.config.grace_seconds if grace is None else grace)
        if self._on_stop is not None:
            await self._on_stop()
        log.info("stopped %s", ", ".join(self._names))

    async def serve_until_signal(self) -> None:
        """Runs until SIGTERM or SIGINT (or until the service says it is done), then stops
        gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        waiters = [asyncio.create_task(stop.wait())]
        if self.done is not None:
            waiters.append(asyncio.create_task(self.done()))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        if stop.is_set():
            log.info("signal received: finishing in-flight requests (up to %.0fs)", self.config.grace_seconds)
        await self.stop()


async def within_deadline(context, coro):
    """Awaits ``coro``, cancelling it (and its engine work) when the caller's deadline passes."""
    remaining = context.time_remaining()
    if remaining is None:
        return await coro
    try:
        return await asyncio.wait_for(coro, timeout=max(remaining, 0.0))
    except TimeoutError:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the work finished")
