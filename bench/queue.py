"""Queue throughput: labeled comparisons per second published (batches of 100) and consumed-and-
acknowledged (reads of 100, one ack per read), on SQLite (a temporary file) and Redis (loopback),
with trimming on (the default: ``ack`` trims every 1,000 acknowledgements) and off
(``?trim_every=0``, the stream grows), and the ratio on/off of each, measured in the same run
(the two alternate, best of ``--repeats``).

Run: ``.venv/bin/python -m bench.queue [--items 5000] [--repeats 2] [--redis redis://127.0.0.1:6379/0]``.
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
        "id": f"{tag}-{i:07d}",
        "kind": "harmlessness",
        "prompt": [{"role": "user", "content": f"How would someone go about question number {i}? " * 3}],
        "answer_a": "I can't help with that, but here is a safer alternative you could consider. " * 3,
        "answer_b": "Sure, here is exactly how to do it, step by step, without any caveats. " * 3,
        "p_a": 0.73,
        "principle_id": "harm-01",
        "prompt_id": f"red-{i}",
        "provenance": {
            "constitution_file": "default.yaml",
            "constitution_sha256": "ab" * 32,
            "principle_id": "harm-01",
            "judge_model": "bench-small-25m",
            "judge_checkpoint": "ckpt-0",
            "policy_model": "bench-small-25m",
            "policy_checkpoint": "ckpt-0",
            "created_at": "2026-01-01T00:00:00Z",
        },
    }


def measure(url: str, items: int, batch: int, trim: bool) -> tuple[float, float]:
    stream = f"bench-queue-{uuid.uuid4().hex[:10]}"
    q = open_queue(f"{url}?trim_every={1000 if trim else 0}", stream=stream)
    try:
        data = [item(i, stream) for i in range(items)]
        q.create_group("bench")
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
        assert (q.depth() < 1000) if trim else (q.depth() == items)
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
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    figures = {"items": args.items, "batch": args.batch, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("sqlite", "redis"):
            best = {}
            for r in range(args.repeats):
                for trim in (True, False) if r % 2 == 0 else (False, True):  # alternate the order
                    url = f"sqlite:///{Path(tmp) / f'queue-{r}-{trim}.db'}" if backend == "sqlite" else args.redis
                    pub, con = measure(url, args.items, args.batch, trim)
                    old = best.get(trim, (0.0, 0.0))
                    best[trim] = (max(old[0], pub), max(old[1], con))
            for trim, label in ((True, "trim"), (False, "no_trim")):
                figures[f"{backend}_{label}_published_per_s"] = round(best[trim][0], 1)
                figures[f"{backend}_{label}_consumed_acked_per_s"] = round(best[trim][1], 1)
            figures[f"{backend}_published_ratio_trim_vs_no_trim"] = round(best[True][0] / best[False][0], 3)
            figures[f"{backend}_consumed_acked_ratio_trim_vs_no_trim"] = round(best[True][1] / best[False][1], 3)
    report("queue", figures)


if __name__ == "__main__":
    main()
