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


def _line_checked() -> list[str]:
    """The RUFF_LINE_LENGTH list of scripts/test (declared once, there)."""
    match = re.search(r"^RUFF_LINE_LENGTH=\((.*)\)$", (REPO / "scripts" / "test").read_text(), re.M)
    assert match, "scripts/test: no RUFF_LINE_LENGTH=(...) line"
    return match.group(1).split()


@pytest.mark.parametrize(
    "args",
    [["check", "."], ["check", "--extend-select", "E501", *_line_checked()], ["format", "--check", "."]],
    ids=["lint", "line-length-of-wrapped-files", "format"],
)
def test_ruff_passes(args):
    assert RUFF, "ruff is not installed: it is in the test extra (pip install -e .[test])"
    out = subprocess.run([RUFF, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
