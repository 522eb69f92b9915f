"""Working folders of the project: caches, converted models, engine sockets."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """``$CAI_CACHE_DIR``, else ``.cache/`` in the project folder. Created on first use."""
    path = Path(os.environ.get("CAI_CACHE_DIR") or REPO_ROOT / ".cache")
    path.mkdir(parents=True, exist_ok=True)
    return path
