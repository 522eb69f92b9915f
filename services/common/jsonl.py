"""Append-only JSONL files that survive interruption: resumable pipeline outputs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


def read_rows(path: Path) -> list[dict]:
    """All complete rows. A torn last line (the process died mid-write) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return [json.loads(line) for line in data[:end].decode().splitlines() if line.strip()]


def append_rows(path: Path, rows: Iterable[dict]) -> None:
    """Appends rows in one write and makes them durable before returning."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if not text:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def jsonl_records(path: Path, error: type[Exception] = ValueError) -> Iterator[tuple[str, int, object]]:
    """``(where, line number, record)`` for each non-blank line of the JSONL file ``path``, where
    is ``FILE:LINE``; ``error`` naming ``FILE:1`` when the file cannot be read as text and
    ``FILE:LINE`` when a line is not JSON."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise error(f"{path}:1: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}:1: not UTF-8 text ({exc.reason})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        yield where, number, record
