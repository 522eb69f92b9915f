"""``cai judge validate``: check a judge on labelled comparisons before it labels.

The input is TRL's preference format, the one users already have: JSONL rows with ``prompt``,
``chosen`` and ``rejected``, either plain text or conversational (lists of ``{role, content}``;
with an implicit prompt, ``chosen`` and ``rejected`` are whole conversations sharing it). The
shipped ``prompts/helpfulness_pairs.jsonl`` (``messages`` + ``chosen``/``rejected`` text) is read
too. A bad row is an error naming FILE:LINE and the field.

Every pair goes through the Judge service (``Compare``, log-prob mode, no swap) in both orders,
chosen first and chosen second, with the same seed; since the judge's draws depend on the content
and not the order, both orders see the same principle and few-shot examples. From the raw p_a of
each order:

- accuracy: the fraction of pairs whose debiased label (mean of both orders, what ``swap_debias``
  gives) prefers the chosen answer, ties counting half; also per order;
- mean p(correct): the mean probability the judge gives the chosen answer (debiased, per order);
- calibration: the 2N raw judgments as predictions "A is the chosen answer" with probability p_a;
  10 equal bins on [0, 1]; ECE = sum over bins of (bin share) * |mean p_a - fraction A chosen|;
  the reliability plot shows the same bins;
- position bias: mean p_a with the chosen answer first and second (an unbiased judge has the two
  means summing to 1, i.e. mean p_a over both orders of 0.5) and the fraction of the 2N judgments
  that prefer position A and position B.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from services.common.client import conversation
from services.common.jsonl import jsonl_records
from services.prompts import PromptFileError, check_messages

BINS = 10


class PairFileError(PromptFileError):
    """A comparison file that cannot be used; the message is ``FILE:LINE: FIELD: reason``."""


@dataclass(frozen=True)
class Pair:
    """A prompt and two answers; for a labelled pair ``answer_a`` is the chosen one."""

    id: str
    messages: tuple[dict, ...]
    answer_a: str
    answer_b: str
    line: int = 0


def _text(value, where: str, name: str) -> str:
    """An answer: plain text, or a conversational list whose last message is the assistant's."""
    if isinstance(value, list):
        if not value or not isinstance(value[-1], dict) or value[-1].get("role") != "assistant":
            raise PairFileError(f"{where}: {name}: a conversational answer must end with an assistant message")
        value = value[-1].get("content")
    if not isinstance(value, str) or not value.strip():
        raise PairFileError(f"{where}: {name}: must be non-empty text (or messages ending with the assistant's)")
    return value


def _implicit(chosen, rejected, where: str):
    """TRL's implicit-prompt conversational rows: the shared prefix of chosen and rejected."""
    if not (isinstance(chosen, list) and isinstance(rejected, list) and len(chosen) >= 2):
        raise PairFileError(
            f"{where}: prompt: is required (or `messages`, or conversational chosen/rejected that share the prompt)"
        )
    prefix = chosen[:-1]
    if rejected[:-1] != prefix:
        raise PairFileError(f"{where}: rejected: does not share the prompt messages of chosen")
    return prefix


def read_pair(record, where: str, line: int, answers=("chosen", "rejected")) -> Pair:
    """One row: ``prompt``/``messages`` and two answers (``chosen``/``rejected`` by default;
    ``answers=None``: ``answer_a``/``answer_b`` when the row has them, as the queue's comparison
    records do, else ``chosen``/``rejected``)."""
    if not isinstance(record, dict):
        raise PairFileError(f"{where}: must be a JSON object")
    if answers is None:
        answers = ("answer_a", "answer_b") if "answer_a" in record else ("chosen", "rejected")
    first, second = answers
    for name in answers:
        if name not in record:
            raise PairFileError(f"{where}: {name}: is required")
    if "messages" in record:
        prompt = record["messages"]
    elif "prompt" in record:
        prompt = record["prompt"]
    else:
        prompt = _implicit(record[first], record[second], where)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise PairFileError(f"{where}: prompt: must be non-empty text")
        prompt = [{"role": "user", "content": prompt}]
    try:
        messages = check_messages(prompt, where)
    except PromptFileError as exc:
        raise PairFileError(str(exc).replace(": messages", ": prompt", 1)) from None
    pid = record.get("id", f"line-{line}")
    if not isinstance(pid, str) or not pid:
        pid = str(pid)
    return Pair(pid, messages, _text(record[first], where, first), _text(record[second], where, second), line)


