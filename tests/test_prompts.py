"""The shipped prompt sets and the prompt-file loader."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from services.prompts import HELPFULNESS, HELPFULNESS_PAIRS, RED_TEAM, PromptFileError, load_prompts


def test_shipped_red_team_prompts():
    prompts = load_prompts(RED_TEAM)
    assert len(prompts) >= 300
    categories = Counter(p.category for p in prompts)
    assert len(categories) >= 10
    assert sum(len(p.messages) > 1 for p in prompts) >= 20  # multi-turn
    assert sum(bool(p.meta.get("over_refusal_bait")) for p in prompts) >= 30  # refusing would be over-refusal


def test_shipped_helpfulness_sets():
    assert len(load_prompts(HELPFULNESS)) >= 300
    pairs = load_prompts(HELPFULNESS_PAIRS)
    assert all(p.meta["chosen"] and p.meta["rejected"] for p in pairs)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("not json", ":2: not valid JSON"),
        ('{"id": "a", "messages": []}', ":2: messages: must be a non-empty list"),
        (
            '{"id": "b", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}',
            "last message must be from user",
        ),
        ('{"id": "first", "messages": [{"role": "user", "content": "x"}]}', ":2: id: 'first' already used on line 1"),
        ('{"id": "c"}', ":2: messages: is required"),
    ],
)
def test_errors_name_file_and_line(tmp_path, line, expected):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "first", "messages": [{"role": "user", "content": "hi"}]}\n' + line + "\n")
    with pytest.raises(PromptFileError) as err:
        load_prompts(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_local_hugging_face_dataset_folder(tmp_path):
    import datasets

    datasets.Dataset.from_list(
        [{"id": "d1", "prompt": "How do tides work?"}, {"id": "d2", "prompt": "Name a prime."}]
    ).save_to_disk(str(tmp_path / "ds"))
    prompts = load_prompts(tmp_path / "ds")
    assert [p.id for p in prompts] == ["d1", "d2"]
    assert prompts[0].messages == ({"role": "user", "content": "How do tides work?"},)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "train.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    assert load_prompts(tmp_path / "files")[0].messages[0]["content"] == "q"


def test_split_is_stable_disjoint_and_by_prompt_id():
    from services.prompts import prompt_part, split_prompts, split_record

    prompts = load_prompts(RED_TEAM)
    train, held = split_prompts(prompts, "train"), split_prompts(prompts, "eval")
    assert len(train) + len(held) == len(prompts) and not {p.id for p in train} & {p.id for p in held}
    assert 0.12 < len(held) / len(prompts) < 0.28  # about the default 20%
    assert split_prompts(list(reversed(prompts)), "eval") == list(reversed(held))  # position does not matter
    assert all(prompt_part(p.id) == "eval" for p in held)
    assert len(split_prompts(prompts, "eval", eval_fraction=0.5)) > len(held)
    record = split_record({"red_team": RED_TEAM}, "eval")
    assert record["files"]["red_team"]["sha256"] == hashlib.sha256(RED_TEAM.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="train, eval or all"):
        split_prompts(prompts, "test")
