"""Checkpoints: a Hugging Face folder (safetensors) plus ``manifest.json`` saying what it is."""

from __future__ import annotations

import json
import time
from pathlib import Path

MANIFEST = "manifest.json"


def write_manifest(folder: Path, *, kind: str, step: int, base_model: str, data: dict,
                   constitution_sha256: str = "", metrics: dict | None = None, **extra) -> dict:
    manifest = {
        "id": folder.name,
        "kind": kind,
        "step": step,
        "base_model": base_model,
        "data": data,
        "constitution_sha256": constitution_sha256,
        "metrics": metrics or {},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())
