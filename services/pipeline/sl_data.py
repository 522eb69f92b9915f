"""``cai sl-data``: the supervised-phase (SL-CAI) dataset, produced through the services.

For every red-team prompt the policy answers (Generation), then the answer goes through
``rounds`` of critique and revision (Critique). One row is written per round; SL-CAI-n trains on
the revisions of rounds 1..n (the original method trains on every round's revisions).
Helpfulness prompts get the policy's answers as rows with ``round == 0``. Rows are
conversational prompt/completion, which TRL's SFT trainer reads as they are; every row carries
its provenance.

Every row has a ``quality``: ``ok``, or the first of its problems (all in ``quality_problems``):
``all_rounds_failed`` (rounds 1..n all gave unusable revisions, so the row holds the initial
answer or its placeholder), ``scaffold_leak`` (the text holds prompt scaffolding such as
"Critique request:" or "Another example", see ``critique.prompting.leaked_scaffolding``),
``truncated`` (it stopped at max_tokens before the model finished it), ``empty``. Rows that are
not ``ok`` are not trained on unless asked; the manifest counts them.

Output folder:
  sl_cai.jsonl       harmlessness rows, one per (prompt, round)
  helpfulness.jsonl  helpfulness rows
  manifest.json      what produced the data (config, constitution, model), counts

Re-running with the same folder resumes: prompts whose rows are all written are skipped; rows are
written per prompt and flushed to disk, so an interrupted run neither loses nor duplicates rows.
Resuming compares the whole configuration that makes the data (rounds, sampling, seed, prompt
files and their hashes, policy model, constitution hash) and refuses to mix datasets.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.common.client import prompt_conversation
from services.common.jsonl import append_rows, read_rows
from services.critique.client import CritiqueClient
from services.critique.prompting import leaked_scaffolding
from services.engines.config import EngineConfig
from services.generation.client import GenerationClient
from services.prompts import EVAL_FRACTION, HELPFULNESS, RED_TEAM, TRAIN, Prompt, load_prompts, split_prompts

HARMLESS_FILE = "sl_cai.jsonl"
HELPFUL_FILE = "helpfulness.jsonl"
OK = "ok"
PROBLEMS = ("all_rounds_failed", "scaffold_leak", "truncated", "empty")
"""Row problems, most serious first; a row's ``quality`` is its first problem or ``ok``."""
ALL_ROUNDS = 0
"""``rounds`` value of ``load_sft_dataset``/``cai train sft --rounds all``: every round."""


@dataclass(frozen=True)
class SLDataConfig:
    """Settings of ``cai sl-data`` (flags of the same names override)."""

    prompts: str = str(RED_TEAM)
    """Red-team prompts: JSONL file or a local Hugging Face dataset folder."""
    helpfulness: str = str(HELPFULNESS)
    """Helpfulness prompts (answered without revision); empty string: none."""
    rounds: int = 4
    """Critique/revision rounds per prompt."""
    limit: int = 0
    """Use only the first N prompts of each file's part (0: all)."""
    split: str = TRAIN
    """Part of the prompt split to use: "train" (default: the eval part stays held out for
    ``cai eval``), "eval" or "all"."""
    eval_fraction: float = EVAL_FRACTION
    """Share of the prompts in the eval part of the split (a stable hash of the prompt id)."""
    batch_size: int = 16
    """Prompts per Generate/Revise request."""
    max_tokens: int = 128
    """Longest initial answer and revision, in tokens (and critique, unless ``critique_max_tokens``)."""
    critique_max_tokens: int = 0
    """Longest critique, in tokens (critiques are asked to be two or three sentences); 0: ``max_tokens``."""
    temperature: float = 1.0
    """Sampling temperature (the method samples at 1)."""
    seed: int = 0
    """Seed of principle sampling and text sampling."""
    generation: str = ""
    """Address of a generation service; empty starts one in-process (the embedded default)."""
    critique: str = ""
    """Address of a critique service; empty starts one in-process."""
    policy: EngineConfig = field(default_factory=EngineConfig)
    """The policy for the embedded services (ignored when both addresses are given)."""
    constitution: str = ""
    """Constitution for the embedded critique service (default: constitutions/default.yaml)."""

    def validate(self):
        if self.rounds < 1:
            return "rounds", "must be at least 1"
        if self.batch_size < 1:
            return "batch_size", "must be at least 1"
        if self.critique_max_tokens < 0:
            return "critique_max_tokens", "must be 0 (max_tokens) or more"
        if self.split not in ("train", "eval", "all"):
            return "split", "must be train, eval or all"
        if not 0.0 <= self.eval_fraction <= 1.0:
            return "eval_fraction", "must be in [0, 1]"
        if bool(self.generation) != bool(self.critique):
            return "critique", "give both service addresses (generation and critique) or neither"
        return None


