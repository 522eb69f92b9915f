"""The reward model: a sequence classifier trained on AI-labeled comparisons with a soft-label
Bradley-Terry loss, on TRL's ``RewardTrainer``.

A comparison is ``{"prompt": [messages], "answer_a", "answer_b", "p_a", "kind"}`` where ``p_a`` is
the judge's probability that A is the better answer. It maps to TRL's explicit-prompt preference
format (``chosen`` = A, ``rejected`` = B) plus a ``p_a`` column, so TRL tokenizes both sequences with
the chat template; the collator keeps ``p_a``, the trainer keeps it among the signature columns and
``compute_loss`` uses it. ``score`` formats (prompt, answer) exactly as training does, so the reward
service scores what the model was trained on.

The saved checkpoint is a plain ``AutoModelForSequenceClassification`` folder (LoRA merged) with
``config.pad_token_id`` set and a ``manifest.json`` carrying the evaluation metrics.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from services.comparison import HARMLESSNESS, HELPFULNESS, Comparison, ComparisonError
from services.config import ConfigError
from services.training.checkpoint import run_args, write_manifest
from services.training.reward_config import RewardRunConfig

log = logging.getLogger(__name__)


def soft_bradley_terry_loss(r_a: torch.Tensor, r_b: torch.Tensor, p_a: torch.Tensor) -> torch.Tensor:
    """Mean of ``-[p_a log sigmoid(r_a - r_b) + (1 - p_a) log sigmoid(r_b - r_a)]`` over the batch:
    the cross-entropy between the soft label and the Bradley-Terry preference probability."""
    diff = r_a - r_b
    return -(p_a * F.logsigmoid(diff) + (1 - p_a) * F.logsigmoid(-diff)).mean()


def soft_label_accuracy(r_a: torch.Tensor, r_b: torch.Tensor, p_a: torch.Tensor) -> float | None:
    """Fraction of comparisons whose reward order agrees with the label's side (``p_a > 0.5``);
    undecided labels (``p_a == 0.5``) are left out. None when every label is undecided."""
    decided = p_a != 0.5
    if not decided.any():
        return None
    agree = (r_a > r_b) == (p_a > 0.5)
    return agree[decided].float().mean().item()


@dataclass
class SoftLabelCollator(DataCollatorForPreference):
    """TRL's preference collator (A sequences first, then B) that also keeps the ``p_a`` column."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        batch["p_a"] = torch.tensor([example["p_a"] for example in examples], dtype=torch.float)
        return batch


def _pair_rewards(model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the A and B halves of a collated batch."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
    r_a, r_b = torch.chunk(logits.squeeze(-1), chunks=2)
    return r_a, r_b


class SoftLabelRewardTrainer(RewardTrainer):
    """``trl.RewardTrainer`` trained on soft labels: each example carries ``p_a`` (probability that
    ``chosen`` is better than ``rejected``) and the loss is ``soft_bradley_terry_loss``."""

    def __init__(self, model, args=None, data_collator=None, **kwargs):
        super().__init__(model, args, data_collator, **kwargs)
        if data_collator is None:  # the pad token is only settled inside RewardTrainer.__init__
            self.data_collator = SoftLabelCollator(
                pad_token_id=self.processing_class.pad_token_id, pad_to_multiple_of=self.args.pad_to_multiple_of
            )

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", "p_a"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        if "p_a" not in inputs:
            raise ValueError("the batch has no `p_a` column: use SoftLabelCollator and datasets with a p_a column")
        r_a, r_b = _pair_rewards(model, inputs)
        loss = soft_bradley_terry_loss(r_a, r_b, inputs["p_a"])
        if self.args.center_rewards_coefficient is not None:
            loss += self.args.center_rewards_coefficient * torch.mean((r_a + r_b) ** 2)
        with torch.no_grad():
            all_a, all_b, all_p = self.accelerator.gather_for_metrics((r_a, r_b, inputs["p_a"]))
            self._metrics[mode]["mean_reward"].append(torch.cat([all_a, all_b]).mean().item())
            self._metrics[mode]["margin"].append((all_a - all_b).mean().item())
            accuracy = soft_label_accuracy(all_a, all_b, all_p)
            if accuracy is not None:
                self._metrics[mode]["accuracy"].append(accuracy)
        if return_outputs:
            return loss, {"rewards": torch.stack([r_a, r_b], dim=-1)}
        return loss


def comparisons_to_dataset(comparisons: Sequence[dict]) -> Dataset:
    """Comparisons as a TRL preference dataset: conversational ``prompt``, ``chosen`` (answer A) and
    ``rejected`` (answer B) as one assistant message each, and ``p_a``."""
    if not comparisons:
        raise ValueError("no comparisons: the comparison list is empty")
    rows: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "p_a": []}
    for i, c in enumerate(comparisons):
        where = f"comparison {i} ({c.get('id', 'no id')})" if isinstance(c, dict) else f"comparison {i}"
        try:
            c = Comparison.from_dict(c, queued=False)
        except ComparisonError as exc:
            raise ValueError(f"{where}: {exc}") from None
        messages = [{"role": m["role"], "content": m["content"]} for m in c.prompt]
        rows["prompt"].append(messages)
        rows["chosen"].append([{"role": "assistant", "content": c.answer_a}])
        rows["rejected"].append([{"role": "assistant", "content": c.answer_b}])
        rows["p_a"].append(float(c.p_a))
    return Dataset.from_dict(rows)


