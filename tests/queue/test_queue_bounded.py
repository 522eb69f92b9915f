"""The queue stays bounded under a long run: many thousands of comparisons published, consumed and
acknowledged, and the memory of the queue's own keys (Redis) or rows (SQLite) stays flat.

Redis is shared with other engineers, so the figure is ``MEMORY USAGE`` of this test's own keys
(the stream and the id sets), not the server's ``used_memory``.
"""

from __future__ import annotations

import time
import uuid

import pytest

from services.queue import open_queue
from tests.ports import free_port

REDIS = "redis://127.0.0.1:6379/0"
ROUNDS, PER_ROUND, BATCH = 5, 4000, 250
WINDOW_S = 0.3
TRIM_EVERY = 500


def comparison(i: int, tag: str) -> dict:
    return {
        "id": f"{tag}-{i:07d}",
        "prompt": [{"role": "user", "content": f"question {i} " * 8}],
        "answer_a": f"a safe answer to question {i} " * 6,
        "answer_b": f"a harmful answer to question {i} " * 6,
        "p_a": 0.7,
        "principle_id": "p-harm",
        "provenance": {
            "constitution_sha256": "0" * 64,
            "judge_model": "tiny",
            "policy_checkpoint": "ckpt-1",
            "created_at": "2026-01-01T00:00:00Z",
        },
    }


def run_rounds(q, tag: str, measure) -> tuple[list[int], list[tuple[int, int]]]:
    """ROUNDS rounds of PER_ROUND publish + consume + ack (a trainer's loop).

    Returns the bytes at the end of each round (the id sets still hold the round's recent ids) and
    (bytes, stream length) once the round's ids are past the window.
    """
    q.create_group("trainer")  # the trainer's group exists before anything is published
    peaks, figures, n = [], [], 0
    for _ in range(ROUNDS):
        for start in range(n, n + PER_ROUND, BATCH):
            batch = [comparison(i, tag) for i in range(start, start + BATCH)]
            assert q.publish(batch) == BATCH
            assert q.publish(batch[-20:]) == 0  # a restarted producer repeats itself: dropped
            got = q.consume("trainer", "t0", count=BATCH)
            assert len(got) == BATCH
            q.ack("trainer", got)
        n += PER_ROUND
        peaks.append(measure())
        time.sleep(2 * WINDOW_S)  # the id sets of this round are past their window
        figures.append((measure(), q.depth()))
    assert q.lag("trainer") == 0 and q.pending("trainer") == 0
    return peaks, figures


def assert_flat(peaks: list[int], figures: list[tuple[int, int]], what: str) -> None:
    sizes = [b for b, _ in figures]
    lengths = [n for _, n in figures]
    # Unbounded, round k holds k rounds of entries and ids (round 5: 5x round 1); bounded, what is
    # left once a round's ids are past the window is the same small amount every round ...
    assert max(sizes) <= sizes[0] + 16 * 1024, f"{what} grew round after round: {sizes}"
    assert max(lengths) < TRIM_EVERY, f"stream not trimmed: lengths {lengths}"
    # ... and at the end of a round (ids of the last W..2W still held) it does not climb either.
    assert max(peaks) <= 3 * peaks[0] + 16 * 1024, f"{what} at the end of each round grew: {peaks}"


def test_redis_memory_of_the_queue_stays_flat_over_20000_comparisons():
    import redis

    r = redis.Redis.from_url(REDIS, decode_responses=True)
    try:
        r.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS}")
    stream = f"queue-bounded-{uuid.uuid4().hex[:10]}"
    q = open_queue(f"{REDIS}?dedup_window_s={WINDOW_S}&trim_every={TRIM_EVERY}", stream=stream)

    def measure() -> int:
        return sum(r.memory_usage(k, samples=0) or 0 for k in r.scan_iter(f"{stream}*", count=1000))

    try:
        peaks, figures = run_rounds(q, stream, measure)
        print(
            f"redis MEMORY USAGE of the queue's keys at the end of each round of {PER_ROUND}: {peaks}; "
            f"(bytes, stream length) {2 * WINDOW_S} s later: {figures}"
        )
        assert_flat(peaks, figures, "Redis memory of the queue's keys")
    finally:
        q.close()
        keys = list(r.scan_iter(f"{stream}*"))
        if keys:
            r.delete(*keys)
        r.close()


