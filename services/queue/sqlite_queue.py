"""The SQLite backend of the comparisons queue: one database file, safe across threads and processes.

The file is in WAL mode with ``synchronous=FULL`` (a committed publish or acknowledgement survives a
power cut, not only a killed process) and a busy timeout, so several producers and consumers in
different processes share it. Several streams may live in one file (every table has a ``stream``
column). Tables:

* ``stream(seq, stream, comparison_id, payload, added_at)``: the entries; ``seq`` is an
  AUTOINCREMENT row number (never reused, so positions survive trimming) and is the delivery id
  and the position; ``comparison_id`` is UNIQUE per stream and NULL for raw payloads. ``trim``
  deletes the rows below every group's oldest pending or undelivered ``seq``.
* ``published(stream, comparison_id, at)``: when each id was first published; an id whose row is
  younger than the dedup window W is dropped by ``publish``; ``trim`` deletes older rows.
* ``groups(stream, name, last_seq)``: each consumer group's last-delivered ``seq`` (its position).
* ``pending(stream, grp, seq, consumer, delivered_at, attempts)``: delivered, not acknowledged.
* ``done(stream, grp, comparison_id, at)``: comparison ids each group has acknowledged, and when;
  marks older than W do not count and are deleted by ``trim``.
* ``dead(stream, seq, reason, payload, time, grp)``: dead letters, one per malformed entry, the
  newest ``dead_letter_max`` kept.

A file from before the bounded tables is upgraded when opened (``published`` filled from the
stream's ids, ``done`` given the time of the upgrade). Deleted rows' pages are reused, so the file
stops growing once trimming keeps up; it does not shrink (``VACUUM`` it offline to give space back).

Every state change is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken up front), so two
consumers never receive the same new item and a crash leaves either all of a change or none.
Blocking reads (``block_ms``) poll the file with a short back-off.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

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

BUSY_TIMEOUT_S = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS stream (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    comparison_id TEXT,
    payload TEXT NOT NULL,
    added_at REAL NOT NULL,
    UNIQUE (stream, comparison_id)
);
CREATE INDEX IF NOT EXISTS stream_by_stream ON stream (stream, seq);
CREATE TABLE IF NOT EXISTS groups (
    stream TEXT NOT NULL,
    name TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (stream, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    stream TEXT NOT NULL,
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    consumer TEXT NOT NULL,
    delivered_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (stream, grp, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_by_age ON pending (stream, grp, delivered_at);
CREATE TABLE IF NOT EXISTS done (
    stream TEXT NOT NULL,
    grp TEXT NOT NULL,
    comparison_id TEXT NOT NULL,
    at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (stream, grp, comparison_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS published (
    stream TEXT NOT NULL,
    comparison_id TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (stream, comparison_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS published_by_age ON published (stream, at);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    reason TEXT NOT NULL,
    payload TEXT NOT NULL,
    time REAL NOT NULL,
    grp TEXT NOT NULL,
    UNIQUE (stream, seq)
);
"""