def _provenance(p) -> dict:
    return {
        "constitution_file": p.constitution_file,
        "constitution_sha256": p.constitution_sha256,
        "principle_ids": [x for x in p.principle_id.split(",") if x],
        "model": p.model,
        "checkpoint": p.checkpoint,
        "prompt_id": p.prompt_id,
        "created_at": p.created_at.ToJsonString(),
    }


async def _answers(gen: GenerationClient, prompts: list[Prompt], cfg: SLDataConfig):
    return await gen.generate(prompts, n=1, max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=cfg.seed)


def _quality(text: str, truncated: bool, failed: bool = False) -> dict:
    problems = {
        "all_rounds_failed": failed,
        "scaffold_leak": bool(leaked_scaffolding(text)),
        "truncated": truncated,
        "empty": not text.strip(),
    }
    found = [name for name in PROBLEMS if problems[name]]
    return {"quality": found[0] if found else OK, "quality_problems": found}


def row_quality(row: dict) -> str:
    """A row's quality; rows written before quality was recorded are judged from their text."""
    if "quality" in row:
        return row["quality"]
    text = row["completion"][-1]["content"]
    return _quality(text, False, bool(row.get("kept_previous")) and row.get("round", 0) == 1)["quality"]


def _nonempty(text: str) -> str:
    # The critique service rejects empty answers; an empty initial answer is a real outcome of
    # sampling, so it is revised from a visible placeholder rather than dropped.
    return text if text.strip() else "(no answer)"


async def _harmless_batch(gen_stub, crit_stub, prompts: list[Prompt], cfg: SLDataConfig) -> list[dict]:
    from services.api.cai.v1 import common_pb2, critique_pb2

    answers = await _answers(gen_stub, prompts, cfg)
    request = critique_pb2.ReviseRequest(
        items=[
            critique_pb2.ReviseItem(prompt=prompt_conversation(p), answer=_nonempty(c.samples[0].text))
            for p, c in zip(prompts, answers.completions)
        ],
        rounds=cfg.rounds,
        sampling=common_pb2.SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature),
        critique_max_tokens=cfg.critique_max_tokens,
        seed=cfg.seed,
    )
    from services.api.cai.v1 import common_pb2 as common

    response = await crit_stub.Revise(request, timeout=3600)
    rows = []
    for p, completion, chain in zip(prompts, answers.completions, response.chains):
        prov = _provenance(chain.provenance)
        initial_truncated = completion.samples[0].finish_reason == common.FINISH_REASON_LENGTH
        failed = True  # rounds 1..r all kept the previous answer: no revision yet
        for r in chain.rounds:
            failed = failed and r.kept_previous
            truncated = initial_truncated if failed else r.truncated
            rows.append(
                {
                    "prompt": list(p.messages),
                    "completion": [{"role": "assistant", "content": r.revision}],
                    "kind": "harmlessness",
                    "prompt_id": p.id,
                    "category": p.category,
                    "round": r.round,
                    "rounds": cfg.rounds,
                    "principle_id": r.principle_id,
                    "critique": r.critique,
                    "kept_previous": r.kept_previous,
                    **_quality(r.revision, truncated, failed),
                    "initial_answer": completion.samples[0].text,
                    "provenance": {
                        **prov,
                        "principle_ids": prov["principle_ids"][: r.round],
                        "generation_checkpoint": answers.checkpoint_id,
                    },
                }
            )
    return rows


async def _helpful_batch(gen_stub, prompts: list[Prompt], cfg: SLDataConfig) -> list[dict]:
    from services.api.cai.v1 import common_pb2

    answers = await _answers(gen_stub, prompts, cfg)
    return [
        {
            "prompt": list(p.messages),
            "completion": [{"role": "assistant", "content": c.samples[0].text}],
            "kind": "helpfulness",
            "prompt_id": p.id,
            "category": p.category,
            "round": 0,
            **_quality(c.samples[0].text, c.samples[0].finish_reason == common_pb2.FINISH_REASON_LENGTH),
            "provenance": {"model": answers.model, "checkpoint": answers.checkpoint_id, "prompt_id": p.id},
        }
        for p, c in zip(prompts, answers.completions)
    ]


