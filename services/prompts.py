"""Prompt sets: JSONL files of chat conversations (format in ``prompts/README.md``).

``load_prompts(path)`` reads a JSONL file (or a Hugging Face dataset folder saved on this machine)
into ``Prompt`` records. A bad line raises ``PromptFileError`` naming the file, the line and the
field; nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from services.common.jsonl import jsonl_records
from services.errors import InvalidArgument
from services.paths import data_dir

RED_TEAM = data_dir("prompts") / "red_team.jsonl"
HELPFULNESS = data_dir("prompts") / "helpfulness.jsonl"
HELPFULNESS_PAIRS = data_dir("prompts") / "helpfulness_pairs.jsonl"
_ROLES = ("system", "user", "assistant")


class PromptFileError(InvalidArgument):
    """A prompt file that cannot be used; the message is ``FILE:LINE: FIELD: reason``."""


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: tuple[dict, ...]
    category: str = ""
    meta: dict = field(default_factory=dict, compare=False)
    """Other fields of the line (for example ``over_refusal_bait``, ``chosen``, ``rejected``)."""


def check_messages(messages, where: str) -> tuple[dict, ...]:
    if not isinstance(messages, list) or not messages:
        raise PromptFileError(f"{where}: messages: must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"}:
            raise PromptFileError(f'{where}: messages[{i}]: must be {{"role": ..., "content": ...}}')
        if m.get("role") not in _ROLES:
            raise PromptFileError(f"{where}: messages[{i}].role: must be one of {', '.join(_ROLES)}")
        if not isinstance(m.get("content"), str) or (not m["content"].strip() and m["role"] != "system"):
            raise PromptFileError(f"{where}: messages[{i}].content: must be non-empty text")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise PromptFileError(f"{where}: messages: the last message must be from user")
    return tuple(out)


def _from_record(record: dict, where: str, line_id: str) -> Prompt:
    if not isinstance(record, dict):
        raise PromptFileError(f"{where}: must be a JSON object")
    pid = record.get("id", line_id)
    if not isinstance(pid, str) or not pid:
        raise PromptFileError(f"{where}: id: must be non-empty text")
    if "messages" in record:
        messages = check_messages(record["messages"], where)
    elif isinstance(record.get("prompt"), str) and record["prompt"].strip():
        messages = ({"role": "user", "content": record["prompt"]},)
    else:
        raise PromptFileError(f"{where}: messages: is required (or a non-empty `prompt` text)")
    category = record.get("category", "")
    if not isinstance(category, str):
        raise PromptFileError(f"{where}: category: must be text")
    meta = {k: v for k, v in record.items() if k not in ("id", "messages", "prompt", "category")}
    return Prompt(pid, messages, category, meta)


def load_prompts(path: str | Path) -> list[Prompt]:
    """Reads a prompt set. Ids must be unique within it."""
    path = Path(path)
    if path.is_dir():
        return _load_dataset_folder(path)
    prompts, seen = [], {}
    for where, number, record in jsonl_records(path, PromptFileError):
        prompt = _from_record(record, where, f"{path.stem}-{number}")
        if prompt.id in seen:
            raise PromptFileError(f"{where}: id: {prompt.id!r} already used on line {seen[prompt.id]}")
        seen[prompt.id] = number
        prompts.append(prompt)
    if not prompts:
        raise PromptFileError(f"{path}:1: holds no prompts")
    return prompts


def _load_dataset_folder(path: Path) -> list[Prompt]:
    """A Hugging Face dataset on this machine (``save_to_disk`` folder, or data files a
    ``load_dataset(folder)`` reads) with ``messages`` or ``prompt`` columns; ``id`` optional."""
    import datasets

    try:
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            data = datasets.load_from_disk(str(path))
        else:
            data = datasets.load_dataset(str(path))
    except Exception as exc:
        raise PromptFileError(f"{path}:1: not a dataset folder: {exc}") from None
    if isinstance(data, datasets.DatasetDict):
        split = "train" if "train" in data else next(iter(data))
        data = data[split]
    prompts, seen = [], set()
    for i, record in enumerate(data):
        prompt = _from_record(dict(record), f"{path}[row {i}]", f"{path.name}-{i}")
        if prompt.id in seen:
            raise PromptFileError(f"{path}[row {i}]: id: {prompt.id!r} is used twice")
        seen.add(prompt.id)
        prompts.append(prompt)
    if not prompts:
        raise PromptFileError(f"{path}:1: holds no prompts")
    return prompts


# --- the prompt split: one train/eval split honoured by every command ------------------------

TRAIN, EVAL, ALL = "train", "eval", "all"
EVAL_FRACTION = 0.2
"""Default share of the prompts held out for evaluation."""


def prompt_part(prompt_id: str, eval_fraction: float = EVAL_FRACTION) -> str:
    """``eval`` or ``train``: a stable hash of the prompt id, the same on every machine and run,
    whatever file or position the prompt has, so a prompt stays on its side of the split."""
    h = int(hashlib.sha256(f"cai-split/{prompt_id}".encode()).hexdigest()[:15], 16) / float(16**15)
    return EVAL if h < eval_fraction else TRAIN


def split_prompts(prompts, part: str, eval_fraction: float = EVAL_FRACTION) -> list:
    """The prompts of one part of the split (``train``, ``eval`` or ``all``), in file order.
    ``prompts``: anything with an ``id`` (``Prompt``, ``Pair``)."""
    if part not in (TRAIN, EVAL, ALL):
        raise ValueError(f"split part must be train, eval or all, got {part!r}")
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction!r}")
    if part == ALL:
        return list(prompts)
    return [p for p in prompts if prompt_part(p.id, eval_fraction) == part]


def file_sha256(path) -> str:
    """SHA-256 of a prompt file (recorded beside the split so a result names its exact prompts)."""
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""


def split_record(files: dict, part: str, eval_fraction: float = EVAL_FRACTION) -> dict:
    """What a result records about the prompts it used: the part, the fraction, each file's hash."""
    return {
        "part": part,
        "eval_fraction": eval_fraction,
        "method": "sha256('cai-split/' + prompt id)",
        "files": {name: {"path": str(path), "sha256": file_sha256(path)} for name, path in files.items() if path},
    }
