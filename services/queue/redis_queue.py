"""The Redis Streams backend of the comparisons queue (consumer groups, XAUTOCLAIM, Lua for atomicity).

Keys, all prefixed by the stream name so ``SCAN <stream>*`` finds (and a test can delete) them:

* ``<stream>``: the stream; each entry has one field, ``payload`` (the item's JSON text).
* ``<stream>:published``: set of comparison ids ever published (idempotent publish).
* ``<stream>:done:<group>``: set of comparison ids each group has acknowledged.
* ``<stream>:dead``: the dead-letter stream (fields ``reason``, ``payload``, ``time``, ``entry``,
  ``group``) and ``<stream>:dead:entries``, the set of entry ids already dead-lettered (once each).

Atomicity: ``publish`` is one Lua script (SADD to the published set, XADD only when the id is new);
dead-lettering is one Lua script (XADD to the dead stream once per entry, XACK); ``ack`` is one
MULTI/EXEC with XACK and SADD to the done set. Positions are stream entry ids (``<ms>-<seq>``), the
group's ``last-delivered-id``. The stream is never trimmed, so ``lag`` is exact.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from contextlib import contextmanager

import redis

from services.queue.base import (
    CONSUMED, DEAD_LETTERED, PUBLISHED, REDELIVERED, ComparisonQueue, Delivery, QueueError, decode_payload,
    encode_items,
)

_PUBLISH = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[1], '*', 'payload', ARGV[i + 1])
    n = n + 1
  end
end
return n
"""

# KEYS: stream, dead stream, dead-entries set. ARGV: group, time, then (entry id, reason, payload)*.
_DEAD_LETTER = """
local n = 0
for i = 3, #ARGV, 3 do
  if redis.call('SADD', KEYS[3], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'reason', ARGV[i + 1], 'payload', ARGV[i + 2], 'time', ARGV[2],
               'entry', ARGV[i], 'group', ARGV[1])
    n = n + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
end
return n
"""

_ENTRY_ID = re.compile(r"^\d+(-\d+)?$")
_PUBLISH_CHUNK = 500