def _check_constitution(out: Path, rows: list[dict], expected: str) -> None:
    """Refuses rows made under another constitution than the folder's (remote critique services)."""
    for row in rows:
        sha = row["provenance"]["constitution_sha256"]
        if expected and sha != expected:
            raise ValueError(
                f"{out}: holds data made under constitution {expected[:12]}; the critique "
                f"service uses {sha[:12]} ({row['provenance']['constitution_file']}): resuming "
                "would mix datasets (use another --out)"
            )


async def _produce(cfg: SLDataConfig, out: Path, addresses: dict, progress: bool, expected_sha: str = "") -> dict:
    from tqdm import tqdm

    harmful = split_prompts(load_prompts(cfg.prompts), cfg.split, cfg.eval_fraction)
    helpful = split_prompts(load_prompts(cfg.helpfulness), cfg.split, cfg.eval_fraction) if cfg.helpfulness else []
    if cfg.limit:
        harmful, helpful = harmful[: cfg.limit], helpful[: cfg.limit]
    done_h = {r["prompt_id"] for r in read_rows(out / HARMLESS_FILE)}
    done_p = {r["prompt_id"] for r in read_rows(out / HELPFUL_FILE)}
    todo_h = [p for p in harmful if p.id not in done_h]
    todo_p = [p for p in helpful if p.id not in done_p]
    written = 0
    started = time.perf_counter()
    async with GenerationClient(addresses["generation"]) as gen, CritiqueClient(addresses["critique"]) as crit:
        bar = tqdm(
            total=len(harmful) + len(helpful),
            initial=len(harmful) + len(helpful) - len(todo_h) - len(todo_p),
            desc="sl-data",
            unit="prompt",
            disable=not progress,
        )

        async def red_team_rows() -> None:
            nonlocal expected_sha, written
            for i in range(0, len(todo_h), cfg.batch_size):
                batch = todo_h[i : i + cfg.batch_size]
                rows = await _harmless_batch(gen, crit, batch, cfg)
                _check_constitution(out, rows, expected_sha)
                expected_sha = expected_sha or (rows[0]["provenance"]["constitution_sha256"] if rows else "")
                append_rows(out / HARMLESS_FILE, rows)
                written += len(rows)
                bar.update(len(batch))

        async def helpfulness_rows() -> None:
            nonlocal written
            for i in range(0, len(todo_p), cfg.batch_size):
                batch = todo_p[i : i + cfg.batch_size]
                rows = await _helpful_batch(gen, batch, cfg)
                append_rows(out / HELPFUL_FILE, rows)
                written += len(rows)
                bar.update(len(batch))

        # both in flight: the helpfulness answers share the engine's batches with the red-team answers
        tasks = [asyncio.ensure_future(red_team_rows()), asyncio.ensure_future(helpfulness_rows())]
        try:
            await asyncio.gather(*tasks)
        finally:  # one failed: the other stops too (its error, if any, is the first one's consequence)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        bar.close()
    seconds = time.perf_counter() - started
    return {
        "rows_written": written,
        "seconds": seconds,
        "prompts_skipped_as_done": len(harmful) + len(helpful) - len(todo_h) - len(todo_p),
    }


