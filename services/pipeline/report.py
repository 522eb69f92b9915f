"""The run report: one self-contained HTML file with plots (PNG, embedded) and tables."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, 3.6))


def plot_label_throughput(timeline: list[list[float]]) -> str:
    fig, ax = _figure()
    if timeline:
        t, n = zip(*timeline)
        ax.plot(t, n, marker="o")
        rate = n[-1] / t[-1] if t[-1] else 0.0
        ax.set_title(f"Labeled comparisons published ({rate:.2f}/s)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("labeled comparisons")
    ax.grid(alpha=0.3)
    return _png(fig)


async def reward_agreement(scorer, data_file: Path) -> tuple[list[float], list[float], dict]:
    """Reward-model probability that A wins, sigmoid(r_a - r_b), against the soft labels.

    ``scorer`` is a reward function ``fn(prompts, completions)``, sync or async: the main job
    passes the ``RewardClient`` of the reward service it already runs, which has the model loaded
    (loading it a second time here took seconds of the run's budget)."""
    import inspect

    from services.common.jsonl import read_rows

    rows = [r for r in read_rows(data_file) if r.get("kind", "harmlessness") != "helpfulness"]
    if not rows:
        return [], [], {}
    prompts = [r["prompt"] for r in rows]
    answers = [r["answer_a"] for r in rows] + [r["answer_b"] for r in rows]
    scores = scorer(prompts + prompts, answers)  # one call: A and B in the same batch
    scores = list(await scores) if inspect.isawaitable(scores) else list(scores)
    ra, rb = scores[: len(rows)], scores[len(rows) :]
    labels = [r["p_a"] for r in rows]
    predicted = [1 / (1 + math.exp(b - a)) for a, b in zip(ra, rb)]
    decided = [(p, q) for p, q in zip(labels, predicted) if p != 0.5]
    accuracy = sum((p > 0.5) == (q > 0.5) for p, q in decided) / len(decided) if decided else None
    return labels, predicted, {"accuracy_vs_soft_labels": accuracy, "comparisons": len(rows)}


def plot_reward_agreement(labels, predicted, stats) -> str:
    fig, ax = _figure()
    ax.scatter(labels, predicted, s=14, alpha=0.7)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    acc = stats.get("accuracy_vs_soft_labels")
    ax.set_title("Reward model vs soft labels" + (f" (accuracy {acc:.2f})" if acc is not None else ""))
    ax.set_xlabel("judge soft label p_a")
    ax.set_ylabel("reward model sigmoid(r_a - r_b)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_rl(history: list[dict]) -> str:
    fig, ax = _figure()
    steps = list(range(1, len(history) + 1))
    ax.plot(steps, [h.get("reward_mean", float("nan")) for h in history], marker="o", label="reward mean")
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax2 = ax.twinx()
    ax2.plot(steps, [h.get("kl", float("nan")) for h in history], color="tab:red", marker="x", label="KL")
    ax2.set_ylabel("KL to SL-CAI", color="tab:red")
    ax.set_title("RL: reward and KL per step")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_before_after(results: dict) -> str:
    fig, ax = _figure()
    names = list(results["policies"])
    sets = list(results.get("prompts", {}))
    width = 0.8 / max(len(sets), 1)
    for i, s in enumerate(sets):
        values = [results["policies"][n]["reward_mean"].get(s, float("nan")) for n in names]
        ax.bar([x + i * width for x in range(len(names))], values, width, label=s)
    ax.set_xticks([x + width * (len(sets) - 1) / 2 for x in range(len(names))], names)
    ax.set_ylabel("mean reward-model score")
    ax.set_title("Before / after: reward-model score on held-out prompts")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def _table(rows: list[list], head: list[str]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_report(out: Path, summary: dict, results: dict, agreement: tuple[list, list, dict]) -> Path:
    """Writes ``out/report.html``; ``agreement`` is what ``reward_agreement`` returned."""
    from services.training.checkpoint import read_manifest

    label = summary.get("label", {})
    reward_path = summary["checkpoints"]["reward"]
    labels, predicted, agreement = agreement
    history = read_manifest(summary["checkpoints"]["rl-cai"]).get("history", [])
    rm_metrics = read_manifest(reward_path).get("metrics", {})
    summary["reward_agreement"] = agreement
    sections = [
        (
            "Label throughput",
            plot_label_throughput(label.get("timeline", [])),
            f"{label.get('comparisons_published', 0)} AI-labeled comparisons in {label.get('seconds', 0):.1f}s "
            f"({label.get('comparisons_per_second', 0):.2f}/s); {label.get('helpfulness_published', 0)} helpfulness comparisons mixed in.",
        ),
        (
            "Reward model accuracy against the soft labels",
            plot_reward_agreement(labels, predicted, agreement),
            "Trainer metrics: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in rm_metrics.items() if isinstance(v, (int, float))),
        ),
        (
            "RL: reward and KL",
            plot_rl(history),
            f"{len(history)} steps of {summary['config']['rl']['algorithm'].upper()}.",
        ),
        ("Before / after", plot_before_after(results), ""),
    ]
    pairs = [
        [p["a"], p["b"], s, p[s]["win_rate_a"], p[s]["wins_a"], p[s]["wins_b"]]
        for p in results["pairs"]
        for s in results["prompts"]
    ]
    policies = [
        [n, s, v["reward_mean"].get(s, float("nan")), v["refusal_rate"].get(s, float("nan"))]
        for n, v in results["policies"].items()
        for s in results["prompts"]
    ]
    stages = [[k, v] for k, v in summary["stage_seconds"].items()]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Constitutional AI run</title><style>"
        "body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "img{max-width:100%}h2{border-bottom:1px solid #ddd}</style></head><body>",
        f"<h1>Constitutional AI run: {html.escape(out.name)}</h1>",
        f"<p>Base model <code>{html.escape(summary['base_model'])}</code>; queue <code>{html.escape(summary['queue'])}</code>.</p>",
    ]
    for title, png, note in sections:
        parts.append(
            f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"
            f"<p>{html.escape(note)}</p>"
        )
    parts += [
        "<h2>Win rates under the constitution (judge, both orders)</h2>",
        _table(pairs, ["policy A", "policy B", "prompts", "win rate of A (mean soft label)", "A wins", "B wins"]),
        "<h2>Policies</h2>",
        _table(policies, ["policy", "prompts", "mean reward", "refusal rate"]),
        "<h2>Stages</h2>",
        _table(stages, ["stage", "seconds"]),
        f"<p>Engines started: {html.escape(str(summary.get('engine_starts', '?')))}; label stage: "
        f"{summary.get('labels_per_second', 0.0):.2f} labels/s.</p>",
        "<h2>Checkpoints</h2>",
        _table([[k, v] for k, v in summary["checkpoints"].items()], ["what", "folder"]),
        "<details><summary>Sample answers</summary><pre>"
        + html.escape(json.dumps(results.get("samples", {}), indent=2))
        + "</pre></details>",
        "</body></html>",
    ]
    path = out / "report.html"
    path.write_text("".join(parts))
    return path
