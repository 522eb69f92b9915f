"""The labeled-comparisons queue: the interface, the item contract and the metrics both backends share.

Semantics (the same on every backend; ``tests/queue/test_queue_contract.py`` checks them on each):

* **Items.** A labeled comparison is a JSON object (a :class:`services.comparison.Comparison`'s
  ``to_dict()``; see :func:`validate_comparison`). Its ``id`` is
  the idempotent comparison id: :meth:`ComparisonQueue.publish` drops an id published on the stream
  within the last :attr:`Retention.dedup_window_s` (W) of its first publish, so a producer that
  restarts and publishes a batch again adds nothing. The id sets are bounded by that window: an id
  re-published more than W after its first publish may be appended again (always after 2W; SQLite
  forgets at W, Redis between W and 2W), and the consumer's own durable id set (the trainer keys
  its data by comparison id) is what drops that late duplicate.
* **Delivery is at-least-once, per consumer group.** Every group sees every item of the stream.
  :meth:`~ComparisonQueue.consume` hands new items to one consumer of the group (two consumers of a
  group never get the same new item); they stay *pending* for that consumer until
  :meth:`~ComparisonQueue.ack`. A consumer that dies before acknowledging loses nothing: another
  consumer (or the same one restarted) takes its pending items over with
  :meth:`~ComparisonQueue.claim_stale` once they have been idle long enough, and ``attempts`` counts
  the deliveries.
* **Redelivery is recognised.** :meth:`~ComparisonQueue.ack` marks the comparison ids *done* for the
  group in the same transaction as the acknowledgement; a later delivery of a done id (a duplicate
  appended by a foreign producer, the stream re-read after :meth:`~ComparisonQueue.seek`) is
  acknowledged and skipped, never returned. Consumers must still be idempotent for the window
  between taking an item durably and acknowledging it (a crash there redelivers it), and for ids
  done more than the dedup window ago (done marks are bounded like the published ids), which is
  why the trainer keys its own data by comparison id.
* **Malformed items are never dropped silently.** A payload that is not JSON or fails
  :func:`validate_comparison` is moved, once per stream entry, to the dead-letter stream
  ``<stream>:dead`` with the reason and the original text, acknowledged, and not returned.
  :meth:`~ComparisonQueue.publish` refuses malformed items up front; only
  :meth:`~ComparisonQueue.publish_raw` (a foreign producer) can put one on the stream. The
  dead-letter stream keeps the newest :attr:`Retention.dead_letter_max` letters (older ones are
  dropped; ``cai_queue_dead_lettered_total`` still counts every one).
* **Trimming: the stream stays bounded.** An entry acknowledged (or dead-lettered, or skipped as
  done) by *every* consumer group of the stream is deleted by :meth:`~ComparisonQueue.trim`, which
  :meth:`~ComparisonQueue.ack` runs every :attr:`Retention.trim_every` acknowledgements or
  :attr:`Retention.trim_interval_s` seconds. An entry some group has pending or has not been
  delivered yet is never trimmed, so a consumer group that stops consuming holds the stream (delete
  an abandoned group with :meth:`~ComparisonQueue.delete_group`). A stream with no group is never
  trimmed. **A group sees only what is still in the stream when it is created**: create the
  consumer group (:meth:`~ComparisonQueue.create_group`; the trainer does it when it starts) before
  publishing what it must read. Without any group the stream grows until its backend's cap (Redis
  ``--maxmemory`` with ``noeviction``) refuses further publishes with an error; nothing is dropped.
* **Position.** :meth:`~ComparisonQueue.position` is the group's last-delivered position in the
  stream (opaque text, backend-specific); a trainer saves it with a checkpoint and can restore it
  with :meth:`~ComparisonQueue.seek`. Seeking moves only the cursor for *new* items: pending items
  stay pending and done marks stay (so a rewind does not train on done comparisons twice; use a new
  group to re-read everything still in the stream). Entries trimmed away cannot be re-read.

Metrics (default Prometheus registry, label ``backend`` only, plus ``group`` on the lag gauge):
``cai_queue_published_total``, ``cai_queue_consumed_total`` (acknowledged deliveries),
``cai_queue_dead_lettered_total``, ``cai_queue_redelivered_total`` (deliveries taken over by
``claim_stale``, and deliveries of already-done ids that were skipped), ``cai_queue_trimmed_total``
(acknowledged entries deleted by :meth:`~ComparisonQueue.trim`), and the gauges
``cai_queue_depth`` / ``cai_queue_lag`` set whenever :meth:`~ComparisonQueue.depth` /
:meth:`~ComparisonQueue.lag` are called (``cai_queue_depth`` also after every trim).
"""

