"""The Redis Streams backend of the comparisons queue (consumer groups, XAUTOCLAIM, Lua for atomicity).

Keys, all prefixed by the stream name so ``SCAN <stream>*`` finds (and a test can delete) them:

* ``<stream>``: the stream; each entry has one field, ``payload`` (the item's JSON text).
* ``<stream>:published:<bucket>``: sets of comparison ids published (idempotent publish), one per
  time bucket of W = ``dedup_window_s`` (``bucket = server time // W``); a publish checks the
  current and the previous bucket, and each set expires at the end of the bucket after its own, so
  an id is remembered for at least W and at most 2W after its first publish.
* ``<stream>:done:<group>:<bucket>``: the same, for the comparison ids each group has acknowledged.
* ``<stream>:dead``: the dead-letter stream (fields ``reason``, ``payload``, ``time``, ``entry``,
  ``group``), capped at ``dead_letter_max`` entries (``XADD MAXLEN``), and ``<stream>:dead:seen``,
  a sorted set of the stream entries already dead-lettered (once each; scored by the entry's
  millisecond time and trimmed with the stream).

Times are the Redis server's (``TIME`` inside the scripts), so producers with skewed clocks agree
on the buckets. Keys from before the bounded id sets (``<stream>:published``, ``<stream>:done:<group>``,
``<stream>:dead:entries``) are no longer read; delete them after upgrading.

Atomicity: ``publish``, ``ack`` (XACK and the done marks), dead-lettering and ``trim`` are one Lua
script each. ``trim`` reads every group's bound inside its script (``XINFO GROUPS``; the oldest
pending entry from ``XPENDING``, else the entry after ``last-delivered-id``) and runs ``XTRIM MINID``
to the smallest, so an entry some group has not acknowledged is never trimmed. Positions are
stream entry ids (``<ms>-<seq>``), the group's ``last-delivered-id``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from contextlib import contextmanager

import redis

from services.queue.base import (
    CONSUMED,
    DEAD_LETTERED,
    PUBLISHED,
    REDELIVERED,
    ComparisonQueue,
    Delivery,
    QueueError,
    Retention,
    decode_payload,
    encode_items,
)

# Every script that uses the id windows starts with this: ARGV[1] is W in milliseconds; `cur` and
# `prev` are the current and previous bucket numbers, `expire_at` when the current bucket's set goes.
_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local w = tonumber(ARGV[1])
local b = math.floor(now / w)
local cur = string.format('%d', b)
local prev = string.format('%d', b - 1)
local expire_at = (b + 2) * w
"""

# Script flags (Redis 7): a script without `allow-oom` is refused before it starts when Redis is
# over --maxmemory, so a publish is all or nothing; acknowledging, dead-lettering and trimming are
# allowed then (they are how the memory comes back).
_FLAGS = "#!lua\n"
_FLAGS_OOM = "#!lua flags=allow-oom\n"

# KEYS: stream. ARGV: W ms, published-set prefix, then (id, payload)*.
_PUBLISH = (
    _FLAGS
    + _WINDOW
    + """
local key, old = ARGV[2] .. cur, ARGV[2] .. prev
local n = 0
for i = 3, #ARGV, 2 do
  if redis.call('SISMEMBER', old, ARGV[i]) == 0 and redis.call('SADD', key, ARGV[i]) == 1 then
    redis.call('XADD', KEYS[1], '*', 'payload', ARGV[i + 1])
    n = n + 1
  end
end
if n > 0 then redis.call('PEXPIREAT', key, expire_at) end
return n
"""
)

# ARGV: W ms, set prefix, then ids. Returns 1/0 for each id: in the current or previous bucket.
_MEMBERS = (
    "#!lua flags=no-writes,allow-oom\n"
    + _WINDOW
    + """
local out = {}
for i = 3, #ARGV do
  local hit = redis.call('SISMEMBER', ARGV[2] .. cur, ARGV[i]) == 1 or redis.call('SISMEMBER', ARGV[2] .. prev, ARGV[i]) == 1
  out[#out + 1] = hit and 1 or 0
end
return out
"""
)

