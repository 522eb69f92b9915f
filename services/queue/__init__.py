"""The labeled-comparisons queue between the judge (producer) and the trainer (consumer).

One interface, :class:`ComparisonQueue`, with two backends: a SQLite file (the embedded default)
and Redis Streams (production). Open one with :func:`open_queue`; the delivery semantics
(at-least-once with acknowledgement, idempotent ids, dead letters, positions) are described in
:mod:`services.queue.base`.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from services.queue.base import (
    RETENTION_PARAMS,
    Comparison,
    ComparisonQueue,
    Delivery,
    MalformedItem,
    QueueError,
    Retention,
    validate_comparison,
)

__all__ = [
    "Comparison",
    "ComparisonQueue",
    "Delivery",
    "MalformedItem",
    "QueueError",
    "Retention",
    "open_queue",
    "queue_url_from_environment",
    "read_queue_url_file",
    "redact_url",
    "validate_comparison",
]

_USAGE = "expected sqlite:///path.db (sqlite:////abs/path.db for an absolute path) or redis://host:port/db"


_SECRET_PARAMS = ("password", "pass", "passwd", "token", "secret", "auth", "key")


def redact_url(url: str) -> str:
    """``url`` with its secrets replaced by ``***``: the userinfo (``user:password@`` or
    ``token@``) and query values such as ``?password=`` (for logs, status, manifests, errors).
    The one redaction function of the system."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        netloc = f"{user}:***@{host}" if user else f"***@{host}"
    query = "&".join(
        f"{k}=***" if k.lower() in _SECRET_PARAMS else (f"{k}={v}" if sep else k)
        for k, sep, v in (item.partition("=") for item in parts.query.split("&") if item)
    )
    if netloc == parts.netloc and query == parts.query:
        return url
    rest = url.split("://", 1)[1] if "://" in url else url
    rest = rest[len(parts.netloc) :] if rest.startswith(parts.netloc) else rest
    path = rest.split("?", 1)[0].split("#", 1)[0]
    return (
        f"{parts.scheme}://{netloc}{path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


redact = redact_url
"""The old name."""


def queue_url_from_environment() -> str:
    """The queue URL when none is given: ``CAI_QUEUE_URL``, else the first line of the file
    ``CAI_QUEUE_URL_FILE`` names (a mounted Secret), else empty. Keeps passwords off the command
    line, where every user of the machine can read them."""
    url = os.environ.get("CAI_QUEUE_URL", "").strip()
    if url:
        return url
    path = os.environ.get("CAI_QUEUE_URL_FILE", "").strip()
    return read_queue_url_file(path) if path else ""


def read_queue_url_file(path: str) -> str:
    """The queue URL stored in ``path`` (first non-empty line); QueueError naming the file."""
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise QueueError(f"queue URL file {path}: cannot read: {exc.strerror}") from None
    if not lines:
        raise QueueError(f"queue URL file {path}: is empty")
    return lines[0]


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
    if isinstance(url, str) and not url.strip():
        url = queue_url_from_environment()
    if not isinstance(url, str) or not url.strip():
        raise QueueError(f"queue URL is empty (give one, or set CAI_QUEUE_URL or CAI_QUEUE_URL_FILE); {_USAGE}")
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise QueueError(f"queue URL {redact(url)!r} has no scheme; {_USAGE}")
    scheme = scheme.lower()
    base, _, query = rest.partition("?")
    params = parse_qs(query, keep_blank_values=True)
    unknown = set(params) - {"stream", *RETENTION_PARAMS} if scheme == "sqlite" else set()
    if unknown:
        raise QueueError(
            f"queue URL {redact(url)!r}: unknown parameter(s) {', '.join(sorted(unknown))}; "
            f"only stream=NAME, {', '.join(f'{p}=N' for p in RETENTION_PARAMS)}"
        )
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
        return RedisQueue(
            urlunsplit(parts._replace(query=rest_query)), stream=stream, display_url=redact(url), retention=retention
        )
    raise QueueError(f"unsupported queue URL scheme {scheme!r} in {redact(url)!r}; {_USAGE}")
