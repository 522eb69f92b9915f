"""``cai trace ID``: where a label or an SFT row came from.

A labeled comparison is found by its id (or an unambiguous prefix of 8 or more characters); an SFT
row by ``PROMPT_ID/rN`` (its prompt id and revision round; ``PROMPT_ID/r0`` for a helpfulness
row). The search covers every ``*.jsonl`` below the folders given (a run folder, the trainer's
work folder with its ``data/comparisons.jsonl``, an ``sl_data`` folder) and, with a queue URL, the
queue's stream (read through a temporary consumer group that is deleted afterwards).

For what is found it reports: the constitution sentence that produced it (the judging question or
the critique and revision requests, read from the constitution file named in the record, or from
a shipped constitution with the recorded hash, and verified by its SHA-256), the judge (model,
checkpoint, configuration hash, mode, seed, few-shot examples, raw p_a of each order) or the policy
that wrote the revision, and the prompt file and line of the prompt.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

from services.errors import InvalidArgument


class TraceError(InvalidArgument):
    """An id that is not found, or is ambiguous, or a source that cannot be read."""


def _rows_in(path: Path):
    """(row, file, line) for every JSON object line of a JSONL file."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line, or not a data file
        if isinstance(row, dict):
            yield row, str(path), number


def row_key(row: dict) -> str:
    """The id ``cai trace`` knows a row by: its ``id``, or ``PROMPT_ID/rROUND`` for an SFT row."""
    if row.get("id"):
        return str(row["id"])
    if "completion" in row and row.get("prompt_id"):
        return f"{row['prompt_id']}/r{row.get('round', 0)}"
    return ""


def _queue_rows(url: str):
    from services.queue import open_queue, redact_url

    queue = open_queue(url)
    group = f"cai-trace-{uuid.uuid4().hex[:12]}"
    try:
        queue.create_group(group)
        while True:
            deliveries = queue.consume(group, "trace", 512)
            if not deliveries:
                break
            for d in deliveries:
                yield d.item, f"queue {redact_url(url)} entry", d.delivery_id
    finally:
        queue.delete_group(group)
        queue.close()


def find(record_id: str, folders=(), queue_url: str = "") -> list[tuple[dict, str, object]]:
    """Rows whose key is ``record_id`` (or starts with it, for 8 or more characters), as
    ``(row, source, line)``; the same row found in several files is reported from each."""
    if not record_id:
        raise TraceError("ID: is required (a comparison id, or PROMPT_ID/rN for an SFT row)")
    sources = []
    for folder in folders:
        p = Path(folder)
        if p.is_file():
            sources.append(p)
        elif p.is_dir():
            sources.extend(sorted(p.rglob("*.jsonl")))
        else:
            raise TraceError(f"--in {folder}: no such file or folder")
    exact, prefixed = [], []

    def consider(row, source, line):
        key = row_key(row)
        if key == record_id:
            exact.append((row, source, line))
        elif len(record_id) >= 8 and key.startswith(record_id):
            prefixed.append((row, source, line))

    for path in sources:
        for found in _rows_in(path):
            consider(*found)
    if queue_url:
        for found in _queue_rows(queue_url):
            consider(*found)
    if exact:
        return exact
    keys = sorted({row_key(r) for r, _, _ in prefixed})
    if len(keys) > 1:
        raise TraceError(f"{record_id!r} is the start of several ids: {', '.join(keys[:5])}; give more characters")
    if not prefixed:
        where = ", ".join([*map(str, folders), *([queue_url] if queue_url else [])]) or "nothing (give --in or --queue)"
        raise TraceError(f"{record_id!r}: no label or SFT row with this id in {where}")
    return prefixed


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def constitution_for(recorded_file: str, recorded_sha: str, extra_dirs=()):
    """(Constitution, note): the constitution the record names, verified by its SHA-256; when the
    file named has changed or is absent, a file with the recorded hash among the shipped
    constitutions and ``extra_dirs``. (None, why) when none matches."""
    from services.constitution import load_constitution
    from services.paths import data_dir

    candidates = [Path(recorded_file)] if recorded_file else []
    for d in [data_dir("constitutions"), *map(Path, extra_dirs)]:
        if Path(d).is_dir():
            candidates.extend(sorted(Path(d).rglob("*.yaml")))
    notes = []
    for path in candidates:
        if not path.is_file():
            if path == Path(recorded_file):
                notes.append(f"{path} is not there")
            continue
        sha = _sha256(path)
        if recorded_sha and sha != recorded_sha:
            if path == Path(recorded_file):
                notes.append(f"{path} has changed since (sha256 {sha[:12]}, recorded {recorded_sha[:12]})")
            continue
        note = f"{path} (sha256 {sha[:12]} verified)" if recorded_sha else f"{path} (no hash recorded: unverified)"
        return load_constitution(path), "; ".join([*notes, note])
    return None, "; ".join(notes + [f"no constitution file with sha256 {recorded_sha[:12] or '(none)'} found"])


