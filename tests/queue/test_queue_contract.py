"""The queue contract, run unchanged on both backends (SQLite file, Redis Streams on loopback).

Each Redis test uses its own stream name and deletes its keys afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.queue import MalformedItem, QueueError, open_queue, validate_comparison

REPO = Path(__file__).resolve().parents[2]
REDIS = "redis://127.0.0.1:6379/0"


def comparison(i: int, tag: str = "c", **changes) -> dict:
    item = {
        "id": f"{tag}-{i:05d}",
        "kind": "harmlessness",
        "prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": f"question {i}"}],
        "answer_a": f"safe answer {i}",
        "answer_b": f"harmful answer {i}",
        "p_a": 0.75,
        "principle_id": "p-harm",
        "provenance": {
            "constitution_sha256": "0" * 64,
            "judge_model": "tiny",
            "policy_checkpoint": "ckpt-1",
            "created_at": "2026-01-01T00:00:00Z",
            "extra": "kept",
        },
        "category": "test",
    }
    item.update(changes)
    return item


class Backend:
    """Opens queues on one backend and stream (several, like consumers in other processes would)."""

    def __init__(self, name: str, url: str, stream: str):
        self.name, self.url, self.stream = name, url, stream
        self.opened = []

    def open(self, **params):
        """A queue on this backend's stream; ``params`` go into the URL query (``trim_every=10``)."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        q = open_queue(f"{self.url}?{query}" if query else self.url, stream=self.stream)
        self.opened.append(q)
        return q

    @property
    def start(self) -> str:
        return "0" if self.name == "sqlite" else "0-0"


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path):
    stream = f"test-queue-{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        b = Backend("sqlite", f"sqlite:///{tmp_path / 'queue.db'}", stream)
    else:
        import redis

        r = redis.Redis.from_url(REDIS)
        try:
            r.ping()
        except redis.ConnectionError:
            pytest.skip(f"no Redis at {REDIS}")
        b = Backend("redis", REDIS, stream)
    yield b
    for q in b.opened:
        q.close()
    if b.name == "redis":
        keys = list(r.scan_iter(f"{stream}*"))
        if keys:
            r.delete(*keys)
        assert not list(r.scan_iter(f"{stream}*"))
        r.close()


@pytest.fixture
def queue(backend):
    return backend.open()


def drain(q, group: str, consumer: str, count: int = 64) -> list:
    out = []
    while batch := q.consume(group, consumer, count):
        out += batch
    return out


def counter(name: str, backend: str) -> float:
    return REGISTRY.get_sample_value(name, {"backend": backend}) or 0.0


# -- the item contract (backend-independent) ----------------------------------------------------


@pytest.mark.parametrize(
    "change, field",
    [
        ({"id": ""}, "id"),
        ({"id": 7}, "id"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "prompt"),
        ({"prompt": [{"role": "user"}]}, "prompt[0]"),
        ({"answer_a": None}, "answer_a"),
        ({"p_a": 1.5}, "p_a"),
        ({"p_a": -0.1}, "p_a"),
        ({"p_a": float("nan")}, "p_a"),
        ({"p_a": True}, "p_a"),
        ({"p_a": "0.5"}, "p_a"),
        ({"principle_id": None}, "principle_id"),
        ({"provenance": "x"}, "provenance"),
        (
            {"provenance": {"constitution_sha256": "", "judge_model": "", "policy_checkpoint": ""}},
            "provenance.created_at",
        ),
        ({"kind": "other"}, "kind"),
    ],
)
def test_validate_comparison_names_the_field(change, field):
    assert validate_comparison(comparison(0)) is None
    assert validate_comparison(comparison(0, kind="helpfulness", p_a=1, principle_id="")) is None
    reason = validate_comparison(comparison(0, **change))
    assert reason is not None and reason.startswith(f"{field}: ")
    for key in ("p_a", "provenance"):
        item = comparison(0)
        del item[key]
        assert validate_comparison(item).startswith(f"{key}: is required")
    assert validate_comparison([1]).startswith("item: ")


def test_open_queue_rejects_bad_urls(tmp_path):
    for url in [
        "",
        "queue.db",
        "http://host/x",
        "sqlite://",
        "sqlite:///",
        "redis://host:port/0",
        "redis:///0",
        f"sqlite:///{tmp_path}/q.db?colour=blue",
    ]:
        with pytest.raises(QueueError, match="queue URL|sqlite|redis"):
            open_queue(url)
    with pytest.raises(QueueError, match="cannot reach Redis.*\\*\\*\\*"):
        open_queue("redis://:secret@127.0.0.1:1/0")
    q = open_queue(f"sqlite:///{tmp_path / 'sub' / 'q.db'}?stream=labels")
    assert q.stream == "labels" and (tmp_path / "sub" / "q.db").exists()
    q.close()


