"""ruff (lint + format check, configured in pyproject.toml) passes: the same checks scripts/test runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


def _formatted() -> list[str]:
    """The RUFF_FORMATTED list of scripts/test (declared once, there)."""
    match = re.search(r"^RUFF_FORMATTED=\((.*)\)$", (REPO / "scripts" / "test").read_text(), re.M)
    assert match, "scripts/test: no RUFF_FORMATTED=(...) line"
    return match.group(1).split()


@pytest.mark.parametrize(
    "args",
    [["check", "."], ["check", "--extend-select", "E501", *_formatted()], ["format", "--check", *_formatted()]],
    ids=["lint", "line-length-of-formatted-files", "format"],
)
def test_ruff_passes(args):
    assert RUFF, "ruff is not installed: it is in the test extra (pip install -e .[test])"
    out = subprocess.run([RUFF, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