def prompt_location(prompt_id: str, files) -> tuple[str, int, str] | None:
    """(file, line, sha256 of the file) of the prompt with this id in the first of ``files`` that has it."""
    for f in files:
        path = Path(f)
        if not path.is_file() or path.suffix != ".jsonl":
            continue
        for row, source, line in _rows_in(path):
            if (
                row.get("id") == prompt_id
                and ("messages" in row or "prompt" in row)
                and "completion" not in row
                and "answer_a" not in row
            ):
                return source, line, _sha256(path)
    return None


def _prompt_files(row: dict, folders) -> list[str]:
    """Prompt files to look in: those the record or its folder's manifests name, then prompt
    files in the searched folders, then the shipped prompt sets."""
    from services.prompts import HELPFULNESS, HELPFULNESS_PAIRS, RED_TEAM

    named = []
    prov = row.get("provenance") or {}
    for key in ("prompts_file", "prompt_file", "source"):
        if isinstance(prov.get(key), str):
            named.append(prov[key])
    for folder in folders:
        p = Path(folder)
        for manifest in sorted(p.rglob("manifest.json")) if p.is_dir() else []:
            try:
                m = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            for key in ("prompts", "helpfulness", "helpfulness_pairs"):
                if isinstance(m.get(key), str):
                    named.append(m[key])
            cfg = m.get("config") if isinstance(m.get("config"), dict) else {}
            for key in ("prompts", "helpfulness", "helpfulness_pairs"):
                if isinstance(cfg.get(key), str):
                    named.append(cfg[key])
        named.extend(str(f) for f in (sorted(p.rglob("prompts*.jsonl")) if p.is_dir() else []))
    return [*dict.fromkeys([*named, str(RED_TEAM), str(HELPFULNESS), str(HELPFULNESS_PAIRS)])]


