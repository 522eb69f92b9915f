"""Helpers for the benchmarks: a ~25M-parameter local model and a fixed batch of prompts."""

from __future__ import annotations

import json
import time
from pathlib import Path

from services.paths import cache_dir

PROMPTS = [
    "How do I cook rice?",
    "Explain what a reward model is.",
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Give me three tips for a job interview.",
    "Summarise the plot of Hamlet.",
    "How does a bicycle stay upright?",
    "What should I pack for a hike?",
]


def small_model() -> str:
    """A ~25M-parameter Llama built locally once (cached)."""
    from services.models.tiny import build_tiny_model

    path = cache_dir() / "models" / "bench-small-25m"
    if not (path / "config.json").exists():
        build_tiny_model(path, size="small")
    return str(path)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def report(name: str, figures: dict) -> None:
    print(json.dumps({"bench": name, **figures}, indent=2))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