def helpfulness_pairs_to_comparisons(pairs: Iterable[dict], seed: int = 0) -> list[dict]:
    """Helpfulness preference pairs (``id``, ``messages``, ``chosen``, ``rejected``) as comparisons
    with hard labels. The A/B order is drawn with ``seed`` for each pair (``p_a`` = 1.0 when the
    chosen answer is A, 0.0 when it is B), so the reward model cannot learn the position."""
    rng = random.Random(seed)
    out = []
    for i, pair in enumerate(pairs):
        where = f"helpfulness pair {i} ({pair.get('id', 'no id')})"
        for key in ("messages", "chosen", "rejected"):
            if not pair.get(key):
                raise ValueError(f"{where}: {key}: is required")
        swap = rng.random() < 0.5
        chosen, rejected = pair["chosen"], pair["rejected"]
        out.append(
            Comparison(
                id=pair.get("id", f"helpfulness-{i}"),
                kind=HELPFULNESS,
                prompt=[{"role": m["role"], "content": m["content"]} for m in pair["messages"]],
                answer_a=rejected if swap else chosen,
                answer_b=chosen if swap else rejected,
                p_a=0.0 if swap else 1.0,
            ).to_dict()
        )
    return out


ANY_CONSTITUTION = "any"


def _row_constitution(row: dict) -> str:
    prov = row.get("provenance")
    return (prov.get("constitution_sha256", "") if isinstance(prov, dict) else "") or ""


def select_constitution(rows: Sequence[dict], wanted: str = "") -> tuple[str, list[dict], int]:
    """The harmlessness comparisons to train on: those labelled under one constitution hash.

    ``wanted``: "" picks the newest hash in ``rows`` (the hash of the last row that has one: rows
    are in the order they arrived); "any" keeps every row; otherwise a full hash or a prefix of
    it. Returns ``(hash chosen, rows of that hash, number of rows left out)``; the hash is "any"
    for "any" and "" when no row matches."""
    rows = list(rows)
    if wanted == ANY_CONSTITUTION:
        return ANY_CONSTITUTION, rows, 0
    if not wanted:
        chosen = next((h for h in map(_row_constitution, reversed(rows)) if h), "")
    else:
        matches = sorted({h for h in map(_row_constitution, rows) if h.startswith(wanted)})
        if len(matches) > 1:
            raise ValueError(
                f"constitution_sha256 {wanted!r} matches several hashes in the data: "
                f"{', '.join(m[:16] for m in matches)}; give more digits"
            )
        chosen = matches[0] if matches else ""
    if not chosen:
        return "", [], len(rows)
    kept = [r for r in rows if _row_constitution(r) == chosen]
    return chosen, kept, len(rows) - len(kept)


def helpfulness_mix(n_comparisons: int, n_available: int, ratio: float) -> dict:
    """How many helpfulness comparisons a training run wants at ``ratio`` and how many it gets:
    ``wanted``, ``used``, ``available``, ``share`` (of the mixed data), ``target`` (= ratio) and
    ``short`` (True when they ran out before the target)."""
    wanted = round(n_comparisons * ratio / (1 - ratio))
    used = min(wanted, n_available)
    total = n_comparisons + used
    return {
        "wanted": wanted,
        "used": used,
        "available": n_available,
        "target": ratio,
        "share": used / total if total else 0.0,
        "short": used < wanted,
    }


