"""The judge service over a real socket (a `cai serve judge` process on vLLM)."""

from __future__ import annotations

import math
import subprocess
import sys

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM

from services.api.cai.v1 import common_pb2, judge_pb2, judge_pb2_grpc
from services.constitution import load_constitution
from services.engines import create_engine
from services.judge import prompting
from services.judge.labeler import Judge, draw_key
from tests.conftest import metric, scrape

PROMPT = [{"role": "user", "content": "How do I get back at my neighbour?"}]
A = "Talk to them calmly about what bothers you."
B = "Slash their tyres tonight."


def comparison(a=A, b=B, principle_id="", id="c1"):
    return judge_pb2.Comparison(
        prompt=common_pb2.Conversation(id="p1", messages=[common_pb2.ChatMessage(**m) for m in PROMPT]),
        answer_a=a,
        answer_b=b,
        principle_id=principle_id,
        id=id,
    )


@pytest.fixture(scope="module")
def stub(judge_server):
    with grpc.insecure_channel(judge_server.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield judge_pb2_grpc.JudgeStub(channel)


async def test_p_a_is_softmax_of_option_logprobs_from_the_reference(stub, tiny_model):
    principle = load_constitution().judging[3].id
    response = stub.Compare(
        judge_pb2.CompareRequest(comparisons=[comparison(principle_id=principle)], seed=5), timeout=60
    )
    (label,) = response.labels
    assert label.principle_id == principle and 0.0 < label.p_a < 1.0
    # Independently: the same prompt through a plain transformers forward pass.
    engine = await create_engine("transformers", tiny_model)
    try:
        judge = Judge(engine, load_constitution())
        _, examples = judge.draw(5, draw_key(PROMPT, A, B), principle)
        text = engine.chat_text(
            prompting.judge_chat(PROMPT, A, B, load_constitution().judging_principle(principle), examples)
        )
        ids = engine.encode_text(text + prompting.ANSWER_OPENING)
        options = judge.options
    finally:
        await engine.close()
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], dim=-1)
    la = torch.logsumexp(logp[list(options.a)], 0).item()
    lb = torch.logsumexp(logp[list(options.b)], 0).item()
    assert label.logprob_a == pytest.approx(la, abs=1e-4)
    assert label.logprob_b == pytest.approx(lb, abs=1e-4)
    assert label.p_a == pytest.approx(math.exp(la) / (math.exp(la) + math.exp(lb)), abs=1e-5)


@pytest.mark.parametrize("mode", [judge_pb2.JUDGE_MODE_LOGPROB, judge_pb2.JUDGE_MODE_CHAIN_OF_THOUGHT])
def test_swap_debias_is_symmetric(stub, mode):
    common = dict(mode=mode, swap_debias=True, seed=9, cot_sampling=common_pb2.SamplingParams(max_tokens=8))
    ab = stub.Compare(judge_pb2.CompareRequest(comparisons=[comparison(A, B, id="s")], **common), timeout=120)
    ba = stub.Compare(judge_pb2.CompareRequest(comparisons=[comparison(B, A, id="s")], **common), timeout=120)
    assert ab.labels[0].principle_id == ba.labels[0].principle_id
    assert ab.labels[0].p_a == pytest.approx(1.0 - ba.labels[0].p_a, abs=1e-6)


def test_chain_of_thought_is_clamped_and_returns_reasoning(stub):
    response = stub.Compare(
        judge_pb2.CompareRequest(
            comparisons=[comparison(id=str(i)) for i in range(6)],
            mode=judge_pb2.JUDGE_MODE_CHAIN_OF_THOUGHT,
            seed=1,
            cot_sampling=common_pb2.SamplingParams(max_tokens=12),
        ),
        timeout=120,
    )
    assert all(0.4 <= label.p_a <= 0.6 for label in response.labels)
    assert any(label.reasoning for label in response.labels)
    # the raw option probabilities are still reported, unclamped
    raw = [1 / (1 + math.exp(label.logprob_b - label.logprob_a)) for label in response.labels]
    assert any(not 0.4 <= p <= 0.6 for p in raw) or all(
        label.p_a == pytest.approx(p) for label, p in zip(response.labels, raw)
    )


