"""The two reward functions agree: the reward service over gRPC (a real server process on loopback)
gives the same scores as the same reward model loaded in-process, for the same completions."""

from __future__ import annotations

import asyncio

import pytest

from services.reward.client import InProcessReward, RewardClient
from tests.conftest import ServerProcess

PROMPTS = [[{"role": "user", "content": f"How do I cook dish {i}?"}] for i in range(8)]
COMPLETIONS = [
    "Rinse the rice and simmer it.",
    "",
    "I am not sure, but the evidence suggests the following.",
    "Paris is the capital of France. " * 4,
    "(A)",
    "Here is a clear, step by step explanation with an example.",
    "no",
    "Write a Python function that returns the sum of a list of numbers.",
]


@pytest.fixture(scope="module")
def reward_server(tiny_reward_model_path, tmp_path_factory):
    server = ServerProcess(["serve", "reward", "--model", tiny_reward_model_path], tmp_path_factory.mktemp("reward"))
    yield server
    server.stop()


def test_the_grpc_reward_equals_the_in_process_reward_for_the_same_completions(reward_server, tiny_reward_model_path):
    async def over_grpc(client):
        # a conversational completion (TRL's form) scores as its assistant text
        return await client(PROMPTS, COMPLETIONS[:-1] + [[{"role": "assistant", "content": COMPLETIONS[-1]}]])

    served = asyncio.run(over_grpc(RewardClient(f"127.0.0.1:{reward_server.port}")))
    in_process = InProcessReward(tiny_reward_model_path)(PROMPTS, COMPLETIONS)
    assert len(set(in_process)) > 1
    # float32 on both sides (the proto's float): equal to float32 rounding
    assert served == pytest.approx(in_process, rel=0, abs=1e-6)
