"""Prometheus metrics shared by every service (naming: counters end in ``_total``, durations are
histograms in seconds, label values are bounded: service and method names, status codes)."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

RPC_REQUESTS = Counter(
    "cai_grpc_requests_total",
    "gRPC requests finished, by RPC and status code.",
    ["service", "method", "code"],
)
RPC_ERRORS = Counter(
    "cai_grpc_errors_total",
    "gRPC requests that ended with a status other than OK.",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "cai_grpc_request_duration_seconds",
    "gRPC request latency, by RPC.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
RPC_IN_FLIGHT = Gauge("cai_grpc_requests_in_flight", "gRPC requests being handled now.", ["service", "method"])
BATCH_ITEMS = Histogram(
    "cai_batch_items",
    "Items (prompts, comparisons, answers) per batch request.",
    ["service", "method"],
    buckets=BATCH_BUCKETS,
)
MODEL_INFO = Gauge(
    "cai_model_info",
    "1 for the model and checkpoint a service is serving now.",
    ["service", "model", "checkpoint"],
)
CHECKPOINT_LOADS = Counter(
    "cai_checkpoint_loads_total",
    "Checkpoint loads through LoadCheckpoint, by outcome.",
    ["service", "outcome"],
)
CHECKPOINT_LOADED = Gauge(
    "cai_checkpoint_loaded_timestamp_seconds",
    "Unix time the serving checkpoint was loaded.",
    ["service"],
)

_started: dict[int, int] = {}
_lock = threading.Lock()


def start_metrics_server(port: int, host: str = "0.0.0.0") -> int:
    """Serves /metrics on ``host``:``port`` (0 picks a free port) once per process; returns the
    port. Services pass their own ``--host``, so a loopback service keeps /metrics on loopback."""
    with _lock:
        if _started:
            return next(iter(_started.values()))
        server, _thread = start_http_server(port, addr=host.strip("[]") or "0.0.0.0")
        bound = server.server_port
        _started[port] = bound
        return bound
