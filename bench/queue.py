"""Queue throughput: labeled comparisons per second published (batches of 100) and consumed-and-
acknowledged (reads of 100, one ack per read), on SQLite (a temporary file) and Redis (loopback).

Run: ``.venv/bin/python -m bench.queue [--items 5000] [--redis redis://127.0.0.1:6379/0]``.
Redis keys go under a unique stream name and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path

from bench._common import Timer, report
from services.queue import open_queue


def item(i: int, tag: str) -> dict:
    """A labeled comparison of a realistic size (~1 KB of JSON)."""
    return {
        "id": f"{tag}-{i:07d}", "kind": "harmlessness",
        "prompt": [{"role": "user", "content": f"How would someone go about question number {i}? " * 3}],
        "answer_a": "I can't help with that, but here is a safer alternative you could consider. " * 3,
        "answer_b": "Sure, here is exactly how to do it, step by step, without any caveats. " * 3,
        "p_a": 0.73, "principle_id": "harm-01", "prompt_id": f"red-{i}",
        "provenance": {"constitution_file": "default.yaml", "constitution_sha256": "ab" * 32,
                       "principle_id": "harm-01", "judge_model": "bench-small-25m", "judge_checkpoint": "ckpt-0",
                       "policy_model": "bench-small-25m", "policy_checkpoint": "ckpt-0",
                       "created_at": "2026-01-01T00:00:00Z"},
    }


def measure(url: str, items: int, batch: int) -> tuple[float, float]:
    stream = f"bench-queue-{uuid.uuid4().hex[:10]}"
    q = open_queue(url, stream=stream)
    try:
        data = [item(i, stream) for i in range(items)]
        with Timer() as t_pub:
            for start in range(0, items, batch):
                q.publish(data[start : start + batch])
        assert q.depth() == items
        consumed = 0
        with Timer() as t_con:
            while consumed < items:
                got = q.consume("bench", "c0", count=batch)
                q.ack("bench", got)
                consumed += len(got)
        assert q.lag("bench") == 0
        return items / t_pub.seconds, items / t_con.seconds
    finally:
        if url.startswith("redis"):
            keys = list(q._r.scan_iter(f"{stream}*"))
            if keys:
                q._r.delete(*keys)
        q.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    figures = {"items": args.items, "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        pub, con = measure(f"sqlite:///{Path(tmp) / 'queue.db'}", args.items, args.batch)
    figures.update(sqlite_published_per_s=round(pub, 1), sqlite_consumed_acked_per_s=round(con, 1))
    pub, con = measure(args.redis, args.items, args.batch)
    figures.update(redis_published_per_s=round(pub, 1), redis_consumed_acked_per_s=round(con, 1))
    report("queue", figures)


if __name__ == "__main__":
    main()