from __future__ import annotations

import abc
import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from services.comparison import KINDS, PROVENANCE_KEYS, Comparison  # noqa: F401 (re-exported: the queue's item)
from services.comparison import check as check_comparison
from services.errors import Unavailable

PUBLISHED = Counter("cai_queue_published_total", "Labeled comparisons newly appended to the queue.", ["backend"])
CONSUMED = Counter("cai_queue_consumed_total", "Queue deliveries acknowledged by consumers.", ["backend"])
DEAD_LETTERED = Counter(
    "cai_queue_dead_lettered_total", "Malformed queue entries moved to the dead-letter stream.", ["backend"]
)
REDELIVERED = Counter(
    "cai_queue_redelivered_total",
    "Deliveries of items a group had been given before: taken over from a stale consumer, or already done and skipped.",
    ["backend"],
)
DEPTH = Gauge("cai_queue_depth", "Entries in the queue stream now (last read by depth() or trim()).", ["backend"])
TRIMMED = Counter(
    "cai_queue_trimmed_total", "Stream entries deleted because every consumer group had acknowledged them.", ["backend"]
)
LAG = Gauge(
    "cai_queue_lag",
    "Entries a consumer group has not acknowledged yet: not delivered plus pending (last read by lag()).",
    ["backend", "group"],
)


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retention:
    """How much a queue keeps; every field is also a queue URL parameter (``?dedup_window_s=3600``)."""

    dedup_window_s: float = 6 * 3600.0
    """W: a comparison id re-published within W seconds of its first publish is dropped, and a done
    mark lasts at least W. The id sets hold about W (SQLite) to 2W (Redis) of ids; each id costs
    about 92 bytes in Redis (a 32-character id), once in the published sets and once per group."""
    trim_every: int = 1000
    """``ack`` trims the stream after this many acknowledgements (0: never automatically; call
    ``trim``)."""
    trim_interval_s: float = 30.0
    """... or when this many seconds have passed since the last trim (and something was acknowledged)."""
    dead_letter_max: int = 10_000
    """The dead-letter stream keeps the newest this many letters."""

    _TYPES = {"dedup_window_s": float, "trim_every": int, "trim_interval_s": float, "dead_letter_max": int}

    def __post_init__(self):
        for name, kind in self._TYPES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise QueueError(f"{name} must be a finite number, got {value!r}")
            if kind is int and int(value) != value:
                raise QueueError(f"{name} must be a whole number, got {value!r}")
        if not self.dedup_window_s > 0:
            raise QueueError(f"dedup_window_s must be > 0 seconds, got {self.dedup_window_s!r}")
        if self.trim_every < 0 or self.trim_interval_s <= 0:
            raise QueueError(
                f"trim_every must be >= 0 and trim_interval_s > 0, got {self.trim_every!r} and {self.trim_interval_s!r}"
            )
        if self.dead_letter_max < 1:
            raise QueueError(f"dead_letter_max must be >= 1, got {self.dead_letter_max!r}")

    @classmethod
    def from_params(cls, params: dict[str, str]) -> Retention:
        """Builds one from URL query values (text); raises QueueError naming the parameter."""
        values = {}
        for name, text in params.items():
            kind = cls._TYPES[name]
            try:
                values[name] = kind(text) if kind is float else int(text)
            except ValueError:
                raise QueueError(
                    f"{name} must be a {'number' if kind is float else 'whole number'}, got {text!r}"
                ) from None
        return cls(**values)


RETENTION_PARAMS = tuple(Retention._TYPES)
"""The queue URL parameters that set :class:`Retention` fields."""


class QueueError(Unavailable):
    """The queue cannot do what was asked: a bad URL, an unreachable or failing backend, a bad position."""


class MalformedItem(QueueError, ValueError):
    """An item given to :meth:`ComparisonQueue.publish` is not a valid labeled comparison.

    Nothing of the batch it came in was published.
    """

    def __init__(self, index: int, field: str, reason: str):
        #: Position of the offending item in the batch given to ``publish``.
        self.index = index
        #: The field at fault (``item`` when the item as a whole is wrong).
        self.field = field
        #: What is wrong with it.
        self.reason = reason
        super().__init__(f"item {index}: {field}: {reason}")


@dataclass(frozen=True)
class Delivery:
    """One item handed to a consumer; pass it back to :meth:`ComparisonQueue.ack` once it is durable."""

    delivery_id: str
    """The backend's id of the stream entry (Redis entry id, SQLite row number as text)."""
    item: dict
    """The labeled comparison, as published (it passed :func:`validate_comparison`)."""
    attempts: int
    """How many times this entry has been delivered to the group: 1 on first delivery."""


