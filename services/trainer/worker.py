"""The trainer's work loop: take labeled comparisons from the queue, make them durable, train.

Delivery is at-least-once, so the loop is built to make every comparison count exactly once:

1. Comparisons are read from the consumer group (new ones, plus ones another consumer took and
   never acknowledged for ``claim_idle_ms``: a trainer that died).
2. New ones are appended to ``data/comparisons.jsonl`` and fsynced, then acknowledged. A
   comparison whose id is already in that file was delivered twice (the trainer died between
   writing and acknowledging): it is acknowledged and not written again.
3. Every ``train_every`` new comparisons, a reward model is trained on all of the data and saved
   as ``checkpoints/reward-NNNNN`` with a manifest (rows trained on, queue position, constitution
   hashes, metrics); ``state.json`` is replaced atomically after the checkpoint is complete.
   Optionally the policy is then trained against it (PPO, or TRL's GRPO/RLOO).

Killed at any moment (``kill -9``), a restarted trainer reads the file and the state and goes on:
nothing acknowledged is lost (it was on disk first), nothing is trained on twice (ids), and
training that was cut short is done again from the last complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from prometheus_client import Counter, Gauge

from services.common.channels import open_channel
from services.common.jsonl import append_rows, read_rows
from services.queue import redact_url  # noqa: F401 (re-exported: services.trainer.service)
from services.trainer.config import TrainerConfig

log = logging.getLogger(__name__)

CONSUMED = Counter("cai_comparisons_consumed_total", "Labeled comparisons taken into training data (each once).")
DUPLICATES = Counter("cai_trainer_redelivered_skipped_total", "Redelivered comparisons recognised and skipped.")
LOSS = Gauge("cai_trainer_loss", "Latest training loss, by phase.", ["phase"])
RM_ACCURACY = Gauge("cai_reward_model_accuracy", "Held-out reward-model accuracy against the soft labels.")
PPO_REWARD = Gauge("cai_ppo_reward_mean", "Mean reward of the latest policy-optimisation step.")
PPO_KL = Gauge("cai_ppo_kl", "KL to the reference policy at the latest policy-optimisation step.")
LAST_CHECKPOINT = Gauge("cai_trainer_last_checkpoint_timestamp_seconds", "Unix time of the latest checkpoint.")


class TrainerWorker:
    """Runs the loop in a thread; ``status()`` is safe to call from any thread."""

    def __init__(self, cfg: TrainerConfig):
        self.cfg = cfg
        self.work = Path(cfg.work_dir)
        self.data_file = self.work / "data" / "comparisons.jsonl"
        self.state_file = self.work / "state.json"
        self.consumer = cfg.consumer or socket.gethostname()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.finished = threading.Event()
        self._status = {"phase": "idle", "items_consumed": 0, "items_dead_lettered": 0, "step": 0,
                        "last_checkpoint": None, "metrics": {}, "queue_lag": 0, "error": ""}
        self._thread: threading.Thread | None = None

    # -- state ---------------------------------------------------------------------------------

    def _load_state(self) -> dict:
        if self.state_file.exists():
            return json.loads(self.state_file.read_text())
        return {"trained_rows": 0, "reward_checkpoints": [], "policy_checkpoints": []}

    def _save_state(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        with open(tmp) as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.state_file)

    def _set(self, **changes) -> None:
        with self._lock:
            self._status.update(changes)

    def status(self) -> dict:
        with self._lock:
            return json.loads(json.dumps(self._status))

    # -- loop ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trainer-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self.loop()
            self._set(phase="done")
        except Exception as exc:  # reported through Trainer.Status and the log, not a dead thread
            log.exception("trainer failed")
            self._set(phase="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.finished.set()

    def loop(self) -> None:
        from services.queue import open_queue

        cfg = self.cfg
        self.data_file.parent.mkdir(parents=True, exist_ok=True)
        (self.work / "checkpoints").mkdir(parents=True, exist_ok=True)
        queue = open_queue(cfg.queue)
        try:
            ids = {row["id"] for row in read_rows(self.data_file)}
            state = self._load_state()
            self._set(items_consumed=len(ids),
                      last_checkpoint=(state["reward_checkpoints"] or [None])[-1])
            log.info("trainer %s: %d comparisons on disk, %d trained on", self.consumer, len(ids), state["trained_rows"])
            idle_since = time.monotonic()
            while not self._stop.is_set():
                if cfg.max_comparisons and len(ids) >= cfg.max_comparisons:
                    break
                deliveries = queue.claim_stale(cfg.group, self.consumer, cfg.claim_idle_ms, cfg.consume_batch)
                deliveries += queue.consume(cfg.group, self.consumer, cfg.consume_batch, block_ms=500)
                budget = cfg.max_comparisons - len(ids) if cfg.max_comparisons else len(deliveries)
                new, seen, taken = [], set(), []
                for d in deliveries:
                    cid = d.item["id"]
                    if cid in ids or cid in seen:
                        DUPLICATES.inc()  # delivered again: already durable, only acknowledge
                        taken.append(d)
                    elif len(new) < budget:
                        seen.add(cid)
                        new.append(d.item)
                        taken.append(d)
                    # else: over max_comparisons, left unacknowledged for another consumer
                append_rows(self.data_file, new)  # durable before acknowledging
                queue.ack(cfg.group, taken)
                ids.update(seen)
                CONSUMED.inc(len(new))
                self._set(items_consumed=len(ids), items_dead_lettered=queue.dead_letter_count(),
                          queue_lag=queue.lag(cfg.group))
                if deliveries:
                    idle_since = time.monotonic()
                untrained = len(ids) - state["trained_rows"]
                idle = cfg.exit_when_idle_seconds and time.monotonic() - idle_since > cfg.exit_when_idle_seconds
                if untrained >= cfg.train_every or (untrained and (idle or self._at_limit(ids))):
                    state = self.train(queue, state)
                if idle:
                    break
            untrained = len(ids) - state["trained_rows"]
            if untrained and not self._stop.is_set():
                self.train(queue, state)
        finally:
            queue.close()

    def _at_limit(self, ids) -> bool:
        return bool(self.cfg.max_comparisons) and len(ids) >= self.cfg.max_comparisons

    # -- training ------------------------------------------------------------------------------

    def train(self, queue, state: dict) -> dict:
        from services.trainer.checkpoint import read_manifest
        from services.trainer.reward_config import RewardRunConfig
        from services.trainer.reward_trainer import train_reward_model

        cfg = self.cfg
        rows = read_rows(self.data_file)
        number = len(state["reward_checkpoints"]) + 1
        out = self.work / "checkpoints" / f"reward-{number:05d}"
        self._set(phase="reward_model", step=0)
        log.info("training reward model %s on %d comparisons", out.name, len(rows))
        harmless = [r for r in rows if r.get("kind", "harmlessness") != "helpfulness"]
        helpful = [r for r in rows if r.get("kind") == "helpfulness"]
        path = train_reward_model(
            RewardRunConfig(model=cfg.reward_base_model, out=str(out), epochs=cfg.reward_epochs,
                            max_steps=cfg.reward_max_steps, learning_rate=cfg.reward_learning_rate,
                            batch_size=cfg.reward_batch_size, helpfulness_ratio=cfg.helpfulness_ratio,
                            eval_fraction=cfg.eval_fraction, seed=cfg.seed),
            harmless, helpfulness=helpful,
        )
        manifest = read_manifest(path)
        manifest["queue"] = {"url": redact_url(cfg.queue), "group": cfg.group, "position": queue.position(cfg.group)}
        manifest["data"]["rows_on_disk"] = len(rows)
        manifest["constitution_sha256s"] = sorted({r["provenance"].get("constitution_sha256", "") for r in harmless} - {""})
        (path / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        metrics = manifest.get("metrics", {})
        if "eval_accuracy" in metrics and metrics["eval_accuracy"] is not None:
            RM_ACCURACY.set(metrics["eval_accuracy"])
        if metrics.get("train_loss") is not None:
            LOSS.labels("reward_model").set(metrics["train_loss"])
        LAST_CHECKPOINT.set(time.time())
        state = {**state, "trained_rows": len(rows),
                 "reward_checkpoints": [*state["reward_checkpoints"], str(path)]}
        self._save_state(state)
        self._set(last_checkpoint=str(path), metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        if cfg.reward_service:
            promote(cfg.reward_service, "reward", path)
        if cfg.policy_training.enabled:
            state = self.train_policy(state, path)
        self._set(phase="idle")
        return state

    def train_policy(self, state: dict, reward_path: Path) -> dict:
        from services.trainer.policy import train_policy

        pt = self.cfg.policy_training
        number = len(state["policy_checkpoints"]) + 1
        out = self.work / "checkpoints" / f"policy-{number:05d}"
        start = state["policy_checkpoints"][-1] if state["policy_checkpoints"] else pt.policy
        self._set(phase="policy", step=0)

        def on_step(step: int, m: dict) -> None:
            PPO_REWARD.set(m.get("reward_mean", 0.0))
            PPO_KL.set(m.get("kl", 0.0))
            if m.get("policy_loss") is not None:
                LOSS.labels("policy").set(m["policy_loss"])
            self._set(step=step, metrics={k: v for k, v in m.items() if isinstance(v, (int, float))})

        path = train_policy(pt, start, pt.policy, reward_path, out, seed=self.cfg.seed, on_step=on_step)
        LAST_CHECKPOINT.set(time.time())
        state = {**state, "policy_checkpoints": [*state["policy_checkpoints"], str(path)]}
        self._save_state(state)
        self._set(last_checkpoint=str(path))
        if pt.generation_service:
            promote(pt.generation_service, "generation", path)
        return state


def promote(address: str, service: str, path: Path) -> None:
    """Loads a checkpoint into a running service through its LoadCheckpoint RPC."""
    import grpc

    from services.api.cai.v1 import common_pb2, generation_pb2_grpc, reward_pb2_grpc

    stub_cls = reward_pb2_grpc.RewardStub if service == "reward" else generation_pb2_grpc.GenerationStub
    with open_channel(address) as channel:
        response = stub_cls(channel).LoadCheckpoint(
            common_pb2.LoadCheckpointRequest(path=str(Path(path).resolve()), checkpoint_id=Path(path).name), timeout=600)
    log.info("promoted %s to the %s service at %s (was %s)", response.checkpoint_id, service, address,
             response.previous_checkpoint_id)
