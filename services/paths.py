"""Working folders of the project (caches, converted models, engine sockets) and its data folders
(constitutions/, prompts/, k8s/), wherever the project is installed.

In a source checkout (editable install) the data folders are the repository's own. A wheel ships
them as package data under ``services/_data/`` (symlinks to the repository's folders, followed
when the wheel is built) and they are read through ``importlib.resources``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The source checkout (when ``pyproject.toml`` is beside ``services/``), else site-packages."""

DATA_FOLDERS = ("constitutions", "prompts", "k8s")


def is_source_checkout() -> bool:
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "services").is_dir()


def data_dir(name: str) -> Path:
    """One of constitutions/, prompts/, k8s/: the checkout's folder, or the installed package data.
    Installed packages are plain folders on disk (kustomize needs real paths), which
    ``importlib.resources`` returns as such."""
    if name not in DATA_FOLDERS:
        raise ValueError(f"no data folder {name!r} (known: {', '.join(DATA_FOLDERS)})")
    if is_source_checkout():
        return REPO_ROOT / name
    return Path(str(resources.files("services").joinpath("_data", name)))


def cache_dir() -> Path:
    """``$CAI_CACHE_DIR``, else ``.cache/`` in the source checkout, else ``$XDG_CACHE_HOME/cai``
    (``~/.cache/cai``) for an installed package. Created on first use."""
    if os.environ.get("CAI_CACHE_DIR"):
        path = Path(os.environ["CAI_CACHE_DIR"])
    elif is_source_checkout():
        path = REPO_ROOT / ".cache"
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cai"
    path.mkdir(parents=True, exist_ok=True)
    return path