# -- the contract, on every backend -----------------------------------------------------------


def test_publish_consume_ack_round_trip(queue, backend):
    items = [comparison(i) for i in range(10)]
    assert queue.publish(items) == 10
    assert queue.is_published(items[0]["id"]) and not queue.is_published("nope")
    got = queue.consume("trainer", "t0", count=64)
    assert [d.item for d in got] == items  # in order, unchanged, extra keys kept
    assert all(d.attempts == 1 and isinstance(d.delivery_id, str) for d in got)
    assert not queue.is_done("trainer", items[0]["id"])
    before = counter("cai_queue_consumed_total", backend.name)
    assert queue.ack("trainer", got) == 10
    assert queue.ack("trainer", got) == 0  # acknowledging twice is harmless
    assert counter("cai_queue_consumed_total", backend.name) - before == 10
    assert all(queue.is_done("trainer", it["id"]) for it in items)
    assert queue.consume("trainer", "t0") == []
    assert queue.pending("trainer") == 0 and queue.lag("trainer") == 0
    # another group sees everything again
    assert [d.item["id"] for d in drain(queue, "eval", "e0")] == [it["id"] for it in items]


def test_publish_is_idempotent_and_validates_first(queue, backend):
    before = counter("cai_queue_published_total", backend.name)
    assert queue.publish([comparison(1), comparison(1)]) == 1  # repeat inside a batch
    assert queue.publish([comparison(1), comparison(2)]) == 1  # repeat across batches
    assert queue.publish([comparison(1, p_a=0.1)]) == 0  # the id decides, not the content
    assert queue.depth() == 2
    assert counter("cai_queue_published_total", backend.name) - before == 2
    with pytest.raises(MalformedItem, match=r"item 1: p_a: .*1\.5") as err:
        queue.publish([comparison(3), comparison(4, p_a=1.5), comparison(5)])
    assert (err.value.index, err.value.field) == (1, "p_a")
    with pytest.raises(MalformedItem, match="item 0: item: is not JSON-serialisable"):
        queue.publish([comparison(6, extra={1, 2})])
    assert queue.depth() == 2 and not queue.is_published(comparison(3)["id"])  # nothing of the batch
    assert [d.item["id"] for d in drain(queue, "g", "c")] == [comparison(1)["id"], comparison(2)["id"]]
    assert [d.item["p_a"] for d in drain(queue, "g2", "c")] == [0.75, 0.75]


def test_unacknowledged_items_are_claimed_by_another_consumer(backend):
    a, b = backend.open(), backend.open()
    items = [comparison(i) for i in range(12)]
    a.publish(items)
    taken = a.consume("g", "dies", count=5)  # ... and never acknowledges
    assert len(taken) == 5
    assert b.claim_stale("g", "survivor", min_idle_ms=60_000) == []  # not idle long enough yet
    time.sleep(0.06)
    before = counter("cai_queue_redelivered_total", backend.name)
    claimed = b.claim_stale("g", "survivor", min_idle_ms=50)
    assert [d.item for d in claimed] == [d.item for d in taken]
    assert [d.delivery_id for d in claimed] == [d.delivery_id for d in taken]
    assert all(d.attempts == 2 for d in claimed)
    assert counter("cai_queue_redelivered_total", backend.name) - before == 5
    rest = drain(b, "g", "survivor")
    b.ack("g", claimed + rest)
    assert sorted(d.item["id"] for d in claimed + rest) == [it["id"] for it in items]  # nothing lost
    assert b.pending("g") == 0 and b.lag("g") == 0
    time.sleep(0.06)
    assert b.claim_stale("g", "other", min_idle_ms=50) == []
    assert b.claim_stale("missing-group", "x", min_idle_ms=0) == []