def test_principles_are_sampled_per_comparison_with_provenance(stub):
    # The draw depends on a comparison's content and the seed (not its index): 40 different pairs.
    c = load_constitution()
    pairs = [comparison(a=f"{A} ({i})", id=f"x{i}") for i in range(40)]
    response = stub.Compare(judge_pb2.CompareRequest(comparisons=pairs, seed=3), timeout=120)
    used = {label.principle_id for label in response.labels}
    assert len(used) > 5 and used <= {p.id for p in c.judging}
    label = response.labels[0]
    assert label.comparison_id == "x0"
    p = label.provenance
    assert (p.constitution_file, p.constitution_sha256, p.principle_id, p.prompt_id) == (
        "default.yaml",
        c.sha256,
        label.principle_id,
        "p1",
    )
    assert p.model and p.checkpoint and p.created_at.seconds > 0
    again = stub.Compare(judge_pb2.CompareRequest(comparisons=pairs, seed=3), timeout=120)
    assert [x.principle_id for x in again.labels] == [x.principle_id for x in response.labels]


BAD = [
    ("no comparisons", judge_pb2.CompareRequest(), "comparisons"),
    ("empty answer", judge_pb2.CompareRequest(comparisons=[comparison(b=" ")]), "comparisons[0].answer_b"),
    (
        "unknown principle",
        judge_pb2.CompareRequest(comparisons=[comparison(principle_id="nope")]),
        "comparisons[0].principle_id",
    ),
    ("unknown mode", judge_pb2.CompareRequest(comparisons=[comparison()], mode=7), "mode"),
    ("too many", judge_pb2.CompareRequest(comparisons=[comparison()] * 257), "max_batch_items"),
    (
        "bad role",
        judge_pb2.CompareRequest(
            comparisons=[
                judge_pb2.Comparison(
                    prompt=common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content="")]),
                    answer_a="a",
                    answer_b="b",
                )
            ]
        ),
        "comparisons[0].prompt.messages[0].content",
    ),
]


@pytest.mark.parametrize("request_, field", [(r, f) for _, r, f in BAD], ids=[n for n, _, _ in BAD])
def test_bad_requests(stub, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.Compare(request_, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def test_label_counter_moves(stub, judge_server):
    before = scrape(judge_server.metrics_port)
    stub.Compare(judge_pb2.CompareRequest(comparisons=[comparison(id="m1"), comparison(id="m2")]), timeout=60)
    after = scrape(judge_server.metrics_port)
    assert (
        metric(after, "cai_judge_labels_total", mode="logprob")
        == metric(before, "cai_judge_labels_total", mode="logprob") + 2
    )
    assert (
        metric(after, "cai_batch_items_count", service="cai.v1.Judge")
        == metric(before, "cai_batch_items_count", service="cai.v1.Judge") + 1
    )


def test_option_tokens_of_real_tokenizers(tiny_model):
    from transformers import AutoTokenizer

    from services.models.registry import resolve_model

    for path in (tiny_model, resolve_model("smollm2-135m-instruct")):
        tok = AutoTokenizer.from_pretrained(path)
        probe = tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True)
        options = prompting.find_option_tokens(lambda t: tok(t, add_special_tokens=False)["input_ids"], probe)  # noqa: B023 (called in this iteration)
        assert tok.decode(list(options.a[:1])).strip() == "A" and tok.decode(list(options.b[:1])).strip() == "B"


def test_model_that_cannot_express_the_options_fails_at_start_up(tiny_model, tmp_path):
    """A word-level tokenizer without "A"/"B" in its vocabulary: clear error, no traceback."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = tmp_path / "wordy"
    shutil.copytree(tiny_model, folder)
    vocab = {
        w: i
        for i, w in enumerate(
            ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>", "The", "answer", "is", ":", "(", ")", "user", "assistant"]
        )
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<pad>")
    fast.chat_template = AutoTokenizer.from_pretrained(tiny_model).chat_template
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink(missing_ok=True)
    fast.save_pretrained(folder)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "serve",
            "judge",
            "--model",
            str(folder),
            "--engine",
            "transformers",
            "--port",
            "0",
            "--metrics-port",
            "-1",
            "--host",
            "127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert "cannot express option" in out.stderr or "same token" in out.stderr
    assert "Traceback" not in out.stderr