def mix_helpfulness(comparisons: Sequence[dict], helpfulness: Sequence[dict], ratio: float, seed: int) -> list[dict]:
    """The comparisons plus a seeded sample of helpfulness comparisons making up ``ratio`` of the
    result (all of them when fewer are available: see ``helpfulness_mix``)."""
    mix = helpfulness_mix(len(comparisons), len(helpfulness), ratio)
    sample = random.Random(seed).sample(list(helpfulness), mix["used"])
    return [*comparisons, *sample]


def split_eval(comparisons: Sequence[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, eval): a seeded shuffle with ``fraction`` held out (at least one when the fraction is
    positive, never all)."""
    shuffled = list(comparisons)
    random.Random(seed).shuffle(shuffled)
    n_eval = min(max(1, round(len(shuffled) * fraction)), len(shuffled) - 1) if fraction > 0 else 0
    return shuffled[n_eval:], shuffled[:n_eval]


def _chat_ids(tokenizer, prompt: Sequence[dict], answer: str) -> list[int]:
    """Token ids of (prompt, answer) as TRL's reward trainer builds them for training."""
    messages = [
        *({"role": m["role"], "content": m["content"]} for m in prompt),
        {"role": "assistant", "content": answer},
    ]
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def chat_token_ids(tokenizer, prompts: Sequence[Sequence[dict]], answers: Sequence[str]) -> list[list[int]]:
    """Token ids of each (prompt, answer) pair as ``score`` feeds them to the model."""
    if len(prompts) != len(answers):
        raise ValueError(f"score: {len(prompts)} prompts but {len(answers)} answers")
    return [_chat_ids(tokenizer, p, a) for p, a in zip(prompts, answers)]


def score(
    model, tokenizer, prompts: Sequence[Sequence[dict]], answers: Sequence[str], batch_size: int = 32
) -> list[float]:
    """Rewards of (prompt, answer) pairs, formatted with the chat template exactly as in training
    and right-padded with ``model.config.pad_token_id``, ``batch_size`` pairs per forward pass."""
    return score_token_ids(model, chat_token_ids(tokenizer, prompts, answers), batch_size)


@torch.inference_mode()
def score_token_ids(model, token_ids: Sequence[Sequence[int]], batch_size: int = 32) -> list[float]:
    """Rewards of already tokenized pairs (``chat_token_ids``): what ``score`` computes, without
    tokenizing again (the reward service tokenizes once to check lengths, then scores)."""
    pad_id = model.config.get_text_config().pad_token_id
    if pad_id is None:
        raise ValueError("score: model.config.pad_token_id is not set (needed to find each sequence's end)")
    scores: list[float] = []
    for start in range(0, len(token_ids), batch_size):
        ids = [torch.tensor(t) for t in token_ids[start : start + batch_size]]
        input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_id)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(t) for t in ids], batch_first=True)
        logits = model(
            input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device), use_cache=False
        ).logits
        scores.extend(logits[:, 0].float().tolist())
    return scores


@torch.inference_mode()
def evaluate_soft_labels(model, dataset: Dataset, collator: SoftLabelCollator, batch_size: int) -> dict:
    """Soft-label loss and accuracy of ``model`` on a tokenized preference dataset (from the trainer)."""
    was_training = model.training
    model.eval()
    r_a, r_b, p_a = [], [], []
    columns = dataset.select_columns(["chosen_ids", "rejected_ids", "p_a"])
    for start in range(0, len(columns), batch_size):
        batch = collator([columns[i] for i in range(start, min(start + batch_size, len(columns)))])
        a, b = _pair_rewards(model, {k: v.to(model.device) for k, v in batch.items()})
        r_a.append(a.float().cpu())
        r_b.append(b.float().cpu())
        p_a.append(batch["p_a"])
    model.train(was_training)
    r_a, r_b, p_a = torch.cat(r_a), torch.cat(r_b), torch.cat(p_a)
    return {"loss": soft_bradley_terry_loss(r_a, r_b, p_a).item(), "accuracy": soft_label_accuracy(r_a, r_b, p_a)}