class SQLiteQueue(ComparisonQueue):
    """The queue in a SQLite file at ``path`` (created with its folder if missing)."""

    backend = "sqlite"

    def __init__(self, path: str | os.PathLike, stream: str = "comparisons", retention: Retention | None = None):
        super().__init__(stream, retention)
        #: The database file.
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise QueueError(f"SQLite queue {self.path}: cannot use WAL mode (got {mode})")
            self._db.execute("PRAGMA synchronous = FULL")
            with self._tx() as db:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                done_columns = {r[1] for r in db.execute("PRAGMA table_info(done)")}
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                if "stream" in tables and "published" not in tables:  # a file from before: upgrade
                    db.execute(
                        "INSERT OR IGNORE INTO published (stream, comparison_id, at) "
                        "SELECT stream, comparison_id, added_at FROM stream WHERE comparison_id IS NOT NULL"
                    )
                if "done" in tables and "at" not in done_columns:
                    db.execute("ALTER TABLE done ADD COLUMN at REAL NOT NULL DEFAULT 0")
                    db.execute("UPDATE done SET at = ?", (time.time(),))
                db.execute("CREATE INDEX IF NOT EXISTS done_by_age ON done (stream, at)")
        except (sqlite3.Error, OSError) as exc:
            raise QueueError(f"cannot open SQLite queue {self.path}: {exc}") from exc

    # -- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def _tx(self):
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), serialised between this object's threads."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise QueueError(f"SQLite queue {self.path}: {exc}") from exc

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise QueueError(f"SQLite queue {self.path}: {exc}") from exc

    def _scalar(self, sql: str, args: tuple = ()):
        rows = self._read(sql, args)
        return rows[0][0] if rows else None

    # -- producing ---------------------------------------------------------------------------

    def publish(self, items: Iterable[dict]) -> int:
        encoded = encode_items(list(items))
        if not encoded:
            return 0
        now = time.time()
        cutoff = now - self.retention.dedup_window_s
        with self._tx() as db:
            before = db.total_changes
            # New unless published within the window; an old entry with this id still in the stream
            # (not trimmed yet) also makes it a repeat (the UNIQUE constraint ignores it).
            db.executemany(
                "INSERT OR IGNORE INTO stream (stream, comparison_id, payload, added_at) "
                "SELECT ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM published "
                "WHERE stream = ? AND comparison_id = ? AND at >= ?)",
                [(self.stream, cid, text, now, self.stream, cid, cutoff) for cid, text in encoded],
            )
            new = db.total_changes - before
            # The window runs from the first publish: only a forgotten (expired) id gets a new time.
            db.executemany(
                "INSERT INTO published (stream, comparison_id, at) VALUES (?, ?, ?) "
                "ON CONFLICT (stream, comparison_id) DO UPDATE SET at = excluded.at WHERE at < ?",
                [(self.stream, cid, now, cutoff) for cid, _ in encoded],
            )
        PUBLISHED.labels(self.backend).inc(new)
        return new

    def publish_raw(self, payloads: Iterable[str]) -> None:
        now = time.time()
        rows = [(self.stream, str(p), now) for p in payloads]
        with self._tx() as db:
            db.executemany("INSERT INTO stream (stream, payload, added_at) VALUES (?, ?, ?)", rows)

    def is_published(self, comparison_id: str) -> bool:
        return (
            self._scalar(
                "SELECT 1 FROM published WHERE stream = ? AND comparison_id = ? AND at >= ?",
                (self.stream, comparison_id, time.time() - self.retention.dedup_window_s),
            )
            is not None
        )

    # -- consuming ---------------------------------------------------------------------------

    def _triage(self, db: sqlite3.Connection, group: str, rows: list[tuple]) -> tuple[list, int, int]:
        """Splits (seq, payload, attempts) rows into good ones [(seq, item, attempts)], dead-lettering
        malformed ones and counting already-done ones; returns (good, dead-lettered, skipped as done).

        Runs inside the caller's transaction; the caller removes the bad and done rows from pending.
        """
        good, dead, done_seqs = [], [], []
        now = time.time()
        for seq, payload, attempts in rows:
            item, reason = decode_payload(payload)
            if item is None:
                dead.append((self.stream, seq, reason, payload, now, group))
            else:
                good.append((seq, item, attempts))
        if good:
            ids = list({item["id"] for _, item, _ in good})
            done = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                done.update(
                    r[0]
                    for r in db.execute(
                        f"SELECT comparison_id FROM done WHERE stream = ? AND grp = ? AND at >= ? "
                        f"AND comparison_id IN ({marks})",
                        (self.stream, group, now - self.retention.dedup_window_s, *chunk),
                    )
                )
            if done:
                done_seqs = [seq for seq, item, _ in good if item["id"] in done]
                good = [g for g in good if g[1]["id"] not in done]
        newly_dead = 0
        if dead:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO dead (stream, seq, reason, payload, time, grp) VALUES (?, ?, ?, ?, ?, ?)", dead
            )
            newly_dead = db.total_changes - before
            db.execute(
                "DELETE FROM dead WHERE stream = ? AND id <= (SELECT id FROM dead WHERE stream = ? "
                "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (self.stream, self.stream, self.retention.dead_letter_max),
            )
        gone = [(self.stream, group, d[1]) for d in dead] + [(self.stream, group, s) for s in done_seqs]
        if gone:
            db.executemany("DELETE FROM pending WHERE stream = ? AND grp = ? AND seq = ?", gone)
        return good, newly_dead, len(done_seqs)

    def _consume_once(self, group: str, consumer: str, count: int) -> list[Delivery]:
        out, dead, skipped = [], 0, 0
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO groups (stream, name, last_seq) VALUES (?, ?, 0)", (self.stream, group))
            last = db.execute(
                "SELECT last_seq FROM groups WHERE stream = ? AND name = ?", (self.stream, group)
            ).fetchone()[0]
            while len(out) < count:
                rows = db.execute(
                    "SELECT seq, payload, 1 FROM stream WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (self.stream, last, count - len(out)),
                ).fetchall()
                if not rows:
                    break
                last = rows[-1][0]
                good, d, s = self._triage(db, group, rows)
                dead, skipped = dead + d, skipped + s
                now = time.time()
                db.executemany(
                    "INSERT INTO pending (stream, grp, seq, consumer, delivered_at, attempts) VALUES (?, ?, ?, ?, ?, 1)",
                    [(self.stream, group, seq, consumer, now) for seq, _, _ in good],
                )
                out += [Delivery(str(seq), item, 1) for seq, item, _ in good]
            db.execute("UPDATE groups SET last_seq = ? WHERE stream = ? AND name = ?", (last, self.stream, group))
        DEAD_LETTERED.labels(self.backend).inc(dead)
        REDELIVERED.labels(self.backend).inc(skipped)
        return out

    def consume(self, group: str, consumer: str, count: int = 64, block_ms: int = 0) -> list[Delivery]:
        if count <= 0:
            return []
        deadline = time.monotonic() + max(block_ms, 0) / 1000
        pause = 0.005
        while True:
            out = self._consume_once(group, consumer, count)
            if out or time.monotonic() >= deadline:
                return out
            # Poll with a read (no write lock) until something new arrives or the wait is over.
            while not self._has_new(group):
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.1)

    def _has_new(self, group: str) -> bool:
        """Whether the stream has entries after the group's position (a read, no write lock)."""
        return (
            self._scalar(
                "SELECT 1 FROM stream WHERE stream = ? AND seq > "
                "coalesce((SELECT last_seq FROM groups WHERE stream = ? AND name = ?), 0) LIMIT 1",
                (self.stream, self.stream, group),
            )
            is not None
        )

    def claim_stale(self, group: str, consumer: str, min_idle_ms: int, count: int = 64) -> list[Delivery]:
        if count <= 0:
            return []
        now = time.time()
        with self._tx() as db:
            rows = db.execute(
                "SELECT p.seq, s.payload, p.attempts + 1 FROM pending p JOIN stream s ON s.seq = p.seq "
                "WHERE p.stream = ? AND p.grp = ? AND p.delivered_at <= ? ORDER BY p.seq LIMIT ?",
                (self.stream, group, now - min_idle_ms / 1000, count),
            ).fetchall()
            if not rows:
                return []
            good, dead, skipped = self._triage(db, group, rows)
            db.executemany(
                "UPDATE pending SET consumer = ?, delivered_at = ?, attempts = ? "
                "WHERE stream = ? AND grp = ? AND seq = ?",
                [(consumer, now, attempts, self.stream, group, seq) for seq, _, attempts in good],
            )
        DEAD_LETTERED.labels(self.backend).inc(dead)
        REDELIVERED.labels(self.backend).inc(skipped + len(good))
        return [Delivery(str(seq), item, attempts) for seq, item, attempts in good]

    def ack(self, group: str, deliveries: Iterable[Delivery]) -> int:
        deliveries = list(deliveries)
        if not deliveries:
            return 0
        with self._tx() as db:
            before = db.total_changes
            db.executemany(
                "DELETE FROM pending WHERE stream = ? AND grp = ? AND seq = ?",
                [(self.stream, group, int(d.delivery_id)) for d in deliveries],
            )
            acked = db.total_changes - before
            now = time.time()
            db.executemany(
                "INSERT OR REPLACE INTO done (stream, grp, comparison_id, at) VALUES (?, ?, ?, ?)",
                [(self.stream, group, d.item["id"], now) for d in deliveries],
            )
        CONSUMED.labels(self.backend).inc(acked)
        self._after_ack(acked)
        return acked

    def is_done(self, group: str, comparison_id: str) -> bool:
        return (
            self._scalar(
                "SELECT 1 FROM done WHERE stream = ? AND grp = ? AND comparison_id = ? AND at >= ?",
                (self.stream, group, comparison_id, time.time() - self.retention.dedup_window_s),
            )
            is not None
        )

    # -- groups and trimming -----------------------------------------------------------------

    def create_group(self, group: str) -> None:
        # Reading from the oldest row still there: last_seq is just below it (0 for an empty stream).
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO groups (stream, name, last_seq) VALUES "
                "(?, ?, coalesce((SELECT min(seq) - 1 FROM stream WHERE stream = ?), 0))",
                (self.stream, group, self.stream),
            )

    def delete_group(self, group: str) -> None:
        with self._tx() as db:
            for table, column in (("groups", "name"), ("pending", "grp"), ("done", "grp")):
                db.execute(f"DELETE FROM {table} WHERE stream = ? AND {column} = ?", (self.stream, group))

    def trim(self) -> int:
        cutoff = time.time() - self.retention.dedup_window_s
        with self._tx() as db:
            bound = db.execute(
                "SELECT min(coalesce((SELECT min(seq) FROM pending p WHERE p.stream = g.stream AND p.grp = g.name), "
                "g.last_seq + 1)) FROM groups g WHERE g.stream = ?",
                (self.stream,),
            ).fetchone()[0]
            removed = 0
            if bound is not None:
                removed = db.execute("DELETE FROM stream WHERE stream = ? AND seq < ?", (self.stream, bound)).rowcount
            db.execute("DELETE FROM published WHERE stream = ? AND at < ?", (self.stream, cutoff))
            db.execute("DELETE FROM done WHERE stream = ? AND at < ?", (self.stream, cutoff))
            depth = db.execute("SELECT count(*) FROM stream WHERE stream = ?", (self.stream,)).fetchone()[0]
        return self._trimmed(removed, depth)

    # -- position ----------------------------------------------------------------------------

    def position(self, group: str) -> str:
        last = self._scalar("SELECT last_seq FROM groups WHERE stream = ? AND name = ?", (self.stream, group))
        return str(last or 0)

    def seek(self, group: str, position: str) -> None:
        text = str(position).strip()
        if not text.isdigit():
            raise QueueError(f"SQLite queue position must be a row number (digits), got {position!r}")
        with self._tx() as db:
            db.execute(
                "INSERT INTO groups (stream, name, last_seq) VALUES (?, ?, ?) "
                "ON CONFLICT (stream, name) DO UPDATE SET last_seq = excluded.last_seq",
                (self.stream, group, int(text)),
            )

    # -- numbers -----------------------------------------------------------------------------

    def depth(self) -> int:
        return self._update_depth(self._scalar("SELECT count(*) FROM stream WHERE stream = ?", (self.stream,)))

    def lag(self, group: str) -> int:
        last = self._scalar("SELECT last_seq FROM groups WHERE stream = ? AND name = ?", (self.stream, group))
        if last is None:
            return self._update_lag(group, self.depth())
        undelivered = self._scalar("SELECT count(*) FROM stream WHERE stream = ? AND seq > ?", (self.stream, last))
        return self._update_lag(group, undelivered + self.pending(group))

    def pending(self, group: str) -> int:
        return self._scalar("SELECT count(*) FROM pending WHERE stream = ? AND grp = ?", (self.stream, group))

    def dead_letters(self, limit: int = 100) -> list[dict]:
        rows = self._read(
            "SELECT seq, reason, payload, time, grp FROM dead WHERE stream = ? ORDER BY id LIMIT ?",
            (self.stream, limit),
        )
        return [{"reason": r, "payload": p, "time": t, "delivery_id": str(s), "group": g} for s, r, p, t, g in rows]

    def dead_letter_count(self) -> int:
        return self._scalar("SELECT count(*) FROM dead WHERE stream = ?", (self.stream,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"SQLiteQueue({str(self.path)!r}, stream={self.stream!r})"
