"""How ``cai eval`` keeps its services busy without overrunning them (services/pipeline/evaluate.py)."""

import asyncio

import pytest

from services.pipeline.evaluate import _in_flight


async def test_requests_run_several_at_once_never_more_than_the_limit_and_come_back_in_order():
    running, peak = 0, 0

    async def request(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (5 - i % 5))  # later requests finish first
        running -= 1
        return i

    results = await _in_flight([lambda i=i: request(i) for i in range(30)], limit=4)
    assert results == list(range(30)) and peak == 4


async def test_a_failed_request_is_raised_after_the_started_ones_finish():
    finished = []

    async def request(i: int) -> int:
        await asyncio.sleep(0.001 * i)
        if i == 0:
            raise RuntimeError("refused")
        finished.append(i)
        return i

    with pytest.raises(RuntimeError, match="refused"):
        await _in_flight([lambda i=i: request(i) for i in range(6)], limit=3)
    assert sorted(finished) == [1, 2, 3, 4, 5]
