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

Promotion: a new checkpoint is pushed to every replica behind the service's target (all addresses
of a ``dns:///`` name or a ``host:port``, each of an ``ipv4:`` list) with ``LoadCheckpoint``. It is
written to ``promotions.json`` as pending first, and recorded as promoted in ``state.json`` only
once every replica confirmed it; until then the trainer keeps training and retries with backoff,
also after a restart. A queue (Redis) that goes away is reopened with backoff, reported in
``Trainer.Status`` (``queue_connected``, ``queue_error``) and ``cai_trainer_queue_up``; it is not
fatal. Any other failure of the loop ends the process non-zero (Kubernetes restarts it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from prometheus_client import Counter, Gauge

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
QUEUE_UP = Gauge("cai_trainer_queue_up", "1 while the trainer is connected to its queue, 0 while it reconnects.")
QUEUE_RECONNECTS = Counter("cai_trainer_queue_reconnects_total", "Times the trainer lost its queue and reopened it.")
PROMOTIONS = Counter(
    "cai_trainer_promotions_total",
    "Promotion attempts of a checkpoint to a service, by outcome (ok: every replica confirmed).",
    ["service", "outcome"],
)
PROMOTIONS_PENDING = Gauge("cai_trainer_promotions_pending", "Checkpoints waiting to be promoted (a service down).")

RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0


class TrainerWorker:
    """Runs the loop in a thread; ``status()`` is safe to call from any thread."""

    def __init__(self, cfg: TrainerConfig):
        self.cfg = cfg
        self.work = Path(cfg.work_dir)
        self.data_file = self.work / "data" / "comparisons.jsonl"
        self.state_file = self.work / "state.json"
        self.promotions_file = self.work / "promotions.json"
        self._pending: dict[str, dict] = {}
        self._next_promotion = 0.0
        self._promotion_delay = RETRY_MIN_SECONDS
        self.consumer = cfg.consumer or socket.gethostname()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.finished = threading.Event()
        self._status = {
            "phase": "idle",
            "items_consumed": 0,
            "items_dead_lettered": 0,
            "step": 0,
            "last_checkpoint": None,
            "metrics": {},
            "queue_lag": 0,
            "error": "",
            "queue_connected": False,
            "queue_error": "",
            "promotions_pending": [],
            "constitution_sha256": cfg.constitution_sha256,
            "warning": "",
        }
        self.failed = False
        """True when the loop ended on an error: the process must exit non-zero."""
        self._thread: threading.Thread | None = None

    # -- state ---------------------------------------------------------------------------------

    def _load_state(self) -> dict:
        if self.state_file.exists():
            return json.loads(self.state_file.read_text())
        return {"trained_rows": 0, "reward_checkpoints": [], "policy_checkpoints": []}

    def _save_state(self, state: dict) -> None:
        _write_atomically(self.state_file, state)

    def _save_pending(self) -> None:
        _write_atomically(self.promotions_file, self._pending)
        PROMOTIONS_PENDING.set(len(self._pending))
        self._set(promotions_pending=sorted(f"{k}: {v['path']}" for k, v in self._pending.items()))

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
        except Exception as exc:  # reported through Trainer.Status and the log; the process exits 1
            log.exception("trainer failed")
            self.failed = True
            self._set(phase="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.finished.set()

    def loop(self) -> None:
        """Consumes, trains and promotes until stopped or the bounded job is done; reopens the
        queue with backoff when it goes away."""
        from services.queue import open_queue
        from services.queue.base import MalformedItem, QueueError

        cfg = self.cfg
        self.data_file.parent.mkdir(parents=True, exist_ok=True)
        (self.work / "checkpoints").mkdir(parents=True, exist_ok=True)
        ids = {row["id"] for row in read_rows(self.data_file)}
        self.state = self._load_state()
        if self.promotions_file.exists():
            self._pending = json.loads(self.promotions_file.read_text())
            self._save_pending()
        self._set(items_consumed=len(ids), last_checkpoint=(self.state["reward_checkpoints"] or [None])[-1])
        log.info(
            "trainer %s: %d comparisons on disk, %d trained on", self.consumer, len(ids), self.state["trained_rows"]
        )
        delay, lost = RETRY_MIN_SECONDS, False
        while not self._stop.is_set():
            try:
                queue = open_queue(cfg.queue)
            except QueueError as exc:
                self._queue_down(exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            if lost:
                log.info("queue %s is back", redact_url(cfg.queue))
            self._set(queue_connected=True, queue_error="")
            QUEUE_UP.set(1)
            delay = RETRY_MIN_SECONDS
            try:
                self._consume(queue, ids)
                return
            except MalformedItem:
                raise
            except (QueueError, ConnectionError) as exc:  # the queue went away: reopen it, go on
                lost = True
                QUEUE_RECONNECTS.inc()
                self._queue_down(exc, delay)
                self._stop.wait(delay)
            finally:
                try:
                    queue.close()
                except Exception:  # closing a dead connection
                    pass

    def _queue_down(self, exc: Exception, delay: float) -> None:
        QUEUE_UP.set(0)
        message = f"{type(exc).__name__}: {exc}"
        self._set(queue_connected=False, queue_error=message)
        log.warning("queue %s unavailable (%s); retrying in %.1fs", redact_url(self.cfg.queue), message, delay)

    def _consume(self, queue, ids: set) -> None:
        cfg = self.cfg
        idle_since = time.monotonic()
        while not self._stop.is_set():
            self.promote_pending()
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
            ids.update(seen)  # on disk: never written twice, even if the acknowledgement fails
            queue.ack(cfg.group, taken)
            CONSUMED.inc(len(new))
            self._set(
                items_consumed=len(ids), items_dead_lettered=queue.dead_letter_count(), queue_lag=queue.lag(cfg.group)
            )
            if deliveries:
                idle_since = time.monotonic()
            untrained = len(ids) - self.state["trained_rows"]
            idle = cfg.exit_when_idle_seconds and time.monotonic() - idle_since > cfg.exit_when_idle_seconds
            if untrained >= cfg.train_every or (untrained and (idle or self._at_limit(ids))):
                self.state = self.train(queue, self.state)
            if idle:
                break
        untrained = len(ids) - self.state["trained_rows"]
        if untrained and not self._stop.is_set():
            self.state = self.train(queue, self.state)
        # A bounded job ends with its promotions done (or given up on after the retries).
        deadline = time.monotonic() + 60
        while self._pending and not self._stop.is_set() and time.monotonic() < deadline:
            self.promote_pending()
            self._stop.wait(0.2)

    def _at_limit(self, ids) -> bool:
        return bool(self.cfg.max_comparisons) and len(ids) >= self.cfg.max_comparisons

    # -- training ------------------------------------------------------------------------------

    def train(self, queue, state: dict) -> dict:
        from services.training.checkpoint import read_manifest
        from services.training.reward_trainer import select_constitution, train_reward_model

        cfg = self.cfg
        rows = read_rows(self.data_file)
        number = len(state["reward_checkpoints"]) + 1
        out = self.work / "checkpoints" / f"reward-{number:05d}"
        self._set(phase="reward_model", step=0)
        log.info("training reward model %s on %d comparisons", out.name, len(rows))
        helpful = [r for r in rows if r.get("kind") == "helpfulness"]
        # the labels of one constitution (cfg.constitution_sha256); the others stay durable, untrained on
        chosen, harmless, other_constitutions = select_constitution(
            [r for r in rows if r.get("kind", "harmlessness") != "helpfulness"], cfg.constitution_sha256
        )
        self._set(constitution_sha256=chosen)
        if not harmless:
            message = (
                f"no harmlessness comparisons of constitution {cfg.constitution_sha256 or 'newest'!r} among "
                f"{len(rows)} rows: not training until some arrive"
            )
            log.warning(message)
            self._set(phase="idle", warning=message)
            state = {**state, "trained_rows": len(rows)}
            self._save_state(state)
            return state
        path = train_reward_model(
            dataclasses.replace(cfg.reward, out=str(out), seed=cfg.seed),
            harmless,
            helpfulness=helpful,
        )
        manifest = read_manifest(path)
        manifest["queue"] = {"url": redact_url(cfg.queue), "group": cfg.group, "position": queue.position(cfg.group)}
        manifest["data"]["rows_on_disk"] = len(rows)
        manifest["constitution_sha256s"] = sorted(
            {r["provenance"].get("constitution_sha256", "") for r in harmless} - {""}
        )
        manifest["constitution_sha256"] = chosen  # the hash trained on ("any": every hash)
        manifest["data"]["other_constitution_rows"] = other_constitutions
        (path / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        metrics = manifest.get("metrics", {})
        if "eval_accuracy" in metrics and metrics["eval_accuracy"] is not None:
            RM_ACCURACY.set(metrics["eval_accuracy"])
        if metrics.get("train_loss") is not None:
            LOSS.labels("reward_model").set(metrics["train_loss"])
        LAST_CHECKPOINT.set(time.time())
        state = {**state, "trained_rows": len(rows), "reward_checkpoints": [*state["reward_checkpoints"], str(path)]}
        self._save_state(state)
        self._set(
            last_checkpoint=str(path),
            metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            warning="; ".join(manifest.get("warnings", [])),
        )
        if cfg.reward_service:
            self.request_promotion("reward", cfg.reward_service, path)
        if cfg.policy_training.enabled:
            state = self.train_policy(state, path)
        self._set(phase="idle")
        return state

    def train_policy(self, state: dict, reward_path: Path) -> dict:
        from services.training.policy import optimize_policy

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

        # the reference stays the SL-CAI policy (pt.policy) in every round; the round advances the prompt order
        path = optimize_policy(
            pt,
            start,
            pt.policy,
            reward_path,
            out,
            seed=self.cfg.seed,
            round_index=len(state["policy_checkpoints"]),
            on_step=on_step,
        )
        LAST_CHECKPOINT.set(time.time())
        state = {**state, "policy_checkpoints": [*state["policy_checkpoints"], str(path)]}
        self._save_state(state)
        self._set(last_checkpoint=str(path))
        if pt.generation_service:
            self.request_promotion("generation", pt.generation_service, path)
        return state

    # -- promotion -----------------------------------------------------------------------------

    def request_promotion(self, service: str, target: str, path: Path) -> None:
        """Remembers that ``path`` must reach every replica of ``service`` (replacing an older
        checkpoint still pending for it), then tries at once."""
        self._pending[service] = {
            "target": target,
            "path": str(Path(path).resolve()),
            "checkpoint_id": Path(path).name,
            "confirmed": [],
        }
        self._save_pending()
        self._next_promotion, self._promotion_delay = 0.0, RETRY_MIN_SECONDS
        self.promote_pending()

    def promote_pending(self) -> None:
        """One attempt (when its backoff has passed) for every pending promotion; a promotion
        every replica confirmed is recorded in ``state.json`` and leaves the pending list."""
        if not self._pending or time.monotonic() < self._next_promotion:
            return
        failed = False
        for service, p in list(self._pending.items()):
            try:
                confirmed = promote(p["target"], service, Path(p["path"]), skip=set(p["confirmed"]))
            except PromotionIncomplete as exc:
                p["confirmed"] = sorted(set(p["confirmed"]) | set(exc.confirmed))
                self._save_pending()
                PROMOTIONS.labels(service, "incomplete").inc()
                log.warning(
                    "promotion of %s to %s incomplete, retrying in %.1fs: %s",
                    p["checkpoint_id"],
                    service,
                    self._promotion_delay,
                    exc,
                )
                failed = True
                continue
            PROMOTIONS.labels(service, "ok").inc()
            self._record_promoted(service, p)
            state = self._load_state()
            state.setdefault("promoted", {})[service] = {
                "path": p["path"],
                "checkpoint_id": p["checkpoint_id"],
                "replicas": confirmed,
                "at": time.time(),
            }
            self._save_state(state)
            if hasattr(self, "state"):
                self.state = {**self.state, "promoted": state["promoted"]}
            del self._pending[service]
            self._save_pending()
        if failed:
            self._next_promotion = time.monotonic() + self._promotion_delay
            self._promotion_delay = min(self._promotion_delay * 2, RETRY_MAX_SECONDS)
        else:
            self._promotion_delay = RETRY_MIN_SECONDS

    def _record_promoted(self, service: str, p: dict) -> None:
        """Writes ``checkpoints/promoted/<service>.json`` as the services do: a replica restarted
        with ``--checkpoint-dir`` on this folder serves the checkpoint even where it mounts the
        volume read-only."""
        from services.common.served_model import TASKS, CheckpointAccess, write_record

        task = "sequence-classification" if service == "reward" else "causal-lm"
        assert task in TASKS
        access = CheckpointAccess(service=service, task=task, checkpoint_dir=str(self.work / "checkpoints"))
        previous = (
            self.state.get("promoted", {}).get(service, {}).get("checkpoint_id", "") if hasattr(self, "state") else ""
        )
        write_record(access, Path(p["path"]), p["checkpoint_id"], previous)


class PromotionIncomplete(RuntimeError):
    """Some replicas did not confirm the checkpoint (``confirmed`` lists those that did)."""

    def __init__(self, message: str, confirmed: list[str]):
        super().__init__(message)
        self.confirmed = confirmed


def _write_atomically(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def replica_addresses(target: str) -> list[tuple[str, str]]:
    """Every replica behind a gRPC target, as (address to dial, name its TLS certificate carries):
    ``ipv4:a:p,b:p``/``ipv6:`` lists each entry; ``dns:///name:port`` and ``name:port`` every
    address the name resolves to now (all A records of a headless Service). Raises OSError when
    the name does not resolve."""
    if target.startswith(("ipv4:", "ipv6:")):
        return [(a, "") for a in target.split(":", 1)[1].split(",") if a]
    name = target
    if name.startswith("dns:"):
        name = name[4:]
        if name.startswith("//"):
            name = name[2:].split("/", 1)[1]  # dns://authority/name:port
    host, _, port = name.rpartition(":")
    if not host or not port.isdigit():
        raise OSError(f"{target!r}: expected host:port, dns:///host:port or an ipv4: list")
    host = host.strip("[]")
    infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    addresses = sorted({(f"[{i[4][0]}]" if i[0] == socket.AF_INET6 else i[4][0]) + f":{port}" for i in infos})
    return [(a, host) for a in addresses]


def _replica_channel(address: str, host: str):
    from services.common.channels import open_channel

    # dialled by address, named by host (the name its TLS certificate carries)
    return open_channel(address, server_name=host)


def promote(
    target: str, service: str, path: Path, *, skip: set[str] = frozenset(), timeout: float = 600.0
) -> list[str]:
    """Loads a checkpoint into every replica of a running service through LoadCheckpoint;
    returns the replicas that confirmed it. Raises ``PromotionIncomplete`` (naming the others and
    why) unless every replica not in ``skip`` confirmed it."""
    import grpc

    from services.api.cai.v1 import common_pb2, generation_pb2_grpc, reward_pb2_grpc

    stub_cls = reward_pb2_grpc.RewardStub if service == "reward" else generation_pb2_grpc.GenerationStub
    request = common_pb2.LoadCheckpointRequest(path=str(Path(path).resolve()), checkpoint_id=Path(path).name)
    try:
        replicas = replica_addresses(target)
    except OSError as exc:
        raise PromotionIncomplete(f"{service} at {target}: cannot resolve its replicas: {exc}", sorted(skip)) from None
    if not replicas:
        raise PromotionIncomplete(f"{service} at {target}: no replicas", sorted(skip))
    confirmed, problems = set(skip), []
    for address, host in replicas:
        if address in skip:
            continue
        channel = _replica_channel(address, host)
        try:
            response = stub_cls(channel).LoadCheckpoint(request, timeout=timeout)
        except grpc.RpcError as exc:
            problems.append(f"{address}: {exc.code().name}: {exc.details()}")
            continue
        finally:
            channel.close()
        confirmed.add(address)
        log.info(
            "promoted %s to the %s replica %s (was %s)",
            response.checkpoint_id,
            service,
            address,
            response.previous_checkpoint_id,
        )
    if problems:
        raise PromotionIncomplete(f"{service} at {target}: " + "; ".join(problems), sorted(confirmed))
    return sorted(confirmed)