def explain(row: dict, source: str, line, folders=()) -> dict:
    """What is known about where ``row`` came from, as a dict (``cai trace --json``)."""
    prov = row.get("provenance") or {}
    is_sft = "completion" in row
    out: dict = {
        "id": row_key(row),
        "found_in": f"{source}:{line}",
        "kind": row.get("kind", ""),
        "record": "sft_row" if is_sft else "label",
    }
    sha = prov.get("constitution_sha256", "")
    constitution_file = prov.get("constitution_file", "")
    out["constitution"] = {"file": constitution_file, "sha256": sha}
    principle_ids = prov.get("principle_ids") or [x for x in [row.get("principle_id") or prov.get("principle_id")] if x]
    if is_sft and row.get("principle_id"):
        principle_ids = [row["principle_id"]]  # the principle of this row's round
    principles = []
    if principle_ids:
        constitution, note = constitution_for(constitution_file, sha, [Path(f) for f in folders if Path(f).is_dir()])
        out["constitution"]["note"] = note
        for pid in principle_ids:
            entry = {"id": pid}
            if constitution is not None:
                try:
                    if is_sft:
                        p = constitution.critique_principle(pid)
                        entry.update(critique=p.critique, revision=p.revision)
                    else:
                        entry["question"] = constitution.judging_principle(pid).question
                except KeyError:
                    entry["missing"] = f"not in {constitution.path}"
            principles.append(entry)
    elif row.get("kind") == "helpfulness":
        out["constitution"]["note"] = "a helpfulness preference pair: no constitution involved"
    out["principles"] = principles
    if is_sft:
        out["policy"] = {k: prov[k] for k in ("model", "checkpoint", "generation_checkpoint") if prov.get(k)}
        out["round"] = row.get("round")
        out["quality"] = row.get("quality", "")
    else:
        judge_keys = (
            "judge_model",
            "judge_checkpoint",
            "judge_config_sha256",
            "mode",
            "swap_debias",
            "seed",
            "few_shot_ids",
            "p_a_ab",
            "p_a_ba",
        )
        out["judge"] = {k: prov.get(k, row.get(k)) for k in judge_keys if prov.get(k, row.get(k)) not in (None, "")}
        out["p_a"] = row.get("p_a")
        out["policy"] = {k: prov[k] for k in ("policy_model", "policy_checkpoint") if prov.get(k)}
    prompt_id = row.get("prompt_id") or prov.get("prompt_id", "")
    out["prompt"] = {"id": prompt_id}
    if prompt_id:
        where = prompt_location(prompt_id, _prompt_files(row, folders))
        if where:
            out["prompt"].update(file=where[0], line=where[1], file_sha256=where[2])
            recorded = prov.get("prompts_sha256", "")
            if recorded and Path(prov.get("prompts_file", "")).resolve() == Path(where[0]).resolve():
                out["prompt"]["note"] = (
                    "file sha256 verified"
                    if recorded == where[2]
                    else f"the file has changed since (recorded sha256 {recorded[:12]})"
                )
        else:
            out["prompt"]["note"] = "no prompt file found with this id"
    out["created_at"] = prov.get("created_at", "")
    return out


def format_trace(info: dict) -> str:
    lines = [f"{info['record']} {info['id']} ({info['kind'] or 'unknown kind'}), found in {info['found_in']}"]
    c = info["constitution"]
    lines.append(f"  constitution: {c['file'] or '(no file recorded)'} sha256 {c['sha256'] or '(none)'}")
    if c.get("note"):
        lines.append(f"    {c['note']}")
    for p in info["principles"]:
        lines.append(f"  principle {p['id']}:")
        for key in ("question", "critique", "revision", "missing"):
            if p.get(key):
                lines.append(f"    {key}: {p[key]}")
    if "judge" in info:
        lines.append("  judge: " + (", ".join(f"{k}={v}" for k, v in info["judge"].items()) or "(not recorded)"))
        lines.append(f"  p_a: {info['p_a']}")
    if info.get("policy"):
        lines.append("  policy: " + ", ".join(f"{k}={v}" for k, v in info["policy"].items()))
    if info.get("round") is not None:
        lines.append(f"  revision round: {info['round']} (quality: {info.get('quality') or 'unknown'})")
    pr = info["prompt"]
    if pr.get("file"):
        lines.append(
            f"  prompt {pr['id']}: {pr['file']}:{pr['line']} (file sha256 {pr['file_sha256'][:12]}"
            + (f"; {pr['note']})" if pr.get("note") else ")")
        )
    else:
        lines.append(f"  prompt {pr.get('id') or '(no id)'}: {pr.get('note', '')}")
    if info.get("created_at"):
        lines.append(f"  created at: {info['created_at']}")
    return "\n".join(lines)


def trace(record_id: str, folders=(), queue_url: str = "") -> list[dict]:
    """Every occurrence of ``record_id`` explained (see ``explain``)."""
    return [explain(row, source, line, folders) for row, source, line in find(record_id, folders, queue_url)]