# KEYS: stream. ARGV: W ms, done-set prefix, group, number of entry ids k, k entry ids, comparison ids.
_ACK = (
    _FLAGS_OOM
    + _WINDOW
    + """
local k = tonumber(ARGV[4])
local acked = 0
for i = 5, 4 + k, 500 do
  acked = acked + redis.call('XACK', KEYS[1], ARGV[3], unpack(ARGV, i, math.min(i + 499, 4 + k)))
end
local key = ARGV[2] .. cur
for i = 5 + k, #ARGV, 500 do
  redis.call('SADD', key, unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
if #ARGV >= 5 + k then redis.call('PEXPIREAT', key, expire_at) end
return acked
"""
)

# KEYS: stream, dead stream, dead-seen sorted set. ARGV: group, time, dead cap, then (entry id, reason, payload)*.
_DEAD_LETTER = (
    _FLAGS_OOM
    + """
local n = 0
for i = 4, #ARGV, 3 do
  if redis.call('ZADD', KEYS[3], 'NX', tonumber(string.match(ARGV[i], '^(%d+)')), ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '*', 'reason', ARGV[i + 1], 'payload', ARGV[i + 2],
               'time', ARGV[2], 'entry', ARGV[i], 'group', ARGV[1])
    n = n + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
end
return n
"""
)

