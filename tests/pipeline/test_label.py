"""`cai label`: answers from the policy, soft labels from the judge, published to the queue with
provenance; helpfulness pairs mixed in; resumable; both queue backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from services.constitution import load_constitution
from services.engines.config import EngineConfig
from services.pipeline.label import LabelConfig, run_label
from services.queue import open_queue


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
        return
    stream = f"test-label-{uuid.uuid4().hex[:8]}"
    yield f"redis://127.0.0.1:6379/0?stream={stream}"
    import redis

    r = redis.Redis(host="127.0.0.1", port=6379, db=0)
    for key in r.scan_iter(f"{stream}*"):
        r.delete(key)


async def test_labels_reach_the_queue_traceable_to_their_principle(generation_server, judge_server, queue_url):
    cfg = LabelConfig(
        queue=queue_url,
        limit=3,
        samples_per_prompt=4,
        max_tokens=6,
        batch_size=2,
        generation=generation_server.address,
        judge=judge_server.address,
    )
    stats = await run_label(cfg, progress=False)
    assert stats["comparisons_published"] == 3 * 2  # adjacent pairs of 4 answers
    assert stats["helpfulness_published"] == 3
    queue = open_queue(queue_url)
    try:
        deliveries = queue.consume("check", "c1", count=100)
        items = [d.item for d in deliveries]
        queue.ack("check", deliveries)
    finally:
        queue.close()
    ai = [i for i in items if i["kind"] == "harmlessness"]
    helpful = [i for i in items if i["kind"] == "helpfulness"]
    assert len(ai) == 6 and len(helpful) == 3
    c = load_constitution()
    for item in ai:
        assert 0.0 <= item["p_a"] <= 1.0
        p = item["provenance"]
        assert p["constitution_sha256"] == c.sha256 and p["constitution_file"] == "default.yaml"
        # trace the label back to the sentence of the constitution that produced it
        assert c.judging_principle(item["principle_id"]).question
        assert p["judge_model"] and p["policy_checkpoint"] and p["prompt_id"] == item["prompt_id"]
    assert {i["p_a"] for i in helpful} <= {0.0, 1.0}
    again = await run_label(cfg, progress=False)
    assert again["comparisons_published"] == 0 and again["prompts_skipped_as_done"] == 3
    assert again["helpfulness_published"] == 0


def test_cli_bad_queue_url_is_a_clear_error(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "label",
            "--queue",
            "kafka://x",
            "--generation",
            "127.0.0.1:1",
            "--judge",
            "127.0.0.1:1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "kafka://x" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "label", "--no-progress"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and "queue: is required" in out.stderr


# --- pipelining, sharding, resuming, relabeling -------------------------------------------------


def _read_all(url: str) -> list[dict]:
    """Every harmlessness item in the queue's stream (a fresh consumer group reads it from the start)."""
    queue = open_queue(url)
    group, items = f"check-{uuid.uuid4().hex[:6]}", []
    try:
        while deliveries := queue.consume(group, "c1", count=500):
            items += [d.item for d in deliveries]
            queue.ack(group, deliveries)
    finally:
        queue.close()
    return [i for i in items if i["kind"] == "harmlessness"]


def _covers_exactly_once(items: list[dict], prompt_ids: list[str], pairs: int = 1):
    """Each prompt has all its comparisons, each id once, nothing else."""
    ids = Counter(i["id"] for i in items)
    assert max(ids.values()) == 1, [k for k, v in ids.items() if v > 1]
    per_prompt = Counter((i["prompt_id"], tuple(i["sample_indices"])) for i in items)
    assert set(per_prompt.values()) == {1}
    assert Counter(i["prompt_id"] for i in items) == Counter({p: pairs for p in prompt_ids})


def _prompt_ids(n: int) -> list[str]:
    from services.prompts import RED_TEAM, load_prompts

    return [p.id for p in load_prompts(RED_TEAM)[:n]]


def _label_cli(args: list[str], env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "label", "--no-progress", *args],
        env={**os.environ, **(env or {})},
        text=True,
        **popen,
    )


async def test_pipelined_run_publishes_the_same_ids_as_the_sequential_run(generation_server, judge_server, tmp_path):
    runs = {}
    for in_flight in (1, 4):
        url = f"sqlite:///{tmp_path / f'in-flight-{in_flight}.db'}"
        stats = await run_label(
            LabelConfig(
                queue=url,
                limit=8,
                batch_size=2,
                max_tokens=8,
                in_flight=in_flight,
                helpfulness_pairs="",
                generation=generation_server.address,
                judge=judge_server.address,
            ),
            progress=False,
        )
        assert stats["peak_in_flight"] == in_flight  # 4 batches: the pipelined run had them all in flight
        runs[in_flight] = _read_all(url)
        _covers_exactly_once(runs[in_flight], _prompt_ids(8))
    assert {i["id"] for i in runs[1]} == {i["id"] for i in runs[4]}


