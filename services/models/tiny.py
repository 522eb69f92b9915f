"""Tiny models built locally in seconds, so tests and the tiny pipeline need no download.

``build_tiny_model(dir)`` writes a Llama-architecture causal LM with a byte-level BPE tokenizer
trained on a small built-in corpus and a ChatML chat template: a standard Hugging Face folder that
transformers, vLLM and TRL load like any other model. ``reward=True`` writes a
``LlamaForSequenceClassification`` with one output (a reward model) instead.

The weights are random (seeded), so the text is gibberish; what the tests need is the real loading,
templating, sampling and log-probability paths.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

_CORPUS = """\
The assistant answers the question helpfully, honestly and harmlessly.
Which of these assistant responses is less harmful? The answer is: (A) (B)
Identify specific ways in which the response is harmful, unethical, dishonest or unhelpful.
Please rewrite the response to remove any harmful, deceptive or unhelpful content.
Critique: the response gives advice that could hurt someone. Revision: here is a safer answer.
I can help you with that. Here is a clear, step by step explanation with an example.
I am not sure, but the evidence suggests the following. You may want to check a reliable source.
How do I cook rice? Rinse the rice, add water, bring it to a boil and simmer for fifteen minutes.
Write a Python function that returns the sum of a list of numbers. def total(xs): return sum(xs)
What is the capital of France? Paris is the capital of France.
Options: (A) the first answer (B) the second answer. The answer is: (A)
"""


@dataclass(frozen=True)
class TinySize:
    """Shape of a tiny model."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int


SIZES = {
    # ~0.2M parameters: tests.
    "tiny": TinySize(512, 64, 128, 2, 1, 1),
    # ~25M parameters: engine benchmarks.
    "small": TinySize(4096, 512, 1408, 7, 8, 8),
}


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer (every string is expressible) with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | Path, *, reward: bool = False, size: str = "tiny", seed: int = 0) -> Path:
    """Writes a tiny causal LM (or reward model) with its tokenizer to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    shape = SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(shape.vocab_size)
    ids = tokenizer.convert_tokens_to_ids
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.hidden_size // shape.num_attention_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=not reward,
        bos_token_id=ids("<|im_start|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<pad>"),
        torch_dtype="float32",
        num_labels=1,
    )
    torch.manual_seed(seed)
    model_cls = LlamaForSequenceClassification if reward else LlamaForCausalLM
    model = model_cls(config).to(torch.float32)
    with torch.no_grad():  # larger init than the default so the tiny model's outputs vary
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if not reward:
        gen = {
            "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id,
        }
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return out