def load_pairs(path: str | Path, answers=("chosen", "rejected")) -> list[Pair]:
    """Reads a JSONL comparison file; raises ``PairFileError`` naming FILE:LINE on a bad row."""
    path = Path(path)
    pairs = [read_pair(record, where, number, answers) for where, number, record in jsonl_records(path, PairFileError)]
    if not pairs:
        raise PairFileError(f"{path}:1: holds no comparisons")
    return pairs


async def judge_orders(
    address: str, pairs: list[Pair], seed: int = 0, batch_size: int = 64, principle_id: str = ""
) -> tuple[list[float], list[float], list[str], dict]:
    """Raw p_a of each pair with answer_a first and with answer_a second (log-prob mode, no swap),
    the principle of each pair, and the judge as its labels' provenance names it."""
    from services.api.cai.v1 import judge_pb2
    from services.judge.client import JudgeClient

    first, second, principles, judge = [], [], [], {}
    async with JudgeClient(address) as stub:
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            comparisons = []
            for p in chunk:
                conv = conversation(p.messages, p.id)
                comparisons += [
                    judge_pb2.Comparison(
                        prompt=conv, answer_a=a, answer_b=b, principle_id=principle_id, id=f"{p.id}/{o}"
                    )
                    for o, a, b in (("ab", p.answer_a, p.answer_b), ("ba", p.answer_b, p.answer_a))
                ]
            response = await stub.Compare(
                judge_pb2.CompareRequest(
                    comparisons=comparisons, mode=judge_pb2.JUDGE_MODE_LOGPROB, swap_debias=False, seed=seed
                ),
                timeout=3600,
            )
            labels = list(response.labels)
            first += [label.p_a for label in labels[0::2]]
            second += [label.p_a for label in labels[1::2]]
            principles += [label.principle_id for label in labels[0::2]]
            pv = labels[0].provenance
            judge = {
                "model": pv.model,
                "checkpoint": pv.checkpoint,
                "constitution_file": pv.constitution_file,
                "constitution_sha256": pv.constitution_sha256,
            }
    return first, second, principles, judge


def reliability(predictions: list[float], outcomes: list[float], bins: int = BINS) -> tuple[float, list[dict]]:
    """(ECE, bins): equal-width bins of the predicted probability on [0, 1]."""
    rows = []
    n = len(predictions)
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(p, o) for p, o in zip(predictions, outcomes) if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        row = {"lo": lo, "hi": hi, "count": len(inside)}
        if inside:
            row["mean_p"] = sum(p for p, _ in inside) / len(inside)
            row["frequency"] = sum(o for _, o in inside) / len(inside)
            ece += len(inside) / n * abs(row["mean_p"] - row["frequency"])
        rows.append(row)
    return ece, rows


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def _accuracy(p_correct) -> float:
    return _mean(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in p_correct)


def summarize(first: list[float], second: list[float]) -> dict:
    """The figures from the raw p_a of each pair in both orders (``first``: chosen is A)."""
    correct_first = list(first)  # chosen shown as A: p(correct) = p_a
    correct_second = [1.0 - p for p in second]  # chosen shown as B
    debiased = [(a + b) / 2.0 for a, b in zip(correct_first, correct_second)]
    predictions = list(first) + list(second)
    outcomes = [1.0] * len(first) + [0.0] * len(second)
    ece, bins = reliability(predictions, outcomes)
    debiased_ece, _ = reliability([*debiased, *(1.0 - p for p in debiased)], outcomes)
    every = predictions
    return {
        "pairs": len(first),
        "accuracy": _accuracy(debiased),
        "accuracy_chosen_first": _accuracy(correct_first),
        "accuracy_chosen_second": _accuracy(correct_second),
        "mean_p_correct": _mean(debiased),
        "mean_p_correct_chosen_first": _mean(correct_first),
        "mean_p_correct_chosen_second": _mean(correct_second),
        "ece": ece,
        "ece_debiased": debiased_ece,
        "reliability": bins,
        "position_bias": {
            "mean_p_a_chosen_first": _mean(first),
            "mean_p_a_chosen_second": _mean(second),
            "mean_p_a": _mean(every),
            "prefers_a": _mean(1.0 if p > 0.5 else 0.0 for p in every),
            "prefers_b": _mean(1.0 if p < 0.5 else 0.0 for p in every),
        },
    }


