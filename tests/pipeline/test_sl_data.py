"""`cai sl-data`: the SL-CAI dataset through real services, its format, provenance and resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.common.jsonl import read_rows
from services.constitution import load_constitution
from services.pipeline.sl_data import SLDataConfig, load_sft_dataset, produce_sl_data
from services.prompts import RED_TEAM


def remote(generation_server, critique_server, **kw) -> SLDataConfig:
    return SLDataConfig(generation=generation_server.address, critique=critique_server.address,
                        max_tokens=6, batch_size=3, **kw)


async def test_rows_per_round_with_provenance(generation_server, critique_server, tmp_path):
    cfg = remote(generation_server, critique_server, limit=4, rounds=4)
    manifest = await produce_sl_data(cfg, tmp_path, progress=False)
    rows = read_rows(tmp_path / "sl_cai.jsonl")
    helpful = read_rows(tmp_path / "helpfulness.jsonl")
    assert len(rows) == 16 and len(helpful) == 4
    assert manifest["files"] == {"sl_cai.jsonl": 16, "helpfulness.jsonl": 4}
    c = load_constitution()
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
        assert r["prompt"][-1]["role"] == "user"
        assert r["completion"][0]["role"] == "assistant"
        p = r["provenance"]
        assert p["constitution_file"] == "default.yaml" and p["constitution_sha256"] == c.sha256
        assert len(p["principle_ids"]) == r["round"] and p["principle_ids"][-1] == r["principle_id"]
        assert p["model"] and p["checkpoint"] and p["prompt_id"] == r["prompt_id"]
    assert all(sorted(x["round"] for x in v) == [1, 2, 3, 4] for v in by_prompt.values())
    assert manifest["constitution_sha256"] == c.sha256
    # SL-CAI-n selection, in the shape TRL's SFT trainer reads
    ds = load_sft_dataset(tmp_path, rounds=2)
    assert ds.column_names == ["prompt", "completion"] and len(ds) == 4 + 4
    assert load_sft_dataset(tmp_path, rounds=2, helpfulness=False)[0]["completion"] == next(
        r["completion"] for r in rows if r["round"] == 2)


async def test_resume_neither_loses_nor_duplicates(generation_server, critique_server, tmp_path):
    await produce_sl_data(remote(generation_server, critique_server, limit=2, rounds=2), tmp_path, progress=False)
    path = tmp_path / "sl_cai.jsonl"
    first = read_rows(path)
    # The process dies in the middle of writing the next prompt's rows: a torn line on disk.
    with open(path, "a") as f:
        f.write('{"prompt": [{"role": "user", "content": "half a ro')
    manifest = await produce_sl_data(remote(generation_server, critique_server, limit=5, rounds=2), tmp_path, progress=False)
    rows = read_rows(path)
    keys = [(r["prompt_id"], r["round"]) for r in rows]
    assert len(keys) == len(set(keys)) == 10
    assert rows[: len(first)] == first
    assert manifest["last_run"]["prompts_skipped_as_done"] == 4
    again = await produce_sl_data(remote(generation_server, critique_server, limit=5, rounds=2), tmp_path, progress=False)
    assert again["last_run"]["rows_written"] == 0
    with pytest.raises(ValueError, match="rounds=2"):
        await produce_sl_data(remote(generation_server, critique_server, limit=5, rounds=3), tmp_path, progress=False)


def test_cli_embedded_default_and_bad_prompt_file(tiny_model, tmp_path):
    prompts = tmp_path / "mine.jsonl"
    lines = [json.loads(line) for line in RED_TEAM.read_text().splitlines()[:2]]
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "services.cli", "sl-data", "--prompts", str(prompts), "--helpfulness", "",
           "--out", str(out), "--rounds", "2", "--max-tokens", "4", "--model", tiny_model,
           "--engine", "transformers", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(read_rows(out / "sl_cai.jsonl")) == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(lines[0]) + "\n" + '{"id": "x", "messages": [{"role": "user"}]}\n')
    cmd[cmd.index(str(prompts))] = str(bad)
    cmd[cmd.index(str(out))] = str(tmp_path / "other")
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert failed.returncode == 2
    assert f"{bad}:2: messages[0].content" in failed.stderr
    assert "Traceback" not in failed.stderr
