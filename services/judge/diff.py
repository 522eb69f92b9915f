"""``cai constitution diff OLD NEW --comparisons FILE``: what a constitution change does to the labels.

A fixed set of comparisons (JSONL: the queue's comparison records with ``prompt``/``answer_a``/
``answer_b``, or TRL pairs with ``prompt``/``chosen``/``rejected``) is relabelled by the same judge
model under both constitutions with the same seed. Reported:

- ``overall``: the labels ``cai label`` would produce under each (principle sampled per comparison):
  label agreement (same side of 0.5), mean |Δp_a|, flipped preferences, examples;
- per judging principle that was added, removed or changed (same id, other question):
  - changed: every comparison judged under that principle in OLD and in NEW;
  - added: under the new principle (NEW) against the OLD labels as sampled;
  - removed: under the old principle (OLD) against the NEW labels as sampled;
- whether the judging few-shot examples changed (they move every label a little).

Since the judge's draws depend only on the seed and the comparison's content, the only thing that
differs between the two runs is the constitution.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from services.common.client import conversation
from services.common.jsonl import jsonl_records
from services.constitution import Constitution, load_constitution
from services.judge.validate import Pair, PairFileError, html_page, read_pair

EXAMPLES = 3


def load_comparisons(path: str | Path) -> list[Pair]:
    """Comparison records (``answer_a``/``answer_b``) or TRL pairs (``chosen``/``rejected``), JSONL."""
    path = Path(path)
    pairs = [
        read_pair(record, where, number, answers=None) for where, number, record in jsonl_records(path, PairFileError)
    ]
    if not pairs:
        raise PairFileError(f"{path}:1: holds no comparisons")
    return pairs


@dataclass(frozen=True)
class PrincipleChanges:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    few_shot_changed: bool


def principle_changes(old: Constitution, new: Constitution) -> PrincipleChanges:
    before = {p.id: p.question for p in old.judging}
    after = {p.id: p.question for p in new.judging}
    return PrincipleChanges(
        added=tuple(i for i in after if i not in before),
        removed=tuple(i for i in before if i not in after),
        changed=tuple(i for i in after if i in before and after[i] != before[i]),
        unchanged=tuple(i for i in after if i in before and after[i] == before[i]),
        few_shot_changed=old.judging_examples != new.judging_examples,
    )


async def _labels(
    address: str, pairs: list[Pair], seed: int, swap: bool, principle_id: str = "", batch_size: int = 64
) -> list[tuple[float, str]]:
    from services.api.cai.v1 import judge_pb2
    from services.judge.client import JudgeClient

    out = []
    async with JudgeClient(address) as stub:
        for i in range(0, len(pairs), batch_size):
            response = await stub.Compare(
                judge_pb2.CompareRequest(
                    comparisons=[
                        judge_pb2.Comparison(
                            prompt=conversation(p.messages, p.id),
                            answer_a=p.answer_a,
                            answer_b=p.answer_b,
                            principle_id=principle_id,
                            id=p.id,
                        )
                        for p in pairs[i : i + batch_size]
                    ],
                    mode=judge_pb2.JUDGE_MODE_LOGPROB,
                    swap_debias=swap,
                    seed=seed,
                ),
                timeout=3600,
            )
            out += [(label.p_a, label.principle_id) for label in response.labels]
    return out


def compare_labels(pairs: list[Pair], before: list[tuple[float, str]], after: list[tuple[float, str]]) -> dict:
    """Agreement (same side of 0.5, ties agreeing only with ties), mean |Δp_a|, flips, examples."""
    side = lambda p: (p > 0.5) - (p < 0.5)  # noqa: E731
    rows = [
        {
            "id": pair.id,
            "line": pair.line,
            "p_a_old": a,
            "p_a_new": b,
            "principle_old": pa,
            "principle_new": pb,
            "prompt": pair.messages[-1]["content"],
            "answer_a": pair.answer_a,
            "answer_b": pair.answer_b,
        }
        for pair, (a, pa), (b, pb) in zip(pairs, before, after)
    ]
    flipped = [r for r in rows if side(r["p_a_old"]) * side(r["p_a_new"]) < 0]
    n = len(rows)
    return {
        "comparisons": n,
        "agreement": sum(side(r["p_a_old"]) == side(r["p_a_new"]) for r in rows) / n,
        "mean_abs_delta_p_a": sum(abs(r["p_a_new"] - r["p_a_old"]) for r in rows) / n,
        "flipped": len(flipped),
        "flipped_share": len(flipped) / n,
        "examples": sorted(flipped or rows, key=lambda r: -abs(r["p_a_new"] - r["p_a_old"]))[:EXAMPLES],
        "p_a_old": [r["p_a_old"] for r in rows],
        "p_a_new": [r["p_a_new"] for r in rows],
    }


async def constitution_diff(
    old_path: str,
    new_path: str,
    comparisons: str | Path,
    old_address: str,
    new_address: str,
    *,
    seed: int = 0,
    swap: bool = True,
    limit: int = 0,
) -> dict:
    """Relabels ``comparisons`` with the judges at ``old_address`` (serving OLD) and ``new_address``
    (serving NEW; the same model) and reports the impact of every judging-principle change."""
    import hashlib

    old, new = load_constitution(old_path), load_constitution(new_path)
    changes = principle_changes(old, new)
    pairs = load_comparisons(comparisons)
    if limit:
        pairs = pairs[:limit]
    sampled_old = await _labels(old_address, pairs, seed, swap)
    sampled_new = await _labels(new_address, pairs, seed, swap)
    principles = []
    for pid in changes.changed:
        principles.append(
            {
                "principle_id": pid,
                "change": "changed",
                "question_old": old.judging_principle(pid).question,
                "question_new": new.judging_principle(pid).question,
                **compare_labels(
                    pairs,
                    await _labels(old_address, pairs, seed, swap, pid),
                    await _labels(new_address, pairs, seed, swap, pid),
                ),
            }
        )
    for pid in changes.added:
        principles.append(
            {
                "principle_id": pid,
                "change": "added",
                "question_new": new.judging_principle(pid).question,
                **compare_labels(pairs, sampled_old, await _labels(new_address, pairs, seed, swap, pid)),
            }
        )
    for pid in changes.removed:
        principles.append(
            {
                "principle_id": pid,
                "change": "removed",
                "question_old": old.judging_principle(pid).question,
                **compare_labels(pairs, await _labels(old_address, pairs, seed, swap, pid), sampled_new),
            }
        )
    return {
        "old": {"file": str(old_path), "sha256": old.sha256, "judging_principles": len(old.judging)},
        "new": {"file": str(new_path), "sha256": new.sha256, "judging_principles": len(new.judging)},
        "comparisons_file": str(comparisons),
        "comparisons_sha256": hashlib.sha256(Path(comparisons).read_bytes()).hexdigest(),
        "seed": seed,
        "swap_debias": swap,
        "unchanged_principles": list(changes.unchanged),
        "few_shot_changed": changes.few_shot_changed,
        "overall": compare_labels(pairs, sampled_old, sampled_new),
        "principles": principles,
    }


@contextlib.asynccontextmanager
async def judges_in_process(model: str, kind: str, old_path: str, new_path: str):
    """Two judge services on loopback, one per constitution, sharing one engine; yields addresses."""
    from services.common.served_model import ServedModel
    from services.engines.config import EngineConfig, start_engine
    from services.judge.config import JudgeConfig
    from services.judge.service import SERVICE, build_judge_service
    from services.pipeline.embedded import LOOPBACK

    engine = EngineConfig(kind=kind, **({"model": model} if model else {}))
    served = ServedModel(SERVICE, await start_engine(engine))
    started = []
    try:
        for path in (old_path, new_path):
            service = await build_judge_service(JudgeConfig(engine=engine, server=LOOPBACK, constitution=path), served)
            await service.start()
            started.append(service)
        yield [f"127.0.0.1:{s.port}" for s in started]
    finally:
        for service in reversed(started):
            await service.stop(grace=5)
        await served.close()


def _plot(result: dict) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    overall = result["overall"]
    left.scatter(overall["p_a_old"], overall["p_a_new"], s=14, alpha=0.7)
    left.plot([0, 1], [0, 1], "--", color="grey")
    left.axhline(0.5, color="lightgrey", lw=0.8)
    left.axvline(0.5, color="lightgrey", lw=0.8)
    left.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="p_a under OLD",
        ylabel="p_a under NEW",
        title=f"labels as sampled: agreement {overall['agreement']:.2f}",
    )
    rows = result["principles"]
    names = [f"{r['principle_id']} ({r['change']})" for r in rows] or ["(no principle changed)"]
    y = range(len(names))
    right.barh(list(y), [r["mean_abs_delta_p_a"] for r in rows] or [0], label="mean |Δp_a|")
    right.barh([i + 0.4 for i in y], [r["flipped_share"] for r in rows] or [0], height=0.4, label="share flipped")
    right.set_yticks(list(y), names, fontsize=8)
    right.set(xlim=(0, 1), title="per changed judging principle")
    right.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(result: dict, out: str | Path) -> dict:
    """diff.json, diff.png and diff.html in ``out``; returns their paths."""
    import html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = _plot(result)
    files = {"json": out / "diff.json", "png": out / "diff.png", "html": out / "diff.html"}
    files["json"].write_text(json.dumps(result, indent=2) + "\n")
    files["png"].write_bytes(png)
    o = result["overall"]
    rows = [
        ("old", f"{result['old']['file']} ({result['old']['sha256'][:12]})"),
        ("new", f"{result['new']['file']} ({result['new']['sha256'][:12]})"),
        ("comparisons", f"{o['comparisons']} from {result['comparisons_file']}"),
        ("seed / swap", f"{result['seed']} / {result['swap_debias']}"),
        ("judging few-shot examples changed", str(result["few_shot_changed"])),
        (
            "labels as sampled: agreement, mean |Δp_a|, flipped",
            f"{o['agreement']:.3f}, {o['mean_abs_delta_p_a']:.3f}, {o['flipped']}",
        ),
    ]
    for r in result["principles"]:
        rows.append(
            (
                f"{r['principle_id']} ({r['change']})",
                f"agreement {r['agreement']:.3f}, mean |Δp_a| {r['mean_abs_delta_p_a']:.3f}, flipped {r['flipped']}",
            )
        )
    extra = ""
    for title, block in [("labels as sampled", o)] + [
        (f"{r['principle_id']} ({r['change']})", r) for r in result["principles"]
    ]:
        extra += (
            f"<h2>Examples: {html.escape(title)}</h2><table>"
            + "".join(
                f"<tr><td>{html.escape(e['id'])}</td><td>{html.escape(e['prompt'][:200])}</td>"
                f"<td>A: {html.escape(e['answer_a'][:200])}<br>B: {html.escape(e['answer_b'][:200])}</td>"
                f"<td>p_a {e['p_a_old']:.3f} → {e['p_a_new']:.3f}</td></tr>"
                for e in block["examples"]
            )
            + "</table>"
        )
    files["html"].write_text(html_page("Constitution diff", rows, png, extra))
    return {k: str(v) for k, v in files.items()}