def test_items_of_a_consumer_killed_in_another_process_are_recovered(backend):
    q = backend.open()
    items = [comparison(i) for i in range(20)]
    q.publish(items)
    script = (
        "import json, sys, time\n"
        "from services.queue import open_queue\n"
        f"q = open_queue({backend.url!r}, stream={backend.stream!r})\n"
        "taken = q.consume('g', 'victim', count=7)\n"
        "print(json.dumps([d.item['id'] for d in taken]), flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        taken = json.loads(proc.stdout.readline())
    finally:
        proc.kill()  # SIGKILL: no cleanup, no acknowledgement
        proc.wait()
    assert len(taken) == 7 and q.pending("g") == 7
    time.sleep(0.03)
    claimed = q.claim_stale("g", "survivor", min_idle_ms=20)
    assert [d.item["id"] for d in claimed] == taken and all(d.attempts == 2 for d in claimed)
    rest = drain(q, "g", "survivor")
    q.ack("g", claimed + rest)
    assert sorted(d.item["id"] for d in claimed + rest) == [it["id"] for it in items]
    assert all(q.is_done("g", it["id"]) for it in items)
    assert q.pending("g") == 0 and q.lag("g") == 0


def test_redelivery_of_a_done_id_is_recognised_and_skipped(queue, backend):
    item = comparison(1)
    queue.publish([item, comparison(2)])
    queue.ack("g", queue.consume("g", "c"))
    before = counter("cai_queue_redelivered_total", backend.name)
    queue.publish_raw([json.dumps(item)])  # a foreign producer repeats a done comparison
    assert queue.consume("g", "c") == []
    assert queue.pending("g") == 0 and queue.lag("g") == 0 and queue.dead_letter_count() == 0
    # rewinding the group re-reads the stream: everything is done, nothing is delivered again
    queue.seek("g", backend.start)
    assert queue.lag("g") == 3
    assert queue.consume("g", "c") == []
    assert queue.lag("g") == 0
    assert counter("cai_queue_redelivered_total", backend.name) - before == 4
    # a group that has not done it gets it (twice: at-least-once, the consumer keys by id)
    assert [d.item["id"] for d in drain(queue, "other", "c")] == [item["id"], comparison(2)["id"], item["id"]]


def test_malformed_payloads_are_dead_lettered_with_the_reason(queue, backend):
    no_p_a = comparison(2)
    del no_p_a["p_a"]
    bad = ["{not json", json.dumps(no_p_a), json.dumps(comparison(3, p_a=1.5)), json.dumps([1, 2])]
    queue.publish([comparison(1)])
    queue.publish_raw(bad)
    queue.publish([comparison(4)])
    before = counter("cai_queue_dead_lettered_total", backend.name)
    got = drain(queue, "g", "c")
    assert [d.item["id"] for d in got] == [comparison(1)["id"], comparison(4)["id"]]
    queue.ack("g", got)
    assert queue.pending("g") == 0 and queue.lag("g") == 0
    dead = queue.dead_letters()
    assert [d["payload"] for d in dead] == bad  # the original text, in order
    assert "JSON" in dead[0]["reason"]
    assert "p_a" in dead[1]["reason"] and "required" in dead[1]["reason"]
    assert "p_a" in dead[2]["reason"] and "1.5" in dead[2]["reason"]
    assert "item" in dead[3]["reason"]
    assert all(isinstance(d["time"], float) and d["time"] > 1e9 and d["group"] == "g" for d in dead)
    assert queue.dead_letter_count() == 4
    assert counter("cai_queue_dead_lettered_total", backend.name) - before == 4
    # another group finds the same entries malformed: still one dead letter per entry
    assert len(drain(queue, "g2", "c")) == 2
    assert queue.dead_letter_count() == 4 and queue.pending("g2") == 2
    assert len(queue.dead_letters(limit=2)) == 2


def test_depth_lag_and_pending(queue):
    queue.publish([comparison(i) for i in range(10)])
    assert queue.depth() == 10
    assert queue.lag("g") == 10 and queue.pending("g") == 0  # group not created yet: everything
    first = queue.consume("g", "c", count=4)
    assert queue.pending("g") == 4 and queue.lag("g") == 10  # delivered, not acknowledged
    queue.ack("g", first[:2])
    assert queue.pending("g") == 2 and queue.lag("g") == 8
    rest = queue.consume("g", "c", count=100)
    assert len(rest) == 6 and queue.pending("g") == 8 and queue.lag("g") == 8
    queue.ack("g", first[2:] + rest)
    assert queue.pending("g") == 0 and queue.lag("g") == 0 and queue.depth() == 10
    queue.publish_raw(["junk"])
    assert queue.depth() == 11 and queue.lag("g") == 1
    assert queue.consume("g", "c") == [] and queue.lag("g") == 0
    assert REGISTRY.get_sample_value("cai_queue_lag", {"backend": queue.backend, "group": "g"}) == 0


def test_position_save_and_restore(queue, backend):
    items = [comparison(i) for i in range(10)]
    queue.publish(items)
    assert queue.position("g") == backend.start
    queue.ack("g", queue.consume("g", "c", count=4))
    saved = queue.position("g")
    assert saved and saved != backend.start
    queue.ack("g", queue.consume("g", "c", count=3))
    assert queue.position("g") != saved
    # a fresh group restored at the saved position resumes exactly after the 4th item
    queue.seek("restored", saved)
    assert queue.position("restored") == saved and queue.lag("restored") == 6
    assert [d.item["id"] for d in drain(queue, "restored", "c")] == [it["id"] for it in items[4:]]
    # the original group rewound: the 3 items it did since are done, only the last 3 come
    queue.seek("g", saved)
    assert queue.position("g") == saved
    assert [d.item["id"] for d in drain(queue, "g", "c")] == [it["id"] for it in items[7:]]
    for bad in ["", "abc", "1-2-3", "-5"]:
        with pytest.raises(QueueError, match="position"):
            queue.seek("g", bad)


def test_two_consumers_never_receive_the_same_new_item(backend):
    n = 600
    backend.open().publish([comparison(i) for i in range(n)])
    got: dict[str, list[str]] = {}
    shared = backend.open()  # two threads share one queue object, two have their own
    queues = [shared, shared, backend.open(), backend.open()]
    start = threading.Barrier(len(queues))

    def work(k: int) -> None:
        q, mine = queues[k], got.setdefault(f"c{k}", [])
        start.wait()
        while batch := q.consume("g", f"c{k}", count=7):
            mine += [d.item["id"] for d in batch]
            time.sleep(0.001)  # "train" on the batch, as a real consumer would
            q.ack("g", batch)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(queues))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    everything = [cid for ids in got.values() for cid in ids]
    assert len(everything) == len(set(everything)) == n
    assert sum(1 for ids in got.values() if ids) >= 2  # they did share the work
    assert shared.pending("g") == 0 and shared.lag("g") == 0