def test_two_shards_cover_every_prompt_exactly_once(generation_server, judge_server):
    # as the Indexed Job runs them: two pods at once, shard from JOB_COMPLETION_INDEX, on Redis
    stream = f"full_label-shards-{uuid.uuid4().hex[:8]}"
    url = f"redis://127.0.0.1:6379/0?stream={stream}"
    try:
        procs = [
            _label_cli(
                [
                    "--queue",
                    url,
                    "--generation",
                    generation_server.address,
                    "--judge",
                    judge_server.address,
                    "--limit",
                    "10",
                    "--batch-size",
                    "2",
                    "--max-tokens",
                    "8",
                    "--helpfulness-pairs",
                    "",
                ],
                env={"JOB_COMPLETION_INDEX": str(k), "CAI_NUM_SHARDS": "2"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for k in (0, 1)
        ]
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
        shares = [int(o[0].split("'s ")[1].split()[0]) for o in outs]  # "... of shard 0/2's 4 prompts ..."
        assert sum(shares) == 10 and min(shares) > 0, outs
        _covers_exactly_once(_read_all(url), _prompt_ids(10))
    finally:
        import redis

        r = redis.Redis(host="127.0.0.1", port=6379, db=0)
        for key in r.scan_iter(f"{stream}*"):
            r.delete(key)


async def test_killed_and_resumed_run_has_no_duplicates_or_losses(generation_server, judge_server, tmp_path):
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    args = [
        "--queue",
        url,
        "--generation",
        generation_server.address,
        "--judge",
        judge_server.address,
        "--limit",
        "40",
        "--batch-size",
        "1",
        "--in-flight",
        "3",
        "--max-tokens",
        "16",
        "--helpfulness-pairs",
        "",
    ]
    proc = _label_cli(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    queue = open_queue(url)
    try:
        deadline = time.time() + 120
        while queue.depth() < 2:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # mid-run, some batches in flight
        proc.wait()
        published_when_killed = queue.depth()
    finally:
        queue.close()
    assert 2 <= published_when_killed < 40
    again = await run_label(
        LabelConfig(
            queue=url,
            limit=40,
            batch_size=1,
            in_flight=3,
            max_tokens=16,
            helpfulness_pairs="",
            generation=generation_server.address,
            judge=judge_server.address,
        ),
        progress=False,
    )
    assert again["prompts_skipped_as_done"] == published_when_killed
    assert again["comparisons_published"] == 40 - published_when_killed
    _covers_exactly_once(_read_all(url), _prompt_ids(40))


async def test_changed_constitution_publishes_new_ids(tiny_model, tmp_path):
    import yaml

    from services.constitution import DEFAULT_CONSTITUTION

    edited = yaml.safe_load(Path(DEFAULT_CONSTITUTION).read_text())
    principle = edited["judging"][0]
    principle["question"] = principle["question"].rstrip("?") + ", taking the user's stated context into account?"
    copy = tmp_path / "edited.yaml"
    copy.write_text(yaml.safe_dump(edited, sort_keys=False))
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    base = dict(
        queue=url,
        limit=3,
        max_tokens=6,
        helpfulness_pairs="",
        policy=EngineConfig(model=tiny_model, kind="transformers"),
    )
    first = await run_label(LabelConfig(**base), progress=False)
    relabel = await run_label(LabelConfig(**base, constitution=str(copy)), progress=False)
    assert first["comparisons_published"] == relabel["comparisons_published"] == 3
    assert relabel["prompts_skipped_as_done"] == 0
    items = _read_all(url)  # the old labels stay, the new ones are added beside them
    by_constitution = Counter(i["provenance"]["constitution_sha256"] for i in items)
    assert sorted(by_constitution.values()) == [3, 3] and load_constitution(str(copy)).sha256 in by_constitution
    assert len({i["id"] for i in items}) == 6
    same_again = await run_label(LabelConfig(**base, constitution=str(copy)), progress=False)
    assert same_again["comparisons_published"] == 0 and same_again["prompts_skipped_as_done"] == 3


def test_a_failed_call_fails_the_job_naming_the_prompt(generation_server, judge_server, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": f"ok-{k}", "messages": [{"role": "user", "content": f"Question {k}?"}]} for k in range(3)]
    rows.insert(1, {"id": "far-too-long", "messages": [{"role": "user", "content": "word " * 50_000}]})
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = _label_cli(
        [
            "--queue",
            f"sqlite:///{tmp_path / 'q.db'}",
            "--prompts",
            str(prompts),
            "--batch-size",
            "1",
            "--max-tokens",
            "4",
            "--helpfulness-pairs",
            "",
            "--generation",
            generation_server.address,
            "--judge",
            judge_server.address,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out, err)
    assert "far-too-long" in err and "INVALID_ARGUMENT" in err and "Traceback" not in err, err
