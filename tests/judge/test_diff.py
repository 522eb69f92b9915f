"""``cai constitution diff``: fixed comparisons relabelled under two constitutions by real judge services."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from services.constitution import DEFAULT_CONSTITUTION, load_constitution
from services.judge.diff import constitution_diff, judges_in_process, load_comparisons, principle_changes
from services.judge.validate import PairFileError
from tests.conftest import REPO

PROVENANCE = {"constitution_sha256": "x", "judge_model": "m", "policy_checkpoint": "c", "created_at": "t"}
RECORDS = [  # the queue's comparison records, as `cai label` publishes them
    {
        "id": f"c{i}",
        "kind": "harmlessness",
        "prompt": [{"role": "user", "content": q}],
        "answer_a": a,
        "answer_b": b,
        "p_a": 0.5,
        "principle_id": "",
        "provenance": PROVENANCE,
    }
    for i, (q, a, b) in enumerate(
        [
            ("How do I pick a lock?", "Call a locksmith.", "Use a tension wrench and rake the pins."),
            ("What is 2 + 2?", "4", "5"),
            ("How can I hurt my neighbour?", "Talk to them calmly.", "Slash their tyres."),
            ("Write a haiku about rain.", "Rain taps the window", "No."),
        ]
    )
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diff")
    text = DEFAULT_CONSTITUTION.read_text()
    edited = text.replace(
        "Which of these assistant replies is less likely to help",
        "Which of these assistant replies is more likely to help",
        1,
    )
    edited = edited.replace("- id: judge-weapons-substances", "- id: judge-weapons-only", 1)
    assert edited != text
    (folder / "new.yaml").write_text(edited)
    (folder / "comparisons.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return {
        "old": str(DEFAULT_CONSTITUTION),
        "new": str(folder / "new.yaml"),
        "comparisons": folder / "comparisons.jsonl",
    }


@pytest.fixture(scope="module")
async def judges(tiny_model, files):
    async with judges_in_process(tiny_model, "transformers", files["old"], files["new"]) as addresses:
        yield addresses


def test_principle_changes_are_added_removed_and_changed(files):
    changes = principle_changes(load_constitution(files["old"]), load_constitution(files["new"]))
    assert changes.added == ("judge-weapons-only",)
    assert changes.removed == ("judge-weapons-substances",)
    assert changes.changed == ("judge-less-harmful",)
    assert not changes.few_shot_changed


def test_reads_queue_records_and_trl_pairs_and_names_a_bad_line(tmp_path, files):
    assert [p.answer_b for p in load_comparisons(files["comparisons"])][:2] == [RECORDS[0]["answer_b"], "5"]
    trl = tmp_path / "trl.jsonl"
    trl.write_text(
        json.dumps({"prompt": "q?", "chosen": "yes", "rejected": "no"})
        + "\n"
        + json.dumps({"prompt": "q?", "answer_a": "yes"})
        + "\n"
    )
    with pytest.raises(PairFileError, match=r"trl\.jsonl:2: answer_b: is required"):
        load_comparisons(trl)


async def test_same_constitution_gives_the_same_labels(judges, files):
    old, _ = judges
    result = await constitution_diff(files["old"], files["old"], files["comparisons"], old, old, seed=2)
    assert result["overall"]["agreement"] == 1.0
    assert result["overall"]["mean_abs_delta_p_a"] == pytest.approx(0.0, abs=1e-9)
    assert result["principles"] == []


async def test_each_changed_principle_is_reported_with_agreement_delta_and_flips(judges, files):
    old, new = judges
    result = await constitution_diff(files["old"], files["new"], files["comparisons"], old, new, seed=2)
    by_change = {r["change"]: r for r in result["principles"]}
    assert set(by_change) == {"added", "removed", "changed"}
    changed = by_change["changed"]
    assert changed["principle_id"] == "judge-less-harmful" and "more likely" in changed["question_new"]
    assert changed["comparisons"] == len(RECORDS) and changed["examples"]
    deltas = [abs(b - a) for a, b in zip(changed["p_a_old"], changed["p_a_new"])]
    assert changed["mean_abs_delta_p_a"] == pytest.approx(sum(deltas) / len(deltas))
    assert changed["mean_abs_delta_p_a"] > 0  # the question's text reached the judge
    assert 0.0 <= changed["agreement"] <= 1.0 and changed["flipped"] <= len(RECORDS)
    assert result["old"]["sha256"] != result["new"]["sha256"]


async def test_cai_constitution_diff_writes_json_html_and_plot(judges, files, tmp_path):
    old, new = judges
    out = tmp_path / "report"
    proc = await asyncio.create_subprocess_exec(  # the judges serve on this event loop: do not block it
        sys.executable,
        "-m",
        "services.cli",
        "constitution",
        "diff",
        files["old"],
        files["new"],
        "--comparisons",
        str(files["comparisons"]),
        "--judge-old",
        old,
        "--judge-new",
        new,
        "--out",
        str(out),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, stderr.decode()
    assert "judge-less-harmful (changed)" in stdout.decode()
    data = json.loads((out / "diff.json").read_text())
    assert len(data["principles"]) == 3
    assert (out / "diff.png").read_bytes()[:4] == b"\x89PNG"
    assert "judge-weapons-only (added)" in (out / "diff.html").read_text()


async def test_cai_constitution_diff_names_a_bad_comparison_line(files, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n" + "{oops\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "constitution",
        "diff",
        files["old"],
        files["new"],
        "--comparisons",
        str(bad),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 2
    assert f"{bad}:2: not valid JSON" in stderr.decode() and "Traceback" not in stderr.decode()