def reliability_png(bins: list[dict], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    filled = [b for b in bins if b["count"]]
    ax.bar(
        [(b["lo"] + b["hi"]) / 2 for b in filled],
        [b["frequency"] for b in filled],
        width=1 / len(bins),
        edgecolor="black",
        alpha=0.6,
        label="fraction where A is the chosen answer",
    )
    ax.plot([b["mean_p"] for b in filled], [b["frequency"] for b in filled], "o-", color="C3", label="bin mean p_a")
    for b in filled:
        ax.annotate(str(b["count"]), ((b["lo"] + b["hi"]) / 2, b["frequency"]), ha="center", va="bottom", fontsize=8)
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="judge p_a", ylabel="observed frequency", title=title)
    ax.legend(loc="upper left", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def html_page(title: str, summary_rows: list[tuple[str, str]], png: bytes, extra: str = "") -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary_rows)
    image = base64.b64encode(png).decode()
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}th{text-align:left;padding-right:1em}"
        "td,th{border-bottom:1px solid #ddd;padding:.2em .5em;vertical-align:top}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table>{rows}</table>"
        f"<p><img alt='plot' src='data:image/png;base64,{image}'></p>{extra}</body></html>\n"
    )


def write_report(result: dict, out: str | Path) -> dict:
    """validation.json, reliability.png and validation.html in ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = result["summary"]
    pb = s["position_bias"]
    png = reliability_png(s["reliability"], f"Judge reliability ({s['pairs']} pairs, both orders)")
    files = {"json": out / "validation.json", "png": out / "reliability.png", "html": out / "validation.html"}
    files["json"].write_text(json.dumps(result, indent=2) + "\n")
    files["png"].write_bytes(png)
    rows = [
        ("pairs file", f"{result['pairs_file']} (sha256 {result['pairs_sha256'][:16]})"),
        (
            "judge",
            f"{result['judge']} (model {result['judge_provenance'].get('model', '?')}, constitution "
            f"{result['judge_provenance'].get('constitution_file', '?')} "
            f"{result['judge_provenance'].get('constitution_sha256', '')[:12]})",
        ),
        ("seed", str(result["seed"])),
        ("pairs", str(s["pairs"])),
        ("accuracy (both orders averaged)", f"{s['accuracy']:.3f}"),
        ("accuracy, chosen first / second", f"{s['accuracy_chosen_first']:.3f} / {s['accuracy_chosen_second']:.3f}"),
        ("mean p(correct)", f"{s['mean_p_correct']:.3f}"),
        (
            "mean p(correct), chosen first / second",
            f"{s['mean_p_correct_chosen_first']:.3f} / {s['mean_p_correct_chosen_second']:.3f}",
        ),
        ("ECE (10 bins, raw judgments)", f"{s['ece']:.3f}"),
        ("ECE (debiased labels)", f"{s['ece_debiased']:.3f}"),
        ("mean p_a, chosen first / second", f"{pb['mean_p_a_chosen_first']:.3f} / {pb['mean_p_a_chosen_second']:.3f}"),
        ("judgments preferring position A / B", f"{pb['prefers_a']:.3f} / {pb['prefers_b']:.3f}"),
    ]
    worst = sorted(result["items"], key=lambda r: r["p_correct"])[:5]
    extra = (
        "<h2>Pairs the judge got most wrong</h2><table>"
        + "".join(
            f"<tr><td>{html.escape(r['id'])} (line {r['line']})</td><td>p(correct) {r['p_correct']:.3f}</td>"
            f"<td>{html.escape(r['principle_id'])}</td></tr>"
            for r in worst
        )
        + "</table>"
    )
    files["html"].write_text(html_page("Judge validation", rows, png, extra))
    return {k: str(v) for k, v in files.items()}


async def validate(
    pairs_file: str | Path,
    address: str,
    *,
    judge: str = "",
    seed: int = 0,
    limit: int = 0,
    batch_size: int = 64,
    principle_id: str = "",
) -> dict:
    """Runs the labelled pairs through the judge at ``address``; the result as a JSON-able dict."""
    import hashlib

    pairs = load_pairs(pairs_file)
    if limit:
        pairs = pairs[:limit]
    first, second, principles, provenance = await judge_orders(address, pairs, seed, batch_size, principle_id)
    items = [
        {
            "id": p.id,
            "line": p.line,
            "principle_id": pr,
            "p_a_chosen_first": a,
            "p_a_chosen_second": b,
            "p_correct": (a + 1.0 - b) / 2.0,
        }
        for p, a, b, pr in zip(pairs, first, second, principles)
    ]
    return {
        "pairs_file": str(pairs_file),
        "pairs_sha256": hashlib.sha256(Path(pairs_file).read_bytes()).hexdigest(),
        "judge": judge or address,
        "judge_provenance": provenance,
        "seed": seed,
        "principle_id": principle_id or "(sampled per pair)",
        "summary": summarize(first, second),
        "items": items,
    }