async def produce_sl_data(cfg: SLDataConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Writes (or completes) the SL-CAI dataset in ``out_dir``; returns the manifest."""
    from services.constitution import load_constitution
    from services.pipeline.embedded import EmbeddedSpec, services_at

    load_prompts(cfg.prompts)  # fail fast: a bad prompts file is reported before any engine starts
    if cfg.helpfulness:
        load_prompts(cfg.helpfulness)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    constitution = load_constitution(cfg.constitution or None) if not cfg.critique else None
    identity = data_identity(cfg, constitution.sha256 if constitution else "")
    previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if previous:
        check_same_data(out, previous.get("identity") or previous.get("config", {}), identity)
    written = read_rows(out / HARMLESS_FILE)
    expected_sha = (
        (written[0]["provenance"]["constitution_sha256"] if written else "")
        or previous.get("constitution_sha256", "")
        or identity["constitution_sha256"]
    )
    if not previous:  # recorded before the first row, so an interrupted first run is checked too
        manifest_path.write_text(
            json.dumps(
                {"config": asdict(cfg), "identity": identity, "constitution_sha256": expected_sha, "complete": False},
                indent=2,
            )
            + "\n"
        )
    spec = EmbeddedSpec(policy=cfg.policy, constitution=cfg.constitution)
    async with services_at({"generation": cfg.generation, "critique": cfg.critique}, spec) as addresses:
        stats = await _produce(cfg, out, addresses, progress, expected_sha)
    rows_h = read_rows(out / HARMLESS_FILE)
    rows_p = read_rows(out / HELPFUL_FILE)
    manifest = {
        "config": asdict(cfg),
        "identity": identity,
        "complete": True,
        "quality": {HARMLESS_FILE: _counts(rows_h), HELPFUL_FILE: _counts(rows_p)},
        "files": {HARMLESS_FILE: len(rows_h), HELPFUL_FILE: len(rows_p)},
        "harmlessness_prompts": len({r["prompt_id"] for r in rows_h}),
        "helpfulness_prompts": len(rows_p),
        "constitution_sha256": rows_h[0]["provenance"]["constitution_sha256"]
        if rows_h
        else (constitution.sha256 if constitution else ""),
        "last_run": stats,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _counts(rows: list[dict]) -> dict:
    counts = {OK: 0, **{name: 0 for name in PROBLEMS}}
    for row in rows:
        counts[row_quality(row)] += 1
    return counts


def _file_sha256(path: str) -> str:
    if not path:
        return ""
    p = Path(path)
    if p.is_file():
        return hashlib.sha256(p.read_bytes()).hexdigest()
    return (
        "folder:"
        + hashlib.sha256(
            "\n".join(f"{f.relative_to(p)}:{f.stat().st_size}" for f in sorted(p.rglob("*")) if f.is_file()).encode()
        ).hexdigest()
    )


def data_identity(cfg: SLDataConfig, constitution_sha256: str) -> dict:
    """Everything that decides what the rows are: resuming with another identity would mix datasets.
    (``limit``, batch size and service addresses may change between runs.)"""
    return {
        "rounds": cfg.rounds,
        "seed": cfg.seed,
        "max_tokens": cfg.max_tokens,
        "critique_max_tokens": cfg.critique_max_tokens or cfg.max_tokens,
        "temperature": cfg.temperature,
        "prompts": cfg.prompts,
        "prompts_sha256": _file_sha256(cfg.prompts),
        "helpfulness": cfg.helpfulness,
        "helpfulness_sha256": _file_sha256(cfg.helpfulness),
        "split": cfg.split,
        "eval_fraction": cfg.eval_fraction,
        "model": "" if cfg.generation else cfg.policy.model,
        "checkpoint_id": "" if cfg.generation else cfg.policy.checkpoint_id,
        "constitution_sha256": constitution_sha256,
    }


def check_same_data(out: Path, previous: dict, current: dict) -> None:
    """Raises ValueError naming the first setting that differs (settings the folder does not record
    are not compared: data from before they were recorded)."""
    for key, value in current.items():
        if key not in previous or (key in ("model", "checkpoint_id", "constitution_sha256") and not value):
            continue
        if previous[key] != value:
            raise ValueError(
                f"{out}: holds data made with {key}={previous[key]!r}; resuming with "
                f"{key}={value!r} would mix datasets (use another --out)"
            )


def load_sft_dataset(
    data_dir: str | Path, rounds: int | None = None, helpfulness: bool = True, include_flagged: bool = False
):
    """The SFT dataset for SL-CAI-n: the revisions of rounds 1..n (``rounds`` n; 0 or None: every
    round) plus helpfulness rows, as a ``datasets.Dataset`` with conversational prompt/completion
    columns. Rows whose quality is not ``ok`` are left out unless ``include_flagged``."""
    import datasets

    data_dir = Path(data_dir)
    rows = read_rows(data_dir / HARMLESS_FILE)
    if not rows:
        raise ValueError(f"{data_dir / HARMLESS_FILE}: no rows (run `cai sl-data` first)")
    last = max(r["round"] for r in rows)
    n = rounds or last
    if n > last:
        raise ValueError(f"{data_dir}: no rows of round {n} (the data has rounds 1..{last})")
    chosen = [r for r in rows if 1 <= r["round"] <= n]
    if helpfulness:
        chosen += read_rows(data_dir / HELPFUL_FILE)
    kept = chosen if include_flagged else [r for r in chosen if row_quality(r) == OK]
    if not kept:
        counts = {k: v for k, v in _counts(chosen).items() if v}
        raise ValueError(
            f"{data_dir}: none of the {len(chosen)} rows of rounds 1..{n} is clean "
            f"({', '.join(f'{k}: {v}' for k, v in counts.items())}); make the data again with a "
            "higher --max-tokens, or train on them anyway with --include-flagged"
        )
    return datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in kept])