def test_consume_waits_up_to_block_ms(queue):
    t0 = time.monotonic()
    assert queue.consume("g", "c", block_ms=150) == []
    assert 0.12 <= time.monotonic() - t0 < 2
    threading.Timer(0.1, lambda: open_queue(queue_url(queue), stream=queue.stream).publish([comparison(1)])).start()
    t0 = time.monotonic()
    got = queue.consume("g", "c", block_ms=3000)
    assert [d.item["id"] for d in got] == [comparison(1)["id"]] and time.monotonic() - t0 < 2.5


def queue_url(q) -> str:
    return f"sqlite:///{q.path}" if q.backend == "sqlite" else REDIS


# -- bounded: trimming, the dedup window, the dead-letter cap (both backends) ------------------


def test_entries_acknowledged_by_every_group_are_trimmed(backend):
    q = backend.open(trim_every=0)  # trimmed only when asked, to see each step
    q.create_group("a")
    q.create_group("b")
    items = [comparison(i) for i in range(20)]
    q.publish(items)
    q.ack("a", drain(q, "a", "a0"))
    assert q.trim() == 0 and q.depth() == 20  # b has not read anything: everything stays
    first = q.consume("b", "b0", count=8)
    q.ack("b", first[:3])  # 5 pending for b, from the 4th item on
    before = counter("cai_queue_trimmed_total", backend.name)
    assert q.trim() == 3 and q.depth() == 17
    assert counter("cai_queue_trimmed_total", backend.name) - before == 3
    assert REGISTRY.get_sample_value("cai_queue_depth", {"backend": backend.name}) == 17
    assert q.lag("a") == 0 and q.lag("b") == 17 and q.pending("b") == 5
    time.sleep(0.03)  # the pending ones are still there to be claimed: nothing unacknowledged is lost
    claimed = q.claim_stale("b", "b1", min_idle_ms=20)
    assert [d.item["id"] for d in claimed] == [d.item["id"] for d in first[3:]]
    q.ack("b", claimed)
    assert q.trim() == 5 and q.depth() == 12 and q.lag("b") == 12
    assert [d.item["id"] for d in drain(q, "b", "b0")] == [it["id"] for it in items[8:]]
    assert q.lag("b") == 12  # delivered, pending
    q.ack("b", q.claim_stale("b", "b0", min_idle_ms=0, count=100))
    assert q.trim() == 12 and q.depth() == 0 and q.lag("a") == 0 and q.lag("b") == 0
    # positions survive trimming: saved, more published, restored in a new group
    saved = q.position("a")
    q.publish([comparison(i) for i in range(20, 25)])
    q.seek("late", saved)
    assert q.lag("late") == 5
    assert [d.item["id"] for d in drain(q, "late", "c")] == [comparison(i)["id"] for i in range(20, 25)]


