"""The labeled-comparisons queue between the judge (producer) and the trainer (consumer).

One interface, :class:`ComparisonQueue`, with two backends: a SQLite file (the embedded default)
and Redis Streams (production). Open one with :func:`open_queue`; the delivery semantics
(at-least-once with acknowledgement, idempotent ids, dead letters, positions) are described in
:mod:`services.queue.base`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from services.queue.base import (
    RETENTION_PARAMS, ComparisonQueue, Delivery, MalformedItem, QueueError, Retention, validate_comparison,
)

__all__ = ["ComparisonQueue", "Delivery", "MalformedItem", "QueueError", "Retention", "open_queue",
           "validate_comparison"]

_USAGE = "expected sqlite:///path.db (sqlite:////abs/path.db for an absolute path) or redis://host:port/db"


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def open_queue(url: str, stream: str = "comparisons") -> ComparisonQueue:
    """Opens the queue at ``url``; raises :class:`QueueError` with the reason if it cannot.

    * ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (the path is what follows
      ``sqlite:///``, as in SQLAlchemy): a SQLite file, created if missing.
    * ``redis://[:password@]host:port/db`` (``rediss://`` for TLS): a Redis server, checked with PING.

    A ``?stream=NAME`` query parameter in the URL overrides ``stream`` (so one URL in a config file
    names the stream too). The stream name prefixes every key (Redis) or is a column (SQLite).
    The :class:`~services.queue.base.Retention` fields are parameters too:
    ``?dedup_window_s=21600&trim_every=1000&trim_interval_s=30&dead_letter_max=10000`` (the defaults).
    """
    if not isinstance(url, str) or not url.strip():
        raise QueueError(f"queue URL is empty; {_USAGE}")
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise QueueError(f"queue URL {redact(url)!r} has no scheme; {_USAGE}")
    scheme = scheme.lower()
    base, _, query = rest.partition("?")
    params = parse_qs(query, keep_blank_values=True)
    unknown = set(params) - {"stream", *RETENTION_PARAMS} if scheme == "sqlite" else set()
    if unknown:
        raise QueueError(f"queue URL {redact(url)!r}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                         f"only stream=NAME, {', '.join(f'{p}=N' for p in RETENTION_PARAMS)}")
    try:
        retention = Retention.from_params({k: params.pop(k)[-1] for k in RETENTION_PARAMS if k in params})
    except QueueError as exc:
        raise QueueError(f"queue URL {redact(url)!r}: {exc}") from None
    if "stream" in params:
        stream = params.pop("stream")[-1]
        if not stream:
            raise QueueError(f"queue URL {redact(url)!r}: stream= is empty")
    if scheme == "sqlite":
        from services.queue.sqlite_queue import SQLiteQueue

        if not base.startswith("/") or base in ("/", "") or base.endswith("/"):
            raise QueueError(f"queue URL {redact(url)!r} names no database file; {_USAGE}")
        return SQLiteQueue(Path(base[1:]), stream=stream, retention=retention)
    if scheme in ("redis", "rediss"):
        from services.queue.redis_queue import RedisQueue

        parts = urlsplit(url)
        if not parts.hostname:
            raise QueueError(f"queue URL {redact(url)!r} names no host; {_USAGE}")
        try:
            _ = parts.port
        except ValueError:
            raise QueueError(f"queue URL {redact(url)!r} has a bad port; {_USAGE}") from None
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise QueueError(f"queue URL {redact(url)!r}: the database must be a number, got {db!r}; {_USAGE}")
        rest_query = "&".join(f"{k}={v}" for k, vs in params.items() for v in vs)
        return RedisQueue(urlunsplit(parts._replace(query=rest_query)), stream=stream, display_url=redact(url),
                          retention=retention)
    raise QueueError(f"unsupported queue URL scheme {scheme!r} in {redact(url)!r}; {_USAGE}")
