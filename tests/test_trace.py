"""`cai trace ID` on data a tiny run writes: `cai label` into a SQLite queue and `cai sl-data` into
a folder (in-process services on the tiny model, transformers engine), then traced back to the
constitution sentence (verified by its hash), the judge and the prompt file and line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.common.jsonl import read_rows
from services.constitution import DEFAULT_CONSTITUTION, load_constitution
from tests.conftest import REPO

PROMPTS = [
    {"id": f"trace-{i}", "messages": [{"role": "user", "content": f"How do I pick lock number {i}?"}]} for i in range(3)
]


def cai(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("trace-run")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    queue = f"sqlite:///{root / 'queue.db'}"
    common = [
        "--model",
        tiny_model,
        "--engine",
        "transformers",
        "--prompts",
        str(prompts),
        "--max-tokens",
        "6",
        "--no-progress",
    ]
    label = cai("label", "--queue", queue, "--helpfulness-pairs", "", "--limit", "2", *common)
    assert label.returncode == 0, label.stderr[-3000:]
    sl = cai(
        "sl-data",
        "--out",
        str(root / "sl_data"),
        "--helpfulness",
        "",
        "--rounds",
        "2",
        "--limit",
        "1",
        "--split",
        "all",
        *common,
    )
    assert sl.returncode == 0, sl.stderr[-3000:]
    return root, queue, prompts


def test_trace_label_prints_the_constitution_sentence_the_judge_and_the_prompt_line(tiny_run):
    root, queue, prompts = tiny_run
    from services.queue import open_queue

    q = open_queue(queue)
    q.create_group("t")
    label = q.consume("t", "t", 1)[0].item
    q.delete_group("t")
    q.close()
    out = cai("trace", label["id"][:12], "--queue", queue, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)[0]
    constitution = load_constitution(DEFAULT_CONSTITUTION)  # the in-process judge's (the record names the file)
    assert label["provenance"]["constitution_sha256"] == constitution.sha256
    assert info["id"] == label["id"] and info["record"] == "label"
    assert info["constitution"]["sha256"] == constitution.sha256 and "verified" in info["constitution"]["note"]
    assert info["principles"][0]["question"] == constitution.judging_principle(label["principle_id"]).question
    assert info["judge"]["judge_model"] and info["judge"]["judge_config_sha256"] and info["judge"]["seed"] == 0
    line = [p["id"] for p in PROMPTS].index(label["prompt_id"]) + 1
    assert (info["prompt"]["file"], info["prompt"]["line"]) == (str(prompts), line)
    assert info["prompt"]["note"] == "file sha256 verified"
    text = cai("trace", label["id"], "--queue", queue)
    assert text.returncode == 0 and constitution.judging_principle(label["principle_id"]).question in text.stdout
    assert f"{prompts}:{line}" in text.stdout


def test_trace_sft_row_prints_the_critique_principle_and_the_prompt_line(tiny_run):
    root, _, prompts = tiny_run
    rows = [r for f in sorted((root / "sl_data").glob("*.jsonl")) for r in read_rows(f) if r.get("round") == 2]
    row = rows[0]
    out = cai("trace", f"{row['prompt_id']}/r2", "--in", str(root), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)[0]
    constitution = load_constitution(DEFAULT_CONSTITUTION)
    assert row["provenance"]["constitution_sha256"] == constitution.sha256
    principle = constitution.critique_principle(row["principle_id"])
    assert info["record"] == "sft_row" and info["round"] == 2
    assert info["principles"] == [
        {"id": row["principle_id"], "critique": principle.critique, "revision": principle.revision}
    ]
    assert "verified" in info["constitution"]["note"]
    assert info["prompt"]["file"] == str(prompts) and info["prompt"]["line"] == 1


def test_trace_unknown_id_is_a_clear_error(tiny_run):
    root, queue, _ = tiny_run
    out = cai("trace", "no-such-id-anywhere", "--in", str(root), "--queue", queue)
    assert out.returncode == 1 and "no label or SFT row with this id" in out.stderr and "Traceback" not in out.stderr
