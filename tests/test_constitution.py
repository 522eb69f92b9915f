"""Constitution files: the shipped default, validation errors with file/line/field, the CLI."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from collections import Counter

import pytest

from services.constitution import (
    DEFAULT_CONSTITUTION,
    ConstitutionError,
    load_constitution,
    parse_constitution,
)

GOOD = """\
format: cai-constitution/v1
name: mini
critique_revision:
  - id: c1
    critique: Point out harm.
    revision: Remove the harm.
  - id: c2
    critique: Point out dishonesty.
    revision: Make it honest.
judging:
  - id: j1
    question: Which reply is less harmful?
few_shot:
  judging:
    - id: fs-j1
      conversation:
        - {role: user, content: hi}
      answer_a: hello
      answer_b: go away
      preferred: A
"""


def test_default_constitution_is_complete():
    c = load_constitution()
    assert len(c.critique_revision) >= 16
    assert len(c.judging) >= 16
    topics = {p.topic for p in c.critique_revision} | {p.topic for p in c.judging}
    assert {"harm", "honesty", "autonomy", "over-refusal", "helpfulness"} <= topics
    assert c.critique_examples and c.judging_examples
    assert {e.preferred for e in c.judging_examples} == {"A", "B"}
    assert c.sha256 == hashlib.sha256(DEFAULT_CONSTITUTION.read_bytes()).hexdigest()
    assert c.file_name == "default.yaml"


def test_sampling_is_uniform_and_seeded():
    c = load_constitution()
    picks = [c.sample_critique(random.Random(7)).id for _ in range(3)]
    assert len(set(picks)) == 1  # same seed, same principle
    rng = random.Random(0)
    counts = Counter(c.sample_judging(rng).id for _ in range(4000))
    assert set(counts) == {p.id for p in c.judging}
    expected = 4000 / len(c.judging)
    assert all(abs(n - expected) < 0.35 * expected for n in counts.values())


def test_parse_good_text():
    c = parse_constitution(GOOD, "mini.yaml")
    assert [p.id for p in c.critique_revision] == ["c1", "c2"]
    assert c.judging_principle("j1").question.startswith("Which")
    assert c.judging_examples[0].conversation == ({"role": "user", "content": "hi"},)
    assert len(c.sha256) == 64


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda t: t.replace("format: cai-constitution/v1", "format: v0"), "mini.yaml:1: format: must be"),
        (
            lambda t: t.replace("  - id: c2\n", "  - id: c1\n"),
            "mini.yaml:7: critique_revision[1].id: 'c1' is already used",
        ),
        (
            lambda t: t.replace("    revision: Make it honest.\n", ""),
            "mini.yaml:7: critique_revision[1].revision: is required",
        ),
        (lambda t: t.replace("question: Which", "questoin: Which"), "mini.yaml:12: judging[0].questoin: unknown field"),
        (
            lambda t: t.replace("preferred: A", "preferred: C"),
            "mini.yaml:20: few_shot.judging[0].preferred: must be A or B",
        ),
        (lambda t: t.replace("role: user", "role: robot"), "few_shot.judging[0].conversation[0].role: must be one of"),
        (lambda t: t.replace("id: j1", "id: J 1"), "mini.yaml:11: judging[0].id: must be lowercase"),
        (
            lambda t: t.replace("critique: Point out harm.", "critique: [a, b]"),
            "mini.yaml:5: critique_revision[0].critique: must be text",
        ),
        (lambda t: t + "  bad: [unclosed\n", "mini.yaml:"),
        (
            lambda t: t.replace("judging:\n  - id: j1\n    question: Which reply is less harmful?\n", "judging: []\n"),
            "judging: must hold at least one entry",
        ),
    ],
)
def test_errors_name_file_line_and_field(mutate, expected):
    with pytest.raises(ConstitutionError) as err:
        parse_constitution(mutate(GOOD), "mini.yaml")
    assert expected in str(err.value)


def test_all_problems_are_reported_at_once():
    text = GOOD.replace("format: cai-constitution/v1", "format: x").replace("preferred: A", "preferred: Z")
    with pytest.raises(ConstitutionError) as err:
        parse_constitution(text, "mini.yaml")
    assert len(err.value.problems) == 2


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True)


def test_cli_check_good_and_bad(tmp_path):
    ok = _cli("constitution", "check", str(DEFAULT_CONSTITUTION))
    assert ok.returncode == 0, ok.stderr
    assert "sha256" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("  - id: c2\n", "  - id: c1\n"))
    out = _cli("constitution", "check", str(bad))
    assert out.returncode == 1
    assert f"{bad}:7: critique_revision[1].id" in out.stderr
    assert "Traceback" not in out.stderr
    missing = _cli("constitution", "check", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
