"""Real text through the real path: SmolLM2-135M-Instruct from its PyPI package, converted from
GGUF, served by vLLM behind the generation service."""

from __future__ import annotations

import grpc
import pytest

from services.api.cai.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from tests.conftest import ServerProcess

pytestmark = pytest.mark.smollm


@pytest.fixture(scope="module")
def smollm_server(tmp_path_factory):
    server = ServerProcess(["serve", "generation", "--engine", "vllm"], tmp_path_factory.mktemp("smollm"))
    yield server
    server.stop()


def test_packaged_model_answers_in_words(smollm_server):
    with grpc.insecure_channel(smollm_server.address) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=30)
        assert info.engine == "vllm" and info.checkpoint_id == "smollm2-135m-instruct"
        response = stub.Generate(
            generation_pb2.GenerateRequest(
                prompts=[
                    common_pb2.Conversation(
                        messages=[common_pb2.ChatMessage(role="user", content="What is the capital of France?")]
                    )
                ],
                sampling=common_pb2.SamplingParams(n=1, max_tokens=24, temperature=0),
            ),
            timeout=120,
        )
    sample = response.completions[0].samples[0]
    assert "Paris" in sample.text
    assert sample.finish_reason == common_pb2.FINISH_REASON_STOP


def test_converted_folder_is_a_standard_model():
    from transformers import AutoConfig

    from services.models.registry import resolve_model

    path = resolve_model("smollm2-135m-instruct")
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "llama" and getattr(config, "quantization_config", None) is None