def test_ack_trims_every_trim_every_acknowledgements(backend):
    q = backend.open(trim_every=10)
    q.create_group("g")
    q.publish([comparison(i) for i in range(35)])
    q.ack("g", q.consume("g", "c", count=5))
    assert q.depth() == 35  # 5 acknowledged: not yet
    q.ack("g", q.consume("g", "c", count=5))
    assert q.depth() == 25  # 10 acknowledged: trimmed
    q.ack("g", q.consume("g", "c", count=5))
    assert q.depth() == 25  # 15: not yet
    q.ack("g", q.consume("g", "c", count=5))
    assert q.depth() == 15  # 20 acknowledged: trimmed again
    q.ack("g", drain(q, "g", "c"))
    assert q.depth() == 0 and q.lag("g") == 0


def test_a_stream_without_a_group_is_not_trimmed_and_a_group_created_before_publishing_reads_everything(backend):
    q = backend.open(trim_every=1)
    q.publish([comparison(i) for i in range(5)])
    assert q.trim() == 0 and q.depth() == 5
    q.create_group("trainer")
    q.create_group("trainer")  # idempotent
    q.create_group("eval")  # created before the next publish
    q.publish([comparison(i) for i in range(5, 10)])
    q.ack("trainer", drain(q, "trainer", "t"))  # trims after each acknowledgement
    assert q.depth() == 10  # eval holds them
    assert len(drain(q, "eval", "e")) == 10
    q.delete_group("eval")  # an abandoned group no longer holds the stream
    assert q.pending("eval") == 0
    assert q.trim() == 10 and q.depth() == 0
    q.create_group("late")  # created after trimming: it sees what is left (nothing)
    assert q.consume("late", "l") == [] and q.lag("late") == 0


def test_a_comparison_republished_within_the_window_is_dropped_and_after_2w_appended_again(backend):
    window = 0.4
    q = backend.open(dedup_window_s=window, trim_every=0)
    q.create_group("g")
    t0 = time.monotonic()
    assert q.publish([comparison(1)]) == 1
    assert q.publish([comparison(1)]) == 0 and q.is_published(comparison(1)["id"])
    got = q.consume("g", "c")
    q.ack("g", got)
    assert q.is_done("g", comparison(1)["id"])
    q.publish_raw([json.dumps(comparison(1))])  # a foreign duplicate within the window: skipped
    assert q.consume("g", "c") == [] and q.lag("g") == 0
    assert time.monotonic() - t0 < window  # all of that was within W
    time.sleep(2 * window + 0.05)
    assert not q.is_published(comparison(1)["id"]) and not q.is_done("g", comparison(1)["id"])
    q.trim()  # forgets the old ids (SQLite rows; Redis sets expire by themselves)
    assert q.publish([comparison(1)]) == 1  # appended again: the consumer's own id set drops it
    assert [d.item["id"] for d in q.consume("g", "c")] == [comparison(1)["id"]]


def test_the_dead_letter_stream_keeps_the_newest_dead_letter_max(backend):
    q = backend.open(dead_letter_max=3)
    q.publish_raw([f"junk {i}" for i in range(5)])
    before = counter("cai_queue_dead_lettered_total", backend.name)
    assert q.consume("g", "c") == []
    assert counter("cai_queue_dead_lettered_total", backend.name) - before == 5  # every one counted
    assert q.dead_letter_count() == 3
    assert [d["payload"] for d in q.dead_letters()] == ["junk 2", "junk 3", "junk 4"]
    assert q.trim() == 5 and q.depth() == 0  # dead-lettered entries are finished: trimmed


@pytest.mark.parametrize(
    "query, message",
    [
        ("dedup_window_s=abc", "dedup_window_s must be a number"),
        ("dedup_window_s=0", "dedup_window_s must be > 0"),
        ("trim_every=1.5", "trim_every must be a whole number"),
        ("trim_every=-1", "trim_every must be >= 0"),
        ("dead_letter_max=0", "dead_letter_max must be >= 1"),
        ("trim_interval_s=nan", "trim_interval_s must be a finite number"),
        ("dedup_window_s=inf", "dedup_window_s must be a finite number"),
    ],
)
def test_open_queue_rejects_bad_retention_parameters(tmp_path, query, message):
    for url in (f"sqlite:///{tmp_path / 'q.db'}?{query}", f"redis://127.0.0.1:1/0?{query}"):
        with pytest.raises(QueueError, match=message) as err:
            open_queue(url)
        assert "queue URL" in str(err.value)
    q = open_queue(f"sqlite:///{tmp_path / 'q.db'}?dedup_window_s=60&trim_every=5&stream=x")
    assert (q.retention.dedup_window_s, q.retention.trim_every, q.stream) == (60.0, 5, "x")
    q.close()
