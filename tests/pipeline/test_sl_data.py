"""`cai sl-data`: the SL-CAI dataset through real services, its format, provenance and resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.common.jsonl import read_rows
from services.constitution import load_constitution
from services.pipeline.sl_data import SLDataConfig, load_sft_dataset, produce_sl_data, row_quality
from services.prompts import RED_TEAM, prompt_part


def remote(generation_server, critique_server, **kw) -> SLDataConfig:
    return SLDataConfig(
        generation=generation_server.address,
        critique=critique_server.address,
        **{"max_tokens": 6, "batch_size": 3, **kw},
    )


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
    # SL-CAI-n selection (rounds 1..n), in the shape TRL's SFT trainer reads
    ds = load_sft_dataset(tmp_path, rounds=2, include_flagged=True)
    assert ds.column_names == ["prompt", "completion"] and len(ds) == 8 + 4
    assert load_sft_dataset(tmp_path, rounds=2, helpfulness=False, include_flagged=True)[0]["completion"] == next(
        r["completion"] for r in rows if r["round"] == 1
    )


async def test_resume_neither_loses_nor_duplicates(generation_server, critique_server, tmp_path):
    await produce_sl_data(remote(generation_server, critique_server, limit=2, rounds=2), tmp_path, progress=False)
    path = tmp_path / "sl_cai.jsonl"
    first = read_rows(path)
    # The process dies in the middle of writing the next prompt's rows: a torn line on disk.
    with open(path, "a") as f:
        f.write('{"prompt": [{"role": "user", "content": "half a ro')
    manifest = await produce_sl_data(
        remote(generation_server, critique_server, limit=5, rounds=2), tmp_path, progress=False
    )
    rows = read_rows(path)
    keys = [(r["prompt_id"], r["round"]) for r in rows]
    assert len(keys) == len(set(keys)) == 10
    assert rows[: len(first)] == first
    assert manifest["last_run"]["prompts_skipped_as_done"] == 4
    again = await produce_sl_data(
        remote(generation_server, critique_server, limit=5, rounds=2), tmp_path, progress=False
    )
    assert again["last_run"]["rows_written"] == 0
    with pytest.raises(ValueError, match="rounds=2"):
        await produce_sl_data(remote(generation_server, critique_server, limit=5, rounds=3), tmp_path, progress=False)


def test_cli_embedded_default_and_bad_prompt_file(tiny_model, tmp_path):
    prompts = tmp_path / "mine.jsonl"
    lines = [json.loads(line) for line in RED_TEAM.read_text().splitlines()[:2]]
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "data"
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "sl-data",
        "--prompts",
        str(prompts),
        "--helpfulness",
        "",
        "--out",
        str(out),
        "--rounds",
        "2",
        "--max-tokens",
        "4",
        "--model",
        tiny_model,
        "--engine",
        "transformers",
        "--no-progress",
    ]
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


async def test_truncated_revisions_are_marked_and_not_trained_on(generation_server, critique_server, tmp_path):
    # 3 tokens: the tiny model's revisions and answers run into the cap
    manifest = await produce_sl_data(
        remote(generation_server, critique_server, limit=3, rounds=2, max_tokens=3), tmp_path, progress=False
    )
    rows = read_rows(tmp_path / "sl_cai.jsonl") + read_rows(tmp_path / "helpfulness.jsonl")
    assert all(r["quality"] == (r["quality_problems"] or ["ok"])[0] for r in rows)
    assert all(prompt_part(r["prompt_id"]) == "train" for r in rows)  # the eval part stays held out
    truncated = [r for r in rows if "truncated" in r["quality_problems"]]
    assert truncated, "a 3-token cap truncates the tiny model's text"
    counts = manifest["quality"]
    assert sum(counts["sl_cai.jsonl"].values()) == 6 and sum(counts["helpfulness.jsonl"].values()) == 3
    assert counts["sl_cai.jsonl"]["truncated"] + counts["helpfulness.jsonl"]["truncated"] == sum(
        r["quality"] == "truncated" for r in rows
    )
    clean = [r for r in rows if r["quality"] == "ok"]
    if clean:
        assert len(load_sft_dataset(tmp_path)) == len(clean)
    else:
        with pytest.raises(ValueError, match="--include-flagged"):
            load_sft_dataset(tmp_path)
    assert len(load_sft_dataset(tmp_path, include_flagged=True)) == len(rows)


async def test_resume_refuses_another_configuration(generation_server, critique_server, tmp_path):
    await produce_sl_data(remote(generation_server, critique_server, limit=1, rounds=1), tmp_path, progress=False)
    for change, message in [(dict(max_tokens=7), "max_tokens=6"), (dict(temperature=0.5), "temperature=1.0")]:
        with pytest.raises(ValueError, match=f"{message}.*would mix datasets"):
            await produce_sl_data(
                remote(generation_server, critique_server, limit=1, rounds=1, **change), tmp_path, progress=False
            )
    other = tmp_path / "prompts.jsonl"
    other.write_text(RED_TEAM.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="prompts="):
        await produce_sl_data(
            remote(generation_server, critique_server, limit=1, rounds=1, prompts=str(other)), tmp_path, progress=False
        )
    # the same settings resume (the limit may grow)
    await produce_sl_data(remote(generation_server, critique_server, limit=2, rounds=1), tmp_path, progress=False)
    assert len(read_rows(tmp_path / "sl_cai.jsonl")) == 2


def test_rows_are_marked_for_scaffolding_failed_rounds_and_truncation():
    from services.pipeline.sl_data import _quality

    assert _quality("Use a tension wrench.", False)["quality"] == "ok"
    assert _quality("For example: ask a locksmith. Another day, maybe.", False)["quality"] == "ok"
    for leak in [
        "Fine.\n\nCritique request: Identify harm.",
        "Sure. Revision request: rewrite it",
        "OK.\nHuman: and then?",
        "Done. Another example.",
        "Conversation:\n\nHuman: hi",
    ]:
        assert _quality(leak, False)["quality"] == "scaffold_leak", leak
    assert _quality("Cut off mid", True)["quality"] == "truncated"
    marked = _quality("(no answer)", True, failed=True)
    assert marked["quality"] == "all_rounds_failed" and marked["quality_problems"] == ["all_rounds_failed", "truncated"]
    # rows written before quality was recorded are judged from their text
    assert (
        row_quality({"completion": [{"role": "assistant", "content": "x Critique request: y"}], "round": 2})
        == "scaffold_leak"
    )


def _rows(folder, rounds):
    from services.common.jsonl import append_rows

    append_rows(
        folder / "sl_cai.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": f"q{p}"}],
                "completion": [{"role": "assistant", "content": f"r{p}.{r}"}],
                "prompt_id": f"p{p}",
                "round": r,
                "quality": "truncated" if (p, r) == (0, 2) else "ok",
            }
            for p in range(2)
            for r in range(1, rounds + 1)
        ],
    )
    append_rows(
        folder / "helpfulness.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": "h"}],
                "completion": [{"role": "assistant", "content": "a"}],
                "prompt_id": "h0",
                "round": 0,
                "quality": "ok",
            }
        ],
    )


def test_sft_rounds_take_up_to_n_and_all(tmp_path):
    _rows(tmp_path, 3)
    texts = lambda ds: sorted(r["completion"][0]["content"] for r in ds)  # noqa: E731
    assert texts(load_sft_dataset(tmp_path, rounds=1, helpfulness=False)) == ["r0.1", "r1.1"]
    assert texts(load_sft_dataset(tmp_path, rounds=2, helpfulness=False)) == ["r0.1", "r1.1", "r1.2"]
    assert len(load_sft_dataset(tmp_path, rounds=2, helpfulness=False, include_flagged=True)) == 4
    assert len(load_sft_dataset(tmp_path, rounds=None)) == 5 + 1  # all rounds, less the flagged row
    with pytest.raises(ValueError, match="rounds 1..3"):
        load_sft_dataset(tmp_path, rounds=4)
    from services.cli import build_parser

    parse = lambda *a: build_parser().parse_args(["train", "sft", "--data", "d", "--out", "o", *a])  # noqa: E731
    assert parse("--rounds", "all").rounds == 0 and parse("--rounds", "2").rounds == 2
    run = subprocess.run(
        [sys.executable, "-m", "services.cli", "train", "sft", "--data", "d", "--out", "o", "--rounds", "last"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "expected a round number or 'all'" in run.stderr