# KEYS: stream, dead-seen sorted set. Returns {entries trimmed, stream length}; {-1, length} when
# the stream has no group (nothing is trimmed then).
_TRIM = (
    _FLAGS_OOM
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return {-1, redis.call('XLEN', KEYS[1])} end
local min_ms, min_seq
for _, g in ipairs(groups) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  local id, ms, seq
  if tonumber(f['pending']) > 0 then
    id = redis.call('XPENDING', KEYS[1], f['name'], '-', '+', 1)[1][1]
    ms, seq = string.match(id, '^(%d+)-(%d+)$')
    ms, seq = tonumber(ms), tonumber(seq)
  else
    ms, seq = string.match(f['last-delivered-id'], '^(%d+)-(%d+)$')
    ms, seq = tonumber(ms), tonumber(seq) + 1
  end
  if min_ms == nil or ms < min_ms or (ms == min_ms and seq < min_seq) then
    min_ms, min_seq = ms, seq
  end
end
local minid = string.format('%d-%d', min_ms, min_seq)
local n = redis.call('XTRIM', KEYS[1], 'MINID', minid)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%d', min_ms))
return {n, redis.call('XLEN', KEYS[1])}
"""
)

_ENTRY_ID = re.compile(r"^\d+(-\d+)?$")
_PUBLISH_CHUNK = 500


class RedisQueue(ComparisonQueue):
    """The queue as a Redis stream at ``url`` (``redis://host:port/db``; ``rediss://`` for TLS)."""

    backend = "redis"

    def __init__(
        self, url: str, stream: str = "comparisons", display_url: str | None = None, retention: Retention | None = None
    ):
        super().__init__(stream, retention)
        self._where = display_url or url
        try:
            self._r = redis.Redis.from_url(url, decode_responses=True, protocol=2)
            self._r.ping()
        except (redis.RedisError, ValueError, TypeError) as exc:  # TypeError: unknown URL option
            raise QueueError(f"cannot reach Redis queue at {self._where}: {exc}") from exc
        self._publish = self._r.register_script(_PUBLISH)
        self._members = self._r.register_script(_MEMBERS)
        self._ack = self._r.register_script(_ACK)
        self._dead_letter = self._r.register_script(_DEAD_LETTER)
        self._trim = self._r.register_script(_TRIM)
        self._groups: set[str] = set()
        self._window_ms = max(1, round(self.retention.dedup_window_s * 1000))
        self._published_prefix = f"{stream}:published:"
        self._dead_key = f"{stream}:dead"
        self._dead_seen_key = f"{stream}:dead:seen"

    def _done_prefix(self, group: str) -> str:
        return f"{self.stream}:done:{group}:"

    def _in_window(self, prefix: str, ids: list[str]) -> list[bool]:
        """Whether each id is in the current or previous bucket set under ``prefix``."""
        if not ids:
            return []
        return [bool(x) for x in self._members(args=[self._window_ms, prefix, *ids])]

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
                new += int(self._publish(keys=[self.stream], args=[self._window_ms, self._published_prefix, *args]))
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
            return self._in_window(self._published_prefix, [comparison_id])[0]

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
            flags = self._in_window(self._done_prefix(group), [item["id"] for _, item in good])
            skipped = [eid for (eid, _), done in zip(good, flags) if done]
            good = [g for g, done in zip(good, flags) if not done]
        if dead:
            n = self._dead_letter(
                keys=[self.stream, self._dead_key, self._dead_seen_key],
                args=[group, repr(time.time()), self.retention.dead_letter_max, *dead],
            )
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
                        self.stream, group, consumer, min_idle_ms, cursor, count=count - len(claimed)
                    )[:3]
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
        entry_ids = [d.delivery_id for d in deliveries]
        with self._errors():
            acked = int(
                self._ack(
                    keys=[self.stream],
                    args=[
                        self._window_ms,
                        self._done_prefix(group),
                        group,
                        len(entry_ids),
                        *entry_ids,
                        *{d.item["id"] for d in deliveries},
                    ],
                )
            )
        CONSUMED.labels(self.backend).inc(acked)
        self._after_ack(acked)
        return acked

    def is_done(self, group: str, comparison_id: str) -> bool:
        with self._errors():
            return self._in_window(self._done_prefix(group), [comparison_id])[0]

    # -- groups and trimming -----------------------------------------------------------------

    def create_group(self, group: str) -> None:
        with self._errors():
            self._ensure_group(group, force=True)

    def delete_group(self, group: str) -> None:
        with self._errors():
            if self._r.exists(self.stream):
                self._r.xgroup_destroy(self.stream, group)
            keys = list(self._r.scan_iter(f"{self._done_prefix(group)}*", count=1000))
            if keys:
                self._r.delete(*keys)
        self._groups.discard(group)

    def trim(self) -> int:
        with self._errors():
            removed, length = (int(x) for x in self._trim(keys=[self.stream, self._dead_seen_key]))
        # The id sets forget by themselves (each bucket's set expires).
        return self._trimmed(max(removed, 0), length)

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
            # Entries ever added at or before the position, so Redis can keep computing the group's
            # lag: all added minus those still in the stream after it (trimmed ones count as read).
            after = self._entries_after(text)
            added = int(self._r.xinfo_stream(self.stream)["entries-added"]) if self._r.exists(self.stream) else 0
            read = max(added - after, 0)
            if self._group_info(group) is None:
                self._r.xgroup_create(self.stream, group, id=text, mkstream=True, entries_read=read)
            else:
                self._r.xgroup_setid(self.stream, group, text, entries_read=read)
            self._groups.add(group)

    # -- numbers -----------------------------------------------------------------------------

    def _entries_after(self, entry_id: str) -> int:
        """How many entries the stream holds after ``entry_id`` (read in pages of 10,000)."""
        count, cursor = 0, "(" + entry_id
        while True:
            batch = self._r.xrange(self.stream, cursor, "+", count=10_000)
            count += len(batch)
            if len(batch) < 10_000:
                return count
            cursor = "(" + batch[-1][0]

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
                undelivered = self._entries_after(info["last-delivered-id"])
            return self._update_lag(group, int(undelivered) + int(info["pending"]))

    def pending(self, group: str) -> int:
        with self._errors():
            info = self._group_info(group)
        return int(info["pending"]) if info else 0

    def dead_letters(self, limit: int = 100) -> list[dict]:
        with self._errors():
            rows = self._r.xrange(self._dead_key, "-", "+", count=limit)
        return [
            {
                "reason": f.get("reason", ""),
                "payload": f.get("payload", ""),
                "time": float(f.get("time", 0)),
                "delivery_id": f.get("entry", ""),
                "group": f.get("group", ""),
            }
            for _, f in rows
        ]

    def dead_letter_count(self) -> int:
        with self._errors():
            return int(self._r.xlen(self._dead_key))

    def close(self) -> None:
        self._r.close()

    def __repr__(self) -> str:
        return f"RedisQueue({self._where!r}, stream={self.stream!r})"
