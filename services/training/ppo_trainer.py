"""Our PPO trainer for RLHF/RLAIF on torch + accelerate (TRL removed its own in 1.13).

One ``step`` is one PPO iteration: sample completions for a batch of chat prompts with the policy,
score them with ``reward_fn``, turn scores and the KL to the reference into per-token rewards, estimate
advantages with GAE, then run ``ppo_epochs`` epochs of clipped policy and value updates on shuffled
minibatches. The formulas live in ``services.training.ppo``.

The policy is a Hugging Face causal LM with a scalar value head on its last hidden state
(``PolicyWithValueHead``). The reference is a frozen copy of the starting policy, or the model at
``ref_path``; with LoRA it is the base model with the adapters disabled (no second copy).

Several processes (``accelerate launch``) each take an equal slice of every prompt batch; gradients
are averaged by the prepared model and the metrics over all processes.

``save`` writes a plain model folder (LoRA merged, safetensors, tokenizer) that vLLM and transformers
load, plus ``ppo/value_head.safetensors`` and ``ppo/state.json``. To resume, build the trainer with that
folder as ``policy_path`` (and the original reference as ``ref_path``), then call ``load_state``.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.trainer.utils import (
    disable_dropout_in_model,
    entropy_from_logits,
    selective_log_softmax,
    shutdown_event_loop_in_daemon,
    start_event_loop_in_daemon,
)

from services.config import ConfigError
from services.training.ppo import (
    AdaptiveKLController,
    FixedKLController,
    compute_gae,
    kl_penalty,
    masked_mean,
    per_token_rewards,
    policy_loss,
    value_loss,
    whiten,
)
from services.training.ppo_config import PPOConfig

log = logging.getLogger(__name__)

# In a subfolder: serving engines (vLLM) load every *.safetensors at the top of a model folder.
VALUE_HEAD_FILE = "ppo/value_head.safetensors"
STATE_FILE = "ppo/state.json"

Conversation = list[dict]
RewardFn = Callable[[list[Conversation], list[str]], "list[float] | Awaitable[list[float]]"]


def _lm_forward(lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
    """A causal LM's forward pass over left-padded sequences, positions counted from the first real
    token (as ``generate`` counts them)."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **kwargs)


class PolicyWithValueHead(nn.Module):
    """A causal LM with a value head: ``nn.Linear(hidden_size, 1)`` on the last hidden state,
    initialised to zero (every value starts at 0)."""

    def __init__(self, policy: nn.Module, hidden_size: int):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, values)`` at every position: shapes ``(batch, T, vocab)`` and ``(batch, T)``."""
        out = _lm_forward(self.policy, input_ids, attention_mask, output_hidden_states=True)
        values = self.value_head(out.hidden_states[-1]).squeeze(-1)
        return out.logits, values


def _response_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, context: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the completion tokens (``input_ids[:, context:]``) and the logits that
    predict them, both at the sampling temperature."""
    response_logits = logits[:, context - 1 : -1].float() / temperature
    return selective_log_softmax(response_logits, input_ids[:, context:]), response_logits


@dataclass
class Rollout:
    """A batch of sampled completions and what PPO needs about them; per-token tensors are
    ``(batch, completion length)``."""

    input_ids: torch.Tensor
    """Prompt (left-padded) then completion (right-padded) token ids."""
    attention_mask: torch.Tensor
    """1 on real prompt and completion tokens."""
    context: int
    """Length of the padded prompt: completions start at this column."""
    mask: torch.Tensor
    """1.0 on real completion tokens (up to and including the end-of-sequence token)."""
    raw_scores: torch.Tensor
    """``reward_fn``'s scores, ``(batch,)``."""
    scores: torch.Tensor
    """The scores trained on (after ``missing_eos_penalty``)."""
    logprobs: torch.Tensor
    """Log-probabilities of the completion tokens under the rollout policy."""
    ref_logprobs: torch.Tensor
    """Their log-probabilities under the reference."""
    values: torch.Tensor
    """Value estimates of the states before each completion token."""
    entropy: torch.Tensor
    """Entropy of the rollout policy at each completion token."""


