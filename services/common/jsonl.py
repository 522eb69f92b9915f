"""Append-only JSONL files that survive interruption: resumable pipeline outputs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
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
