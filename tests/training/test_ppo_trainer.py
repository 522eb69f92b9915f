"""Our PPO trainer on the tiny model: it learns a toy reward with the KL held, takes async reward
functions, saves a plain model folder and resumes, and trains LoRA adapters that it merges on save."""

from __future__ import annotations

import asyncio
import statistics
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from services.config import ConfigError
from services.training.ppo_config import PPOConfig
from services.training.ppo_trainer import STATE_FILE, VALUE_HEAD_FILE, PPOTrainer

PROMPTS = [[{"role": "user", "content": f"question {i}"}] for i in range(16)]


def count_e(prompts: list[list[dict]], completions: list[str]) -> list[float]:
    """Toy reward: how many times the letter "e" occurs in the completion."""
    return [float(c.count("e")) for c in completions]


def small_config(**changes) -> PPOConfig:
    fields = dict(learning_rate=1e-3, batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=4, seed=0)
    return PPOConfig(**{**fields, **changes})


def test_ppo_raises_the_reward_with_the_kl_held(tiny_model):
    config = PPOConfig(
        learning_rate=1e-3,
        batch_size=16,
        mini_batch_size=8,
        ppo_epochs=4,
        max_new_tokens=8,
        kl_coef=0.1,
        kl_horizon=100,
        seed=0,
    )
    trainer = PPOTrainer(config, tiny_model, count_e)
    history = trainer.train(iter(lambda: PROMPTS, None), steps=30)

    rewards = [m["reward_mean"] for m in history]
    kls = [m["kl"] for m in history]
    first, last = statistics.mean(rewards[:5]), statistics.mean(rewards[-5:])
    assert last > first + 2.0, rewards  # seen: about 1.7 -> 5 or more
    assert all(0 <= kl < 40 for kl in kls[1:]), kls  # seen: up to about 25; 40 without a KL penalty
    # the KL is above target_kl, so the adaptive controller raised the coefficient
    assert history[-1]["kl_coef"] > history[0]["kl_coef"] == 0.1
    for m in history:
        assert m["response_length_mean"] <= 8 and 0 <= m["clipfrac"] <= 1 and m["entropy"] > 0
        assert all(torch.isfinite(torch.tensor(v)) for v in m.values())


def test_rollout_logprobs_match_the_training_forward_and_the_reference_at_start(tiny_model):
    trainer = PPOTrainer(small_config(max_new_tokens=6), tiny_model, count_e)
    roll = trainer._rollout(PROMPTS[:4])
    assert roll.mask[:, 0].all() and roll.input_ids.shape[1] == roll.context + roll.mask.shape[1]
    torch.testing.assert_close(roll.ref_logprobs * roll.mask, roll.logprobs * roll.mask)
    with torch.no_grad():
        logits, values = trainer.model(roll.input_ids, roll.attention_mask)
    logprobs = (
        torch.log_softmax(logits[:, roll.context - 1 : -1], -1)
        .gather(-1, roll.input_ids[:, roll.context :, None])
        .squeeze(-1)
    )
    torch.testing.assert_close(logprobs * roll.mask, roll.logprobs * roll.mask, atol=1e-5, rtol=1e-5)
    assert (values == 0).all()  # the value head starts at zero


def test_missing_eos_penalty_is_subtracted_from_unfinished_completions(tiny_model):
    trainer = PPOTrainer(small_config(max_new_tokens=2, missing_eos_penalty=3.0), tiny_model, count_e)
    roll = trainer._rollout(PROMPTS[:4])
    ended = torch.isin(roll.input_ids[:, roll.context :], trainer.eos_ids).any(1)
    torch.testing.assert_close(roll.scores, roll.raw_scores - 3.0 * (~ended).float())


def test_async_reward_fn_runs_on_one_loop_thread_kept_across_steps(tiny_model):
    seen: list[tuple[asyncio.AbstractEventLoop, threading.Thread]] = []

    async def reward(prompts, completions):
        await asyncio.sleep(0)
        seen.append((asyncio.get_running_loop(), threading.current_thread()))
        return [float(len(c)) for c in completions]

    trainer = PPOTrainer(small_config(), tiny_model, reward)
    metrics = [trainer.step(PROMPTS[:4]) for _ in range(2)]
    assert all(m["reward_mean"] >= 0 for m in metrics)
    (loop, thread), (loop2, thread2) = seen
    assert loop is loop2 and thread is thread2 and thread is not threading.main_thread()
    trainer.close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_reward_fn_must_return_one_score_per_completion(tiny_model):
    trainer = PPOTrainer(small_config(), tiny_model, lambda prompts, completions: [1.0])
    with pytest.raises(ValueError, match="1 scores for 4 completions"):
        trainer.step(PROMPTS[:4])


