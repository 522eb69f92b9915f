"""`cai label`: answers from the policy, soft labels from the judge, published to the queue with
provenance; helpfulness pairs mixed in; resumable; both queue backends."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from services.constitution import load_constitution
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
    cfg = LabelConfig(queue=queue_url, limit=3, samples_per_prompt=4, max_tokens=6, batch_size=2,
                      generation=generation_server.address, judge=judge_server.address)
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
    out = subprocess.run([sys.executable, "-m", "services.cli", "label", "--queue", "kafka://x", "--generation",
                          "127.0.0.1:1", "--judge", "127.0.0.1:1", "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "kafka://x" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "services.cli", "label", "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "queue: is required" in out.stderr