def _check(item: Any) -> tuple[str, str] | None:
    """(field, reason) for the first problem with ``item``, or None when it is a valid comparison."""
    return check_comparison(item, queued=True)


def validate_comparison(item: Any) -> str | None:
    """Why ``item`` is not a valid labeled comparison (``"<field>: <reason>"``), or None when it is.

    Required: ``id`` (non-empty str), ``prompt`` (non-empty list of ``{role, content}`` string
    messages, the last one with role ``user``), ``answer_a`` and ``answer_b`` (str), ``p_a`` (a
    number in [0, 1], not NaN, not a bool), ``principle_id`` (str, may be empty), ``provenance`` (an
    object with string ``constitution_sha256``, ``judge_model``, ``policy_checkpoint``,
    ``created_at``). Optional ``kind``: ``harmlessness`` (default) or ``helpfulness``. Other keys
    are allowed and kept. JSON-serialisability is checked by ``publish`` when it encodes the item.
    """
    problem = _check(item)
    return None if problem is None else f"{problem[0]}: {problem[1]}"


def encode_items(items: Sequence[Any]) -> list[tuple[str, str]]:
    """(comparison id, JSON text) for each item; raises MalformedItem for the first bad one."""
    out = []
    for index, item in enumerate(items):
        problem = _check(item)
        if problem is not None:
            raise MalformedItem(index, *problem)
        try:
            text = json.dumps(item, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise MalformedItem(index, "item", f"is not JSON-serialisable: {exc}") from None
        out.append((item["id"], text))
    return out


def decode_payload(payload: str | None) -> tuple[dict | None, str | None]:
    """(item, None) for a valid payload, or (None, reason) naming what is wrong with it."""
    if payload is None:
        return None, "entry has no payload"
    try:
        item = json.loads(payload)
    except (TypeError, ValueError) as exc:
        return None, f"payload is not valid JSON: {exc}"
    reason = validate_comparison(item)
    if reason is not None:
        return None, f"invalid comparison: {reason}"
    return item, None


class ComparisonQueue(abc.ABC):
    """A stream of labeled comparisons with consumer groups; see the module docstring for semantics.

    Synchronous and safe to share between threads; callers on an event loop wrap calls in
    ``asyncio.to_thread``. Open one with :func:`services.queue.open_queue`.
    """

    backend: str = ""
    """Backend name (``sqlite`` or ``redis``), the value of the metrics' ``backend`` label."""

    def __init__(self, stream: str, retention: Retention | None = None):
        if not stream:
            raise QueueError("stream name must not be empty")
        #: Name of the stream; the dead letters are in ``<stream>:dead``.
        self.stream = stream
        #: What the queue keeps: the dedup window, how often ``ack`` trims, the dead-letter cap.
        self.retention = retention or Retention()
        self._trim_lock = threading.Lock()
        self._acks_since_trim = 0
        self._last_trim = time.monotonic()

    # -- producing ---------------------------------------------------------------------------

    @abc.abstractmethod
    def publish(self, items: Iterable[dict]) -> int:
        """Validates every item, then appends those whose ``id`` was never published, atomically.

        Returns how many were new. Raises :class:`MalformedItem` (naming the index and field) if
        any item is malformed; then nothing of the batch is published.
        """

    @abc.abstractmethod
    def publish_raw(self, payloads: Iterable[str]) -> None:
        """Appends raw payload texts without validation or idempotency (a foreign producer)."""

    @abc.abstractmethod
    def is_published(self, comparison_id: str) -> bool:
        """Whether :meth:`publish` has appended an item with this id to the stream."""

    # -- consuming ---------------------------------------------------------------------------

    @abc.abstractmethod
    def consume(self, group: str, consumer: str, count: int = 64, block_ms: int = 0) -> list[Delivery]:
        """Up to ``count`` new items for ``consumer`` of ``group``, oldest first.

        Creates the group (reading from the start of the stream) if missing. Waits up to
        ``block_ms`` for items when there are none (0: do not wait). Malformed entries are
        dead-lettered and already-done ids are skipped (both acknowledged, neither returned), so
        fewer than ``count`` may come back while more are waiting. Returned items stay pending
        until :meth:`ack`.
        """

    @abc.abstractmethod
    def claim_stale(self, group: str, consumer: str, min_idle_ms: int, count: int = 64) -> list[Delivery]:
        """Takes over up to ``count`` items pending in ``group`` for at least ``min_idle_ms``.

        Any consumer's items qualify, this one's included (a consumer restarted under the same name
        gets its own back). ``attempts`` counts this delivery. Returns [] if the group is missing.
        """

    @abc.abstractmethod
    def ack(self, group: str, deliveries: Iterable[Delivery]) -> int:
        """Acknowledges ``deliveries`` and marks their comparison ids done for ``group``, atomically.

        Returns how many were still pending (acknowledging twice is harmless).
        """

    @abc.abstractmethod
    def is_done(self, group: str, comparison_id: str) -> bool:
        """Whether ``group`` has acknowledged an item with this comparison id (within the dedup window)."""

    # -- groups and trimming -----------------------------------------------------------------

    @abc.abstractmethod
    def create_group(self, group: str) -> None:
        """Creates ``group`` reading from the oldest entry still in the stream (no-op if it exists).

        Create a consumer group before publishing what it must read: once every *existing* group
        has acknowledged an entry, :meth:`trim` deletes it.
        """

    @abc.abstractmethod
    def delete_group(self, group: str) -> None:
        """Deletes ``group``, its pending entries and done marks (an abandoned group holds the stream)."""

    @abc.abstractmethod
    def trim(self) -> int:
        """Deletes the entries every consumer group has finished with; returns how many.

        Finished: acknowledged, dead-lettered or skipped as done. The bound is the oldest entry any
        group still has pending or not yet delivered; entries from it on are kept. A stream with no
        group is left as it is. Also forgets published ids and done marks older than the dedup
        window. Counts ``cai_queue_trimmed_total`` and sets ``cai_queue_depth``.
        """

    # -- position ----------------------------------------------------------------------------

    @abc.abstractmethod
    def position(self, group: str) -> str:
        """The group's last-delivered position (opaque text; the start of the stream if no group)."""

    @abc.abstractmethod
    def seek(self, group: str, position: str) -> None:
        """Sets the group's last-delivered position (creating the group); next consume reads after it.

        Pending items and done marks are left as they are. Raises QueueError for a position
        that is not one of this backend's.
        """

    # -- numbers -----------------------------------------------------------------------------

    @abc.abstractmethod
    def depth(self) -> int:
        """Entries in the stream now (valid or not): appended and not trimmed yet."""

    @abc.abstractmethod
    def lag(self, group: str) -> int:
        """Entries ``group`` has not finished: never delivered to it (after its position, malformed
        ones included) plus delivered but not acknowledged (:meth:`pending`). 0 when the group is
        drained; :meth:`depth` when the group does not exist yet."""

    @abc.abstractmethod
    def pending(self, group: str) -> int:
        """Entries delivered to ``group`` and not acknowledged yet (0 if the group is missing)."""

    @abc.abstractmethod
    def dead_letters(self, limit: int = 100) -> list[dict]:
        """The oldest ``limit`` dead letters: ``{reason, payload, time, delivery_id, group}``.

        ``payload`` is the original text, ``time`` a Unix timestamp, ``delivery_id`` the stream entry
        it came from, ``group`` the group that found it malformed.
        """

    @abc.abstractmethod
    def dead_letter_count(self) -> int:
        """How many entries are in the dead-letter stream."""

    @abc.abstractmethod
    def close(self) -> None:
        """Releases the connection; the queue object cannot be used afterwards."""

    def __enter__(self) -> ComparisonQueue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers for the backends ------------------------------------------------------------

    def _after_ack(self, acked: int) -> None:
        """Trims when :attr:`retention` says it is time; called by ``ack`` with how many it acknowledged.

        A failed trim is logged and retried at the next acknowledgement: the acknowledgement itself
        has succeeded and must not be reported as failed.
        """
        every = self.retention.trim_every
        if not every or not acked:
            return
        with self._trim_lock:
            self._acks_since_trim += acked
            due = self._acks_since_trim >= every or time.monotonic() - self._last_trim >= self.retention.trim_interval_s
            if not due:
                return
            self._acks_since_trim = 0
            self._last_trim = time.monotonic()
        try:
            self.trim()
        except QueueError as exc:
            log.warning("queue %s: trimming failed, will retry: %s", self.stream, exc)

    def _trimmed(self, removed: int, depth: int) -> int:
        TRIMMED.labels(self.backend).inc(removed)
        self._update_depth(depth)
        return removed

    def _update_depth(self, n: int) -> int:
        DEPTH.labels(self.backend).set(n)
        return n

    def _update_lag(self, group: str, n: int) -> int:
        LAG.labels(self.backend, group).set(n)
        return n
