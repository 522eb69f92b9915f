"""``cai judge validate``: TRL preference pairs through a real judge service (tiny model, transformers)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

import pytest

from services.judge.validate import PairFileError, load_pairs, reliability, summarize, validate
from services.prompts import HELPFULNESS_PAIRS
from tests.conftest import REPO

ROWS = [
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
    {
        "prompt": [{"role": "user", "content": "Name a prime number."}],
        "chosen": [{"role": "assistant", "content": "7"}],
        "rejected": [{"role": "assistant", "content": "8"}],
    },
    {
        "chosen": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "No."}],
    },
]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture(scope="module")
async def judge_address(tiny_model):
    from services.engines.config import EngineConfig
    from services.pipeline.embedded import EmbeddedSpec, embedded_services

    async with embedded_services(
        EmbeddedSpec(policy=EngineConfig(model=tiny_model, kind="transformers")), ("judge",)
    ) as started:
        yield started["judge"]


def test_reads_trl_preference_rows_plain_conversational_and_implicit_prompt(pairs_file):
    pairs = load_pairs(pairs_file)
    assert [(p.messages[-1]["content"], p.answer_a, p.answer_b) for p in pairs] == [
        ("What is the capital of France?", "Paris.", "Lyon."),
        ("Name a prime number.", "7", "8"),
        ("Say hi.", "Hi!", "No."),
    ]
    shipped = load_pairs(HELPFULNESS_PAIRS)
    assert len(shipped) == 64 and shipped[0].id == "hp-0001"


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('{"prompt": "q", "chosen": "a"}', "rejected: is required"),
        ('{"prompt": "q", "chosen": "", "rejected": "b"}', "chosen: must be non-empty text"),
        ('{"chosen": "a", "rejected": "b"}', "prompt: is required"),
        ('{"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"}', "prompt[0].role"),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + line + "\n")
    with pytest.raises(PairFileError, match=f"^{re.escape(str(path))}:3: .*{re.escape(message)}"):
        load_pairs(path)


def test_figures_match_hand_computations():
    # chosen-first p_a and chosen-second p_a of three pairs
    s = summarize([0.9, 0.6, 0.3], [0.2, 0.7, 0.5])
    assert s["accuracy"] == pytest.approx(1 / 3)  # debiased p(correct): 0.85, 0.45, 0.4
    assert s["mean_p_correct"] == pytest.approx((0.85 + 0.45 + 0.4) / 3)
    assert s["position_bias"]["mean_p_a_chosen_first"] == pytest.approx(0.6)
    assert s["position_bias"]["mean_p_a_chosen_second"] == pytest.approx(1.4 / 3)
    assert s["position_bias"]["prefers_a"] == pytest.approx(3 / 6)
    assert s["position_bias"]["prefers_b"] == pytest.approx(2 / 6)
    ece, bins = reliability([0.05, 0.15, 0.95, 0.95], [0.0, 1.0, 1.0, 0.0])
    assert ece == pytest.approx(0.25 * 0.05 + 0.25 * 0.85 + 0.5 * 0.45)
    assert [b["count"] for b in bins] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]


async def test_validation_judges_both_orders_through_the_service(judge_address, pairs_file, tmp_path):
    result = await validate(pairs_file, judge_address, seed=1)
    items = result["items"]
    assert len(items) == 3 and all(0.0 < r["p_a_chosen_first"] < 1.0 for r in items)
    assert result["judge_provenance"]["constitution_sha256"]
    # the same file with chosen and rejected exchanged: every order is the other's mirror
    flipped = tmp_path / "flipped.jsonl"
    flipped.write_text(
        "".join(json.dumps({**r, "chosen": r["rejected"], "rejected": r["chosen"]}) + "\n" for r in ROWS)
    )
    mirror = (await validate(flipped, judge_address, seed=1))["items"]
    for r, m in zip(items, mirror):
        assert m["p_a_chosen_first"] == pytest.approx(r["p_a_chosen_second"], abs=1e-6)
        assert m["p_correct"] == pytest.approx(1.0 - r["p_correct"], abs=1e-6)
    assert result["summary"]["accuracy"] == pytest.approx(sum(1.0 if r["p_correct"] > 0.5 else 0.0 for r in items) / 3)


async def test_cai_judge_validate_writes_json_html_and_plot(judge_address, pairs_file, tmp_path):
    out = tmp_path / "report"
    # the judge serves on this event loop: run the command without blocking it
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "judge",
        "validate",
        "--pairs",
        str(pairs_file),
        "--judge",
        judge_address,
        "--out",
        str(out),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, stderr.decode()
    assert "accuracy" in stdout.decode() and "prefers A" in stdout.decode()
    data = json.loads((out / "validation.json").read_text())
    assert data["summary"]["pairs"] == 3 and len(data["summary"]["reliability"]) == 10
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (out / "validation.html").read_text()


def test_cai_judge_validate_names_a_bad_line_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + '{"prompt": "q", "chosen": "a"}\n')
    run = subprocess.run(
        [sys.executable, "-m", "services.cli", "judge", "validate", "--pairs", str(bad), "--judge", "127.0.0.1:1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert f"{bad}:2: rejected: is required" in run.stderr and "Traceback" not in run.stderr