class RedisQueue(ComparisonQueue):
    """The queue as a Redis stream at ``url`` (``redis://host:port/db``; ``rediss://`` for TLS)."""

    backend = "redis"

    def __init__(self, url: str, stream: str = "comparisons", display_url: str | None = None):
        super().__init__(stream)
        self._where = display_url or url
        try:
            self._r = redis.Redis.from_url(url, decode_responses=True, protocol=2)
            self._r.ping()
        except (redis.RedisError, ValueError, TypeError) as exc:  # TypeError: unknown URL option
            raise QueueError(f"cannot reach Redis queue at {self._where}: {exc}") from exc
        self._publish = self._r.register_script(_PUBLISH)
        self._dead_letter = self._r.register_script(_DEAD_LETTER)
        self._groups: set[str] = set()
        self._published_key = f"{stream}:published"
        self._dead_key = f"{stream}:dead"
        self._dead_entries_key = f"{stream}:dead:entries"

    def _done_key(self, group: str) -> str:
        return f"{self.stream}:done:{group}"

    @contextmanager
    def _errors(self):
        try:
            yield
        except redis.RedisError as exc:
            raise QueueError(f"Redis queue {self.stream!r} at {self._where}: {exc}") from exc

    def _ensure_group(self, group: str, force: bool = False) -> None:
        if group in self._groups and not force:
            return
        try:
            self._r.xgroup_create(self.stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(group)

    def _group_info(self, group: str) -> dict | None:
        try:
            groups = self._r.xinfo_groups(self.stream)
        except redis.ResponseError as exc:  # no such key
            if "no such key" in str(exc).lower():
                return None
            raise
        return next((g for g in groups if g["name"] == group), None)

    # -- producing ---------------------------------------------------------------------------

    def publish(self, items: Iterable[dict]) -> int:
        encoded = encode_items(list(items))
        new = 0
        with self._errors():
            # One script per chunk keeps each atomic step short; a batch is normally one chunk.
            for start in range(0, len(encoded), _PUBLISH_CHUNK):
                args = [x for pair in encoded[start : start + _PUBLISH_CHUNK] for x in pair]
                new += int(self._publish(keys=[self.stream, self._published_key], args=args))
        PUBLISHED.labels(self.backend).inc(new)
        return new

    def publish_raw(self, payloads: Iterable[str]) -> None:
        with self._errors():
            pipe = self._r.pipeline(transaction=True)
            for p in payloads:
                pipe.xadd(self.stream, {"payload": str(p)})
            pipe.execute()

    def is_published(self, comparison_id: str) -> bool:
        with self._errors():
            return bool(self._r.sismember(self._published_key, comparison_id))

    # -- consuming ---------------------------------------------------------------------------

    def _triage(self, group: str, entries: list, attempts: dict[str, int] | None = None) -> list[Delivery]:
        """Dead-letters malformed entries and acknowledges already-done ids (both atomically per
        kind); returns the rest as deliveries. ``attempts``: delivery counts by entry id (default 1)."""
        good, dead = [], []
        for entry_id, fields in entries:
            if fields is None:  # deleted from the stream while pending
                continue
            payload = fields.get("payload")
            item, reason = decode_payload(payload)
            if item is None:
                dead.extend([entry_id, reason, payload if payload is not None else repr(fields)])
            else:
                good.append((entry_id, item))
        skipped = []
        if good:
            flags = self._r.smismember(self._done_key(group), [item["id"] for _, item in good])
            skipped = [eid for (eid, _), done in zip(good, flags) if done]
            good = [g for g, done in zip(good, flags) if not done]
        if dead:
            n = self._dead_letter(keys=[self.stream, self._dead_key, self._dead_entries_key],
                                  args=[group, repr(time.time()), *dead])
            DEAD_LETTERED.labels(self.backend).inc(int(n))
        if skipped:
            self._r.xack(self.stream, group, *skipped)
            REDELIVERED.labels(self.backend).inc(len(skipped))
        return [Delivery(eid, item, (attempts or {}).get(eid, 1)) for eid, item in good]

    def _read(self, group: str, consumer: str, count: int, block_ms: int | None) -> list:
        try:
            reply = self._r.xreadgroup(group, consumer, {self.stream: ">"}, count=count, block=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._ensure_group(group, force=True)  # deleted behind our back: create again
            reply = self._r.xreadgroup(group, consumer, {self.stream: ">"}, count=count, block=block_ms)
        return reply[0][1] if reply else []

    def consume(self, group: str, consumer: str, count: int = 64, block_ms: int = 0) -> list[Delivery]:
        if count <= 0:
            return []
        with self._errors():
            self._ensure_group(group)
            deadline = time.monotonic() + max(block_ms, 0) / 1000
            while True:
                left_ms = int((deadline - time.monotonic()) * 1000)
                entries = self._read(group, consumer, count, left_ms if left_ms > 0 else None)
                out = self._triage(group, entries)
                if out or not entries:
                    return out
                # Only malformed or already-done entries came: read on (within the wait left).

    def claim_stale(self, group: str, consumer: str, min_idle_ms: int, count: int = 64) -> list[Delivery]:
        if count <= 0:
            return []
        with self._errors():
            claimed, cursor = [], "0-0"
            try:
                while len(claimed) < count:
                    cursor, entries, _deleted = self._r.xautoclaim(
                        self.stream, group, consumer, min_idle_ms, cursor, count=count - len(claimed))[:3]
                    claimed += entries
                    if cursor == "0-0":
                        break
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    return []
                raise
            if not claimed:
                return []
            pipe = self._r.pipeline(transaction=False)
            for entry_id, _ in claimed:
                pipe.xpending_range(self.stream, group, entry_id, entry_id, 1, consumer)
            attempts = {rows[0]["message_id"]: int(rows[0]["times_delivered"]) for rows in pipe.execute() if rows}
            out = self._triage(group, claimed, attempts)
        REDELIVERED.labels(self.backend).inc(len(out))
        return out

    def ack(self, group: str, deliveries: Iterable[Delivery]) -> int:
        deliveries = list(deliveries)
        if not deliveries:
            return 0
        with self._errors():
            pipe = self._r.pipeline(transaction=True)
            pipe.xack(self.stream, group, *[d.delivery_id for d in deliveries])
            pipe.sadd(self._done_key(group), *{d.item["id"] for d in deliveries})
            acked = int(pipe.execute()[0])
        CONSUMED.labels(self.backend).inc(acked)
        return acked

    def is_done(self, group: str, comparison_id: str) -> bool:
        with self._errors():
            return bool(self._r.sismember(self._done_key(group), comparison_id))

    # -- position ----------------------------------------------------------------------------

    def position(self, group: str) -> str:
        with self._errors():
            info = self._group_info(group)
        return info["last-delivered-id"] if info else "0-0"

    def seek(self, group: str, position: str) -> None:
        text = str(position).strip()
        if not _ENTRY_ID.match(text):
            raise QueueError(f"Redis queue position must be a stream entry id like 1700000000000-0, got {position!r}")
        with self._errors():
            # Entries at or before the position, so Redis can keep computing the group's lag.
            read, cursor = 0, "-"
            while True:
                batch = self._r.xrange(self.stream, cursor, text, count=10_000)
                read += len(batch)
                if len(batch) < 10_000:
                    break
                cursor = "(" + batch[-1][0]
            if self._group_info(group) is None:
                self._r.xgroup_create(self.stream, group, id=text, mkstream=True, entries_read=read)
            else:
                self._r.xgroup_setid(self.stream, group, text, entries_read=read)
            self._groups.add(group)

    # -- numbers -----------------------------------------------------------------------------

    def depth(self) -> int:
        with self._errors():
            return self._update_depth(int(self._r.xlen(self.stream)))

    def lag(self, group: str) -> int:
        with self._errors():
            info = self._group_info(group)
            if info is None:
                return self._update_lag(group, self.depth())
            undelivered = info.get("lag")
            if undelivered is None:  # Redis cannot tell (e.g. after a seek); count the entries
                undelivered, cursor = 0, "(" + info["last-delivered-id"]
                while True:
                    batch = self._r.xrange(self.stream, cursor, "+", count=10_000)
                    undelivered += len(batch)
                    if len(batch) < 10_000:
                        break
                    cursor = "(" + batch[-1][0]
            return self._update_lag(group, int(undelivered) + int(info["pending"]))

    def pending(self, group: str) -> int:
        with self._errors():
            info = self._group_info(group)
        return int(info["pending"]) if info else 0

    def dead_letters(self, limit: int = 100) -> list[dict]:
        with self._errors():
            rows = self._r.xrange(self._dead_key, "-", "+", count=limit)
        return [{"reason": f.get("reason", ""), "payload": f.get("payload", ""), "time": float(f.get("time", 0)),
                 "delivery_id": f.get("entry", ""), "group": f.get("group", "")} for _, f in rows]

    def dead_letter_count(self) -> int:
        with self._errors():
            return int(self._r.xlen(self._dead_key))

    def close(self) -> None:
        self._r.close()

    def __repr__(self) -> str:
        return f"RedisQueue({self._where!r}, stream={self.stream!r})"