async def _awaited(awaitable: Awaitable):
    return await awaitable


def _stop_event_loop(thread, loop: asyncio.AbstractEventLoop) -> None:
    """Stops the loop, waits for its thread and closes it (unless the thread is stuck in a call)."""
    shutdown_event_loop_in_daemon(thread, loop)
    if not thread.is_alive():
        loop.close()


class PPOTrainer:
    """PPO on a causal LM against ``reward_fn``.

    ``reward_fn(prompts, completions) -> list[float]`` gets the chat conversations and the decoded
    completion texts and returns one score per completion. It may be synchronous or asynchronous
    (``async def``, e.g. ``services.reward.client.RewardClient``): an awaitable result runs on an
    event loop in a dedicated daemon thread, started on first use and kept for the trainer's
    lifetime (so per-loop resources such as a ``grpc.aio`` channel are reused across steps); ``close``
    stops it, and so does garbage collection of the trainer.
    """

    def __init__(
        self,
        config: PPOConfig,
        policy_path: str,
        reward_fn: RewardFn,
        ref_path: str | None = None,
        accelerator: Accelerator | None = None,
    ):
        if problem := config.validate():
            raise ConfigError(f"PPOConfig: {problem[0]}: {problem[1]}")
        if accelerator is None:
            on_gpu = torch.cuda.is_available()
            # "auto": accelerate's own setting on a GPU, float32 on a CPU
            mixed = {"bf16": "bf16", "fp32": "no"}.get(config.precision)
            if on_gpu:
                accelerator = Accelerator(mixed_precision=mixed) if mixed else Accelerator()
            else:
                accelerator = Accelerator(cpu=True, mixed_precision=mixed or "no")
        processes = accelerator.num_processes
        if config.batch_size % processes or config.mini_batch_size % processes:
            raise ConfigError(
                f"PPOConfig: batch_size ({config.batch_size}) and mini_batch_size "
                f"({config.mini_batch_size}) must be multiples of the {processes} processes"
            )
        self.config = config
        self.reward_fn = reward_fn
        self.accelerator = accelerator
        self.policy_path = policy_path
        set_seed(config.seed, device_specific=True)

        self.tokenizer = AutoTokenizer.from_pretrained(policy_path)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{policy_path}: the tokenizer has no chat template, which rollouts need")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        policy = self._load_lm(policy_path)
        eos = policy.generation_config.eos_token_id
        eos_ids = {self.tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        self.eos_ids = torch.tensor(sorted(eos_ids), device=accelerator.device)

        separate_ref = ref_path is not None and Path(ref_path).resolve() != Path(policy_path).resolve()
        self.ref_model: nn.Module | None = None  # None: the LoRA policy with its adapters disabled
        if separate_ref:
            self.ref_model = self._load_lm(ref_path)
        elif not config.lora:
            self.ref_model = copy.deepcopy(policy)
        if self.ref_model is not None:
            self.ref_model.requires_grad_(False).eval().to(accelerator.device)
        if config.lora:
            from peft import LoraConfig, get_peft_model

            policy = get_peft_model(
                policy,
                LoraConfig(
                    r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
                ),
            )
        model = PolicyWithValueHead(policy, policy.config.hidden_size)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, eps=1e-5
        )
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        if config.kl_mode == "adaptive":
            self.kl_controller = AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
        else:
            self.kl_controller = FixedKLController(config.kl_coef)
        self.global_step = 0
        self._reward_wait = 0.0  # seconds the last rollout waited for its scores after its own work
        self._reward_loop: asyncio.AbstractEventLoop | None = None
        self._stop_reward_loop: weakref.finalize | None = None

    @staticmethod
    def _load_lm(path: str) -> nn.Module:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        disable_dropout_in_model(model)  # rollout and first-epoch log-probabilities must agree
        return model

    # --- rewards ---------------------------------------------------------------------------------

    def _score(self, prompts: list[Conversation], completions: list[str]) -> torch.Tensor:
        return self._start_scoring(prompts, completions)()

    def _start_scoring(self, prompts: list[Conversation], completions: list[str]) -> Callable[[], torch.Tensor]:
        """Starts scoring and returns a function that waits for the scores. With
        ``config.overlap_reward``, an asynchronous ``reward_fn`` (the reward service over gRPC)
        runs on the reward loop thread meanwhile, so the caller overlaps the call with its own work
        (the value and reference passes); otherwise, and for a synchronous one (its work would be
        on this thread anyway), the call is made when the scores are awaited."""
        call = getattr(self.reward_fn, "__call__", None)  # noqa: B004 (an object whose __call__ is async)
        is_async = inspect.iscoroutinefunction(self.reward_fn) or inspect.iscoroutinefunction(call)
        overlap = self.config.overlap_reward
        if overlap is None:
            overlap = self.accelerator.device.type != "cpu"
        if is_async and overlap:
            future = asyncio.run_coroutine_threadsafe(
                _awaited(self.reward_fn(prompts, completions)), self._event_loop()
            )
            return lambda: self._check_scores(future.result(), completions)

        def wait() -> torch.Tensor:
            result = self.reward_fn(prompts, completions)
            if inspect.isawaitable(result):
                result = asyncio.run_coroutine_threadsafe(_awaited(result), self._event_loop()).result()
            return self._check_scores(result, completions)

        return wait

    def _check_scores(self, result, completions: list[str]) -> torch.Tensor:
        scores = [float(s) for s in result]
        if len(scores) != len(completions):
            raise ValueError(f"reward_fn returned {len(scores)} scores for {len(completions)} completions")
        return torch.tensor(scores, dtype=torch.float32, device=self.accelerator.device)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._reward_loop is None:
            thread, loop, ready = start_event_loop_in_daemon(name="ppo-reward-loop")
            ready.wait()
            self._reward_loop = loop
            self._stop_reward_loop = weakref.finalize(self, _stop_event_loop, thread, loop)
        return self._reward_loop

    def close(self) -> None:
        """Stops the reward event loop thread, if an asynchronous ``reward_fn`` started one."""
        if self._stop_reward_loop is not None:
            self._stop_reward_loop()
            self._reward_loop = self._stop_reward_loop = None

    # --- one PPO iteration -----------------------------------------------------------------------

    def _ref_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.ref_model is not None:
            return _lm_forward(self.ref_model, input_ids, attention_mask).logits
        peft_model = self.accelerator.unwrap_model(self.model).policy
        with peft_model.disable_adapter():
            return _lm_forward(peft_model, input_ids, attention_mask).logits

    @torch.no_grad()
    def _rollout(self, prompts: list[Conversation]) -> Rollout:
        """Samples completions and computes everything PPO needs about them."""
        cfg = self.config
        device = self.accelerator.device
        texts = self.tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=False)
        enc = self.tokenizer(
            texts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt"
        ).to(device)
        context = enc["input_ids"].shape[1]
        unwrapped = self.accelerator.unwrap_model(self.model)
        unwrapped.eval()
        with self.accelerator.autocast():
            # top_k=0: sample from the full distribution whatever the model's generation_config says
            sequences = unwrapped.policy.generate(
                **enc,
                do_sample=True,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=0,
                max_new_tokens=cfg.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        responses = sequences[:, context:]
        is_eos = torch.isin(responses, self.eos_ids)
        mask = (is_eos.cumsum(1) - is_eos.long()) == 0  # up to and including the first end-of-sequence
        ended = (is_eos & mask).any(1)
        responses = responses.masked_fill(~mask, self.tokenizer.pad_token_id)
        completions = self.tokenizer.batch_decode(responses, skip_special_tokens=True)

        # The reward call (an RPC to the reward service) runs while this thread computes the
        # log-probabilities, values and reference log-probabilities; its scores are awaited last.
        awaiting_scores = self._start_scoring(prompts, completions)

        input_ids = torch.cat([enc["input_ids"], responses], 1)
        attention_mask = torch.cat([enc["attention_mask"], mask.long()], 1)
        logprobs, ref_logprobs, values, entropy = [], [], [], []
        chunk = cfg.mini_batch_size // self.accelerator.num_processes
        with self.accelerator.autocast():
            for i in range(0, len(prompts), chunk):
                ids, att = input_ids[i : i + chunk], attention_mask[i : i + chunk]
                logits, value = unwrapped(ids, att)
                lp, response_logits = _response_logprobs(logits, ids, context, cfg.temperature)
                logprobs.append(lp)
                entropy.append(entropy_from_logits(response_logits))
                values.append(value[:, context - 1 : -1])
                ref_logprobs.append(_response_logprobs(self._ref_logits(ids, att), ids, context, cfg.temperature)[0])
        waited = time.perf_counter()
        raw_scores = awaiting_scores()
        self._reward_wait = time.perf_counter() - waited
        scores = raw_scores
        if cfg.missing_eos_penalty is not None:
            scores = raw_scores - cfg.missing_eos_penalty * (~ended).float()
        return Rollout(
            input_ids=input_ids,
            attention_mask=attention_mask,
            context=context,
            mask=mask.float(),
            raw_scores=raw_scores,
            scores=scores,
            logprobs=torch.cat(logprobs),
            ref_logprobs=torch.cat(ref_logprobs),
            values=torch.cat(values).float(),
            entropy=torch.cat(entropy),
        )

    def step(self, prompts: Sequence[Conversation]) -> dict[str, float]:
        """One PPO iteration on ``config.batch_size`` prompts (chat conversations); returns metrics:
        reward_mean/reward_std (of ``reward_fn``'s scores), kl (mean sequence KL to the reference),
        kl_coef (used for this batch), policy_loss, value_loss, clipfrac, value_clipfrac, approx_kl,
        entropy (per token), response_length_mean, step_seconds and reward_wait_seconds (time the
        rollout still waited for its scores after the value and reference passes it overlapped)."""
        cfg = self.config
        if len(prompts) != cfg.batch_size:
            raise ValueError(f"step expects batch_size={cfg.batch_size} prompts, got {len(prompts)}")
        started = time.perf_counter()
        acc = self.accelerator
        share = cfg.batch_size // acc.num_processes
        local = [list(p) for p in prompts[acc.process_index * share : (acc.process_index + 1) * share]]
        roll = self._rollout(local)
        mask, context = roll.mask, roll.context
        kl_coef = self.kl_controller.value

        rewards = per_token_rewards(roll.scores, roll.logprobs, roll.ref_logprobs, mask, kl_coef)
        if cfg.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = compute_gae(rewards, roll.values, mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, mask)

        self.model.train()
        minibatch = cfg.mini_batch_size // acc.num_processes
        totals = torch.zeros(5, device=acc.device)  # policy loss, value loss, clipfrac, value clipfrac, approx kl
        updates = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(share, device=acc.device)
            for start in range(0, share, minibatch):
                idx = order[start : start + minibatch]
                with acc.autocast():
                    logits, values = self.model(roll.input_ids[idx], roll.attention_mask[idx])
                logprobs = _response_logprobs(logits, roll.input_ids[idx], context, cfg.temperature)[0]
                pg_loss, clipfrac, approx_kl = policy_loss(
                    logprobs, roll.logprobs[idx], advantages[idx], mask[idx], cfg.cliprange
                )
                vf_loss, vf_clipfrac = value_loss(
                    values[:, context - 1 : -1].float(), roll.values[idx], returns[idx], mask[idx], cfg.cliprange_value
                )
                acc.backward(pg_loss + cfg.vf_coef * vf_loss)
                acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
                totals += torch.stack([pg_loss.detach(), vf_loss.detach(), clipfrac, vf_clipfrac, approx_kl])
                updates += 1

        sequence_kl = (kl_penalty(roll.logprobs, roll.ref_logprobs) * mask).sum(1)
        entropy = masked_mean(roll.entropy, mask).reshape(1)
        gathered = acc.gather(torch.stack([roll.raw_scores, sequence_kl, mask.sum(1)]).T.contiguous())
        scores, kls, lengths = gathered.T
        averages = acc.reduce(torch.cat([totals / updates, entropy]), reduction="mean")
        kl = kls.mean().item()
        self.kl_controller.update(kl, cfg.batch_size)
        self.global_step += 1
        metrics = {
            "reward_mean": scores.mean().item(),
            "reward_std": scores.std(correction=0).item(),
            "kl": kl,
            "kl_coef": kl_coef,
            "policy_loss": averages[0].item(),
            "value_loss": averages[1].item(),
            "clipfrac": averages[2].item(),
            "value_clipfrac": averages[3].item(),
            "approx_kl": averages[4].item(),
            "entropy": averages[5].item(),
            "response_length_mean": lengths.mean().item(),
            "step_seconds": time.perf_counter() - started,
            "reward_wait_seconds": self._reward_wait,
        }
        log.info(
            "ppo step %d: reward %.4f kl %.4f kl_coef %.4f policy_loss %.4f value_loss %.4f (%.1fs)",
            self.global_step,
            metrics["reward_mean"],
            kl,
            kl_coef,
            metrics["policy_loss"],
            metrics["value_loss"],
            metrics["step_seconds"],
        )
        return metrics

    def train(
        self,
        prompt_iter: Iterable[Sequence[Conversation]],
        steps: int | None = None,
        callback: Callable[[int, dict[str, float]], None] | None = None,
    ) -> list[dict[str, float]]:
        """Runs ``steps`` (default ``config.steps``) iterations, one prompt batch from ``prompt_iter``
        each; calls ``callback(global_step, metrics)`` after each. Returns the metrics of every step."""
        steps = self.config.steps if steps is None else steps
        batches = iter(prompt_iter)
        history: list[dict[str, float]] = []
        for _ in range(steps):
            try:
                prompts = next(batches)
            except StopIteration:
                raise ValueError(f"prompt_iter ran out after {len(history)} batches of the {steps} steps") from None
            metrics = self.step(prompts)
            history.append(metrics)
            if callback is not None:
                callback(self.global_step, metrics)
        return history

    # --- checkpoints -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Writes the policy (LoRA adapters merged into a copy) and tokenizer as a plain model folder,
        with ``ppo/value_head.safetensors`` and ``ppo/state.json`` (step, kl_coef) beside them."""
        path = Path(path)
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            path.mkdir(parents=True, exist_ok=True)
            unwrapped = acc.unwrap_model(self.model)
            policy = unwrapped.policy
            if self.config.lora:
                policy = copy.deepcopy(policy).merge_and_unload()  # the trained adapters stay in place
            policy.save_pretrained(path, safe_serialization=True)
            self.tokenizer.save_pretrained(path)
            head = {k: v.detach().float().cpu().contiguous() for k, v in unwrapped.value_head.state_dict().items()}
            (path / VALUE_HEAD_FILE).parent.mkdir(exist_ok=True)
            save_file(head, path / VALUE_HEAD_FILE)
            state = {"step": self.global_step, "kl_coef": self.kl_controller.value}
            (path / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        acc.wait_for_everyone()
        return path

    def load_state(self, path: str | Path) -> None:
        """Restores the value head, step count and KL coefficient saved by ``save`` in ``path``. The
        policy weights come from ``policy_path``: build the trainer with ``policy_path=path`` (and
        the original reference as ``ref_path``) to resume. The optimiser's moments start afresh."""
        path = Path(path)
        if not (path / STATE_FILE).is_file() or not (path / VALUE_HEAD_FILE).is_file():
            raise FileNotFoundError(f"{path}: not a PPO checkpoint (needs {STATE_FILE} and {VALUE_HEAD_FILE})")
        if Path(self.policy_path).resolve() != path.resolve():
            log.warning("load_state(%s): the policy weights stay those of %s", path, self.policy_path)
        state = json.loads((path / STATE_FILE).read_text())
        head = self.accelerator.unwrap_model(self.model).value_head
        head.load_state_dict(load_file(path / VALUE_HEAD_FILE, device=str(self.accelerator.device)))
        self.global_step = int(state["step"])
        self.kl_controller.value = float(state["kl_coef"])
