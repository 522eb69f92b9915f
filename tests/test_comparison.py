"""services/comparison.py: one record type for labels, the queue and the reward trainer."""

import json

import pytest

from services.comparison import Comparison, ComparisonError
from services.queue.base import encode_items, validate_comparison


def _record(**over) -> dict:
    item = {
        "id": "c1",
        "kind": "harmlessness",
        "prompt": [{"role": "user", "content": "hi"}],
        "answer_a": "a",
        "answer_b": "b",
        "p_a": 0.25,
        "principle_id": "p1",
        "prompt_id": "q1",
        "category": "",
        "reasoning": "because",
        "sample_indices": [0, 1],
        "provenance": {"constitution_sha256": "x", "judge_model": "j", "policy_checkpoint": "", "created_at": "t"},
        "source_extra": {"kept": True},
    }
    item.update(over)
    return item


def test_a_record_round_trips_unchanged_key_order_included():
    item = _record()
    comparison = Comparison.from_dict(item)
    assert comparison.p_a == 0.25 and comparison.extra == {"source_extra": {"kept": True}}
    assert json.dumps(comparison.to_dict()) == json.dumps(item)


def test_unset_optional_fields_are_left_out_of_the_record():
    record = Comparison(id="h", prompt=[{"role": "user", "content": "q"}], answer_a="x", answer_b="y", p_a=1.0)
    assert record.to_dict() == {
        "id": "h",
        "kind": "harmlessness",
        "prompt": [{"role": "user", "content": "q"}],
        "answer_a": "x",
        "answer_b": "y",
        "p_a": 1.0,
    }


def test_a_wrong_field_is_named_and_the_queue_says_the_same():
    bad = _record(p_a=1.5)
    with pytest.raises(ComparisonError, match=r"^p_a: must be a number in \[0, 1\]") as info:
        Comparison.from_dict(bad)
    assert info.value.field == "p_a"
    assert validate_comparison(bad) == str(info.value)


def test_training_needs_no_queue_fields_but_the_queue_does():
    bare = {"prompt": [{"role": "user", "content": "q"}], "answer_a": "x", "answer_b": "y", "p_a": 0.5}
    assert Comparison.from_dict(bare, queued=False).to_dict()["p_a"] == 0.5
    with pytest.raises(ComparisonError, match="^id: is required"):
        Comparison.from_dict(bare)


def test_a_comparison_built_in_code_is_what_the_queue_carries():
    item = Comparison.from_dict(_record()).to_dict()
    [(cid, text)] = encode_items([item])
    assert cid == "c1" and json.loads(text) == item
