"""The test tree itself: pytest imports test files by their base name ("rootdir" import mode, no
package under tests/ for most folders), so two test files with one name in two folders stop the
whole run at collection ("import file mismatch") — in CI, where every folder is collected."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_two_test_files_outside_packages_share_a_name():
    by_name = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        if not (path.parent / "__init__.py").exists():
            by_name[path.name].append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not clashes, f"rename one of each: {clashes}"