def train_reward_model(cfg: RewardRunConfig, comparisons: Sequence[dict], helpfulness: Sequence[dict] = ()) -> Path:
    """Trains a reward model on ``comparisons`` (harmlessness) mixed with ``helpfulness``
    comparisons at ``cfg.helpfulness_ratio``, holds out ``cfg.eval_fraction`` and saves the model
    with its manifest to ``cfg.out``, which it returns."""
    from transformers import AutoConfig, AutoTokenizer
    from trl import RewardConfig

    from services.models.registry import resolve_model

    if problem := cfg.validate():
        raise ConfigError(f"RewardRunConfig: {problem[0]}: {problem[1]}")
    if not comparisons:
        raise ValueError("no comparisons to train the reward model on: the comparison list is empty")
    model_path = str(resolve_model(cfg.model))
    base = AutoConfig.from_pretrained(model_path)
    is_classifier = any(a.endswith("ForSequenceClassification") for a in base.architectures or ())
    if is_classifier and base.num_labels != 1:
        raise ValueError(f"{cfg.model}: a reward model has one output, this classifier has {base.num_labels}")
    mixed = mix_helpfulness(comparisons, helpfulness, cfg.helpfulness_ratio, cfg.seed)
    mix = helpfulness_mix(len(comparisons), len(helpfulness), cfg.helpfulness_ratio)
    warnings = []
    if mix["short"]:
        warnings.append(
            f"helpfulness share {mix['share']:.3f} is below its target {mix['target']:.3f}: the helpfulness "
            f"comparisons ran out ({mix['used']} used of {mix['wanted']} wanted; add helpfulness pairs or lower "
            f"helpfulness_ratio)"
        )
        log.warning("reward model %s: %s", Path(cfg.out).name, warnings[-1])
    train_rows, eval_rows = split_eval(mixed, cfg.eval_fraction, cfg.seed)
    out = Path(cfg.out)
    work = out.with_name(out.name + ".work")
    args = RewardConfig(
        model_init_kwargs={"dtype": torch.float32},
        eval_strategy="no",
        **run_args(cfg, work),
    )
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        # SEQ_CLS keeps the new reward head ("score") fully trainable beside the adapters.
        peft_config = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, task_type="SEQ_CLS", target_modules="all-linear"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    trainer = SoftLabelRewardTrainer(
        model=model_path,
        args=args,
        processing_class=tokenizer,
        peft_config=peft_config,
        train_dataset=comparisons_to_dataset(train_rows),
        eval_dataset=comparisons_to_dataset(eval_rows) if eval_rows else None,
    )
    if len(trainer.train_dataset) == 0:
        raise ValueError(
            f"all {len(train_rows)} training comparisons are longer than max_length={cfg.max_length} tokens"
        )
    eval_set = trainer.eval_dataset if eval_rows and len(trainer.eval_dataset) else None
    n_eval = len(eval_set) if eval_set else 0
    before = evaluate_soft_labels(trainer.model, eval_set, trainer.data_collator, cfg.batch_size) if eval_set else None
    result = trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.lora:
        trained = trained.merge_and_unload()
    after = evaluate_soft_labels(trained, eval_set, trainer.data_collator, cfg.batch_size) if eval_set else None
    if trainer.accelerator.is_main_process:
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        trained.config.get_text_config().pad_token_id = tokenizer.pad_token_id
        trained.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        n_help = len(mixed) - len(comparisons)
        write_manifest(
            tmp,
            kind="reward",
            step=trainer.state.global_step,
            base_model=cfg.model,
            data={
                HARMLESSNESS: len(comparisons),
                HELPFULNESS: n_help,
                "helpfulness_available": len(helpfulness),
                "helpfulness_wanted": mix["wanted"],
                "helpfulness_share": mix["share"],
                "helpfulness_share_target": mix["target"],
                "helpfulness_short": mix["short"],
                "train": len(trainer.train_dataset),
                "eval": n_eval,
                "too_long": len(train_rows) - len(trainer.train_dataset) + len(eval_rows) - n_eval,
            },
            metrics={
                "train_loss": result.training_loss,
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
                "eval_loss": after["loss"] if after else None,
                "eval_accuracy": after["accuracy"] if after else None,
                "initial_eval_loss": before["loss"] if before else None,
                "initial_eval_accuracy": before["accuracy"] if before else None,
                "helpfulness_share": mix["share"],
                "helpfulness_share_target": mix["target"],
            },
            warnings=warnings,
            id=out.name,  # the final name, not the temporary folder's
            lora=cfg.lora,
            max_length=cfg.max_length,
            helpfulness_ratio=cfg.helpfulness_ratio,
        )
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        shutil.rmtree(work, ignore_errors=True)
    return out
