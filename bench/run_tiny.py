"""Time of ``cai run`` on the shipped tiny config, stage by stage.
Run: ``.venv/bin/python -m bench.run_tiny``."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from bench._common import report
from services.config import load_config
from services.paths import REPO_ROOT
from services.pipeline.run import RunConfig, run_pipeline


def main() -> None:
    cfg = load_config(RunConfig, REPO_ROOT / "configs" / "tiny.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        summary = asyncio.run(run_pipeline(cfg, Path(tmp) / "run"))
    stages = summary["stage_seconds"]
    report("run_tiny", {"stage_seconds": stages, "total_seconds": sum(stages.values()),
                        "labels_per_second": summary["label"]["comparisons_per_second"]})


if __name__ == "__main__":
    main()