def test_invalid_config_and_batch_are_refused(tiny_model):
    with pytest.raises(ConfigError, match="mini_batch_size"):
        PPOTrainer(small_config(mini_batch_size=8), tiny_model, count_e)
    with pytest.raises(ConfigError, match="kl_mode"):
        PPOTrainer(small_config(kl_mode="sometimes"), tiny_model, count_e)
    trainer = PPOTrainer(small_config(), tiny_model, count_e)
    with pytest.raises(ValueError, match="batch_size=4 prompts, got 3"):
        trainer.step(PROMPTS[:3])
    with pytest.raises(ValueError, match="ran out after 1 batches"):
        trainer.train(iter([PROMPTS[:4]]), steps=2)


def test_save_and_resume(tiny_model, tmp_path):
    trainer = PPOTrainer(small_config(kl_horizon=10), tiny_model, count_e)
    trainer.train(iter(lambda: PROMPTS[:4], None), steps=2)
    out = trainer.save(tmp_path / "ppo")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert (out / VALUE_HEAD_FILE).is_file() and (out / STATE_FILE).is_file()
    # serving engines load every top-level *.safetensors as model weights: only the model's there
    assert [p.name for p in out.glob("*.safetensors")] == ["model.safetensors"]

    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, policy.state_dict()[name])
    base = load_file(Path(tiny_model) / "model.safetensors")
    assert max((loaded.state_dict()[k] - v).abs().max().item() for k, v in base.items()) > 1e-4

    resumed = PPOTrainer(small_config(kl_horizon=10), str(out), count_e, ref_path=tiny_model)
    resumed.load_state(out)
    assert resumed.global_step == 2 and resumed.kl_controller.value == trainer.kl_controller.value
    assert resumed.kl_controller.value != 0.05  # moved (horizon 10), and the moved value came back
    head = resumed.accelerator.unwrap_model(resumed.model).value_head
    torch.testing.assert_close(head.weight, trainer.accelerator.unwrap_model(trainer.model).value_head.weight)
    assert head.weight.abs().sum() > 0
    assert resumed.ref_model is not None  # the original reference, not the resumed policy
    torch.testing.assert_close(resumed.ref_model.state_dict()["lm_head.weight"], base["model.embed_tokens.weight"])
    resumed.step(PROMPTS[:4])
    assert resumed.global_step == 3

    with pytest.raises(FileNotFoundError, match="not a PPO checkpoint"):
        resumed.load_state(tiny_model)


def test_lora_step_and_merged_save(tiny_model, tmp_path):
    trainer = PPOTrainer(small_config(lora=True, lora_r=4, learning_rate=1e-2), tiny_model, count_e)
    assert trainer.ref_model is None  # the reference is the base model with the adapters disabled
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    trainable = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("value_head") for n in trainable)

    metrics = trainer.step(PROMPTS[:4])
    assert torch.isfinite(torch.tensor(metrics["policy_loss"]))
    out = trainer.save(tmp_path / "lora")
    assert not any(p.name.startswith("adapter") for p in out.iterdir())
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = load_file(Path(tiny_model) / "model.safetensors")
    assert set(base) <= set(loaded.state_dict())
    assert max((loaded.state_dict()[k] - v).abs().max().item() for k, v in base.items()) > 1e-6
    assert any("lora_" in n for n, _ in unwrapped.named_parameters())  # saving left the adapters in place
    trainer.step(PROMPTS[:4])


def test_reward_call_overlaps_the_value_and_reference_pass(tiny_model):
    """An asynchronous reward (the reward service over gRPC) is in flight while the trainer runs
    its reference pass (overlap_reward=True); not otherwise. The reference pass waits (up to 3 s)
    for the reward call to start; the reward call records whether the pass had run by then."""
    for overlap in (True, False):
        _check_reward_overlap(tiny_model, overlap)


def _check_reward_overlap(tiny_model, overlap: bool) -> None:
    reward_started, ref_pass_ran = threading.Event(), threading.Event()
    in_flight_during_ref_pass = []

    async def reward(prompts, completions):
        in_flight_during_ref_pass.append(not ref_pass_ran.is_set())
        reward_started.set()
        return [1.0] * len(completions)

    def on_ref_pass(*_):
        if not ref_pass_ran.is_set():
            reward_started.wait(3.0)
            ref_pass_ran.set()

    trainer = PPOTrainer(small_config(max_new_tokens=4, overlap_reward=overlap), tiny_model, reward)
    trainer.ref_model.register_forward_hook(on_ref_pass)
    try:
        trainer.step(PROMPTS[:4])
    finally:
        trainer.close()
    assert in_flight_during_ref_pass == [overlap]