def test_sqlite_rows_of_the_queue_stay_flat_over_20000_comparisons(tmp_path):
    q = open_queue(f"sqlite:///{tmp_path / 'q.db'}?dedup_window_s={WINDOW_S}&trim_every={TRIM_EVERY}", stream="bounded")

    def measure() -> int:  # bytes of rows kept: payloads plus ids (stream, published, done)
        q.trim()  # the id rows past the window go at the next trim; count what a trim leaves
        return sum(
            q._scalar(sql) or 0
            for sql in (
                "SELECT sum(length(payload)) FROM stream",
                "SELECT sum(length(comparison_id) + 16) FROM published",
                "SELECT sum(length(comparison_id) + 16) FROM done",
            )
        )

    try:
        peaks, figures = run_rounds(q, "bounded", measure)
        print(
            f"sqlite bytes of rows at the end of each round of {PER_ROUND}: {peaks}; "
            f"(bytes, stream length) {2 * WINDOW_S} s later: {figures}"
        )
        assert_flat(peaks, figures, "SQLite rows of the queue")
        # the file reuses the pages freed by trimming: it does not grow with the rounds either
        assert (tmp_path / "q.db").stat().st_size < 8 * 1024 * 1024
    finally:
        q.close()


def test_redis_at_maxmemory_refuses_a_whole_publish_with_a_clear_error_and_the_trainer_still_drains_it(tmp_path):
    """Redis's --maxmemory (noeviction) is the cap while a group lags: a publish past it fails as a
    whole with an error naming the stream (nothing half-published, nothing dropped); the consumer
    can still acknowledge, which trims, and then publishing works again."""
    import subprocess

    import redis

    from services.queue import QueueError

    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory",
            "3mb",
            "--maxmemory-policy",
            "noeviction",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        q = open_queue(f"redis://127.0.0.1:{port}/0?trim_every=100", stream="capped")
        q.create_group("trainer")
        published, n = 0, 0
        with pytest.raises(QueueError, match="maxmemory") as err:
            while n < 100_000:
                published += q.publish([comparison(i, "capped") for i in range(n, n + 100)])
                n += 100
        assert "'capped'" in str(err.value)  # names the stream
        assert published == n > 0 and q.depth() == published  # the refused batch: none of it
        assert not q.is_published(comparison(n, "capped")["id"])
        taken = 0
        while batch := q.consume("trainer", "t0", count=100):
            q.ack("trainer", batch)  # allowed over maxmemory; trims every 100
            taken += len(batch)
        assert taken == published and q.depth() < 100
        assert q.publish([comparison(i, "capped") for i in range(n, n + 100)]) == 100  # room again
        q.close()
        r.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_comparison_republished_after_the_window_is_not_trained_on_twice(tmp_path):
    """The README's guarantee past the window W: the queue appends the id again, and the trainer's
    own durable id set drops it (acknowledged, not added to its data, no new training)."""
    from services.common.jsonl import read_rows
    from services.models.tiny import build_tiny_model
    from services.trainer.config import TrainerConfig
    from services.trainer.worker import TrainerWorker
    from services.training.reward_config import RewardRunConfig

    url = f"sqlite:///{tmp_path / 'q.db'}?dedup_window_s={WINDOW_S}&trim_every=1"  # the trainer trims as it acks
    q = open_queue(url)
    q.create_group("trainer")
    items = [comparison(i, "late") for i in range(10)]
    assert q.publish(items) == 10
    cfg = TrainerConfig(
        queue=url,
        group="trainer",
        consumer="t0",
        work_dir=str(tmp_path / "work"),
        reward=RewardRunConfig(model=str(build_tiny_model(tmp_path / "rm", reward=True)), max_steps=1, batch_size=4),
        train_every=10**6,
        exit_when_idle_seconds=0.5,
    )
    TrainerWorker(cfg).loop()  # takes the 10, trains once on them
    time.sleep(2 * WINDOW_S + 0.05)
    assert q.publish(items[:3]) == 3  # past the window: the queue appends them again ...
    TrainerWorker(cfg).loop()  # ... the trainer (restarted) gets them and drops them by id
    ids = [row["id"] for row in read_rows(tmp_path / "work" / "data" / "comparisons.jsonl")]
    assert sorted(ids) == sorted(it["id"] for it in items)  # each once
    assert q.lag("trainer") == 0 and q.pending("trainer") == 0
    checkpoints = list((tmp_path / "work" / "checkpoints").glob("reward-*"))
    assert len(checkpoints) == 1  # no training on the duplicates
    q.close()
