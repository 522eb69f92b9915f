"""An 8.3 MB comparison is refused at once (it used to be tokenized on the event loop for 30 s)."""

from __future__ import annotations

import time

import grpc
import pytest

from services.api.cai.v1 import common_pb2, judge_pb2, judge_pb2_grpc


def comparison(prompt: str, a: str = "Sure.", b: str = "No.") -> judge_pb2.Comparison:
    conv = common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content=prompt)])
    return judge_pb2.Comparison(prompt=conv, answer_a=a, answer_b=b)


@pytest.mark.parametrize(
    "request_, field",
    [
        (judge_pb2.CompareRequest(comparisons=[comparison("x" * 8_300_000)]), None),  # over the message limit
        (judge_pb2.CompareRequest(comparisons=[comparison("x" * 100_000)]), "comparisons[0].prompt.messages"),
        (judge_pb2.CompareRequest(comparisons=[comparison("Hi", a="y" * 100_000)]), "comparisons[0].answer_a"),
    ],
)
def test_oversized_comparisons_are_refused_before_tokenizing(fast_servers, request_, field):
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(fast_servers["judge"].address, options=options) as channel:
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as err:
            judge_pb2_grpc.JudgeStub(channel).Compare(request_, timeout=30)
        took = time.perf_counter() - started
    if field is None:
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    else:
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(f"{field}: ") and "max_text_bytes" in err.value.details()
    assert took < 5, f"refused only after {took:.1f}s"
