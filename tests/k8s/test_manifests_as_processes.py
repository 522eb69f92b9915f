"""The deployment runs as deployed: the cpu-small overlay, rendered by kustomize as users do, with a
user overlay of two generation and two judge replicas, started workload by workload as local
processes (tests/k8s/as_processes.py says exactly what is remapped: paths, Service addresses,
ports; nothing else). Redis on 127.0.0.1:6379 stands in for the Redis StatefulSet (our own
stream). The example label Job (an Indexed Job, one process per completion index) labels against
the replicas, the trainer StatefulSet's process consumes the queue, trains a reward model and
promotes it to the reward Deployment's process.

One deviation from the overlay, said here and in the user overlay: generation, critique and judge
run the transformers engine (the overlay's configs with ``engine.kind: transformers``) because five
vLLM CPU engines (~1 GiB and ~15 s each) do not fit this shared 2-core machine; the vLLM engine
itself is tested in tests/engines and tests/generation.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import grpc
import pytest
import yaml

from services.k8s.manifests import K8S_DIR, kustomize
from tests.conftest import metric, scrape
from tests.k8s.as_processes import Cluster

NAMESPACE = "cai"
REPLICAS = {"generation": 2, "judge": 2}
TIMEOUT_S = 240
LIMIT = 40


def _user_overlay(root: Path, components: tuple[str, ...]) -> Path:
    """What a user writes: the cpu-small overlay with replicas, config changes, components, and the
    example label Job (edited as a user trying it would: a name, and fewer prompts and tokens)."""
    overlay = root / "overlay"
    (overlay / "config").mkdir(parents=True)
    job = yaml.safe_load((K8S_DIR / "examples" / "label-job.yaml").read_text())
    job["metadata"]["name"] = job["metadata"].pop("generateName").rstrip("-")
    # label the first LIMIT prompts, not all 365 (enough for the overlay's train_every, in CI time)
    job["spec"]["template"]["spec"]["containers"][0]["args"] += ["--limit", str(LIMIT), "--max-tokens", "32"]
    (overlay / "label-job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    generators = []
    for service in ("generation", "critique", "judge"):
        config = yaml.safe_load((K8S_DIR / "overlays" / "cpu-small" / "config" / f"{service}.yaml").read_text())
        config["engine"]["kind"] = "transformers"
        (overlay / "config" / f"{service}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        generators.append(
            {"name": f"{service}-config", "behavior": "replace", "files": [f"{service}.yaml=config/{service}.yaml"]}
        )
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S_DIR / "overlays" / "cpu-small", overlay), "label-job.yaml"],
                "components": [os.path.relpath(K8S_DIR / "components" / c, overlay) for c in components],
                "replicas": [{"name": n, "count": c} for n, c in REPLICAS.items()],
                "configMapGenerator": generators,
            },
            sort_keys=False,
        )
    )
    return overlay


@pytest.fixture(scope="module")
def redis_stream():
    import redis

    stream = f"full_deploy-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("these tests need the Redis on 127.0.0.1:6379 (scripts/setup installs redis-server)")
    yield stream
    for key in client.scan_iter(f"{stream}*"):
        client.delete(key)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """The models volume (cai-models) with tiny models under the names the overlay's configs use."""
    from services.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("models-volume")
    build_tiny_model(root / "smollm2-135m-instruct")
    build_tiny_model(root / "reward", reward=True)
    return root


def _grpc_secret(folder: Path) -> dict[str, Path]:
    """The Secret cai-grpc-tls as cert-manager would write it: a CA, and a certificate for every
    name the clients dial (k8s/README.md), server and client usages; 127.0.0.1/localhost because
    here the Service names become loopback addresses."""
    from tests.common.certs import CA

    ca = CA(folder / "ca")
    names = [
        f"{n}{suffix}"
        for svc in ("generation", "critique", "judge", "reward", "trainer")
        for n in (svc, f"{svc}-headless")
        for suffix in ("", f".{NAMESPACE}.svc")
    ]
    cert, key = ca.issue("localhost", dns=tuple(names), ips=("127.0.0.1",), server=True, client=True)
    return {"tls.crt": cert, "tls.key": key, "ca.crt": ca.ca_file}


@pytest.mark.parametrize("components", [(), ("tls", "mtls")], ids=["plaintext", "mutual-tls"])
def test_every_workload_serves_both_judges_label_and_the_trained_reward_model_is_served(
    tmp_path, models, redis_stream, components
):
    from services.api.cai.v1 import common_pb2, reward_pb2_grpc, trainer_pb2, trainer_pb2_grpc

    started = time.time()
    objects = kustomize(_user_overlay(tmp_path, components))
    stream = f"{redis_stream}-{'-'.join(components) or 'plain'}"
    queue_url = f"redis://127.0.0.1:6379/0?stream={stream}"
    secrets = {"cai-grpc-tls": _grpc_secret(tmp_path / "pki")} if components else {}
    cluster = Cluster(objects, tmp_path / "cluster", NAMESPACE, models, queue_url, secrets=secrets)
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["name"] != "redis"]
    assert sorted(w["metadata"]["name"] for w in workloads) == ["critique", "generation", "judge", "reward", "trainer"]
    for w in workloads:
        cluster.add_workload(w)
    assert [p.name for p in cluster.pods if p.labels["app.kubernetes.io/name"] in REPLICAS] == [
        "generation-0",
        "generation-1",
        "judge-0",
        "judge-1",
    ]

    # Every /models path the configs name is on the models volume (only these are remapped).
    for cm in (o for o in objects if o["kind"] == "ConfigMap"):
        for text in cm.get("data", {}).values():
            for path in set(__import__("re").findall(r"/models/[\w.-]+", text)):
                assert (models / path.removeprefix("/models/")).is_dir(), f"{cm['metadata']['name']}: {path}"

    (job,) = [o for o in objects if o["kind"] == "Job"]
    indexed = job["spec"].get("completionMode") == "Indexed"
    completions = job["spec"].get("completions", 1)
    try:
        for pod in cluster.pods:
            cluster.start(pod)
        deadline = time.time() + TIMEOUT_S
        for pod in cluster.pods:
            cluster.wait_serving(pod, deadline)

        # The label Job: its pods run in parallel, Kubernetes sets JOB_COMPLETION_INDEX on each.
        job_pods = cluster.add_workload(
            job, replicas=completions, env_per_index=(lambda i: {"JOB_COMPLETION_INDEX": str(i)}) if indexed else None
        )
        for pod in job_pods:
            cluster.start(pod)
        services = [p for p in cluster.pods if p not in job_pods]
        while any(p.proc.poll() is None for p in job_pods) and time.time() < deadline:
            for pod in services:
                assert pod.proc.poll() is None, f"{pod.name} exited {pod.proc.returncode}:\n{pod.output()[-3000:]}"
            time.sleep(0.5)
        for pod in job_pods:
            code = pod.proc.poll()
            assert code == 0, f"{pod.name} (label Job) exited {code}:\n{pod.output()[-3000:]}"

        # Both judge replicas served labels (one client, several calls in flight: round_robin).
        judges = [p for p in cluster.pods if p.labels["app.kubernetes.io/name"] == "judge"]
        labels = {p.name: metric(scrape(p.port("metrics")), "cai_judge_labels_total") for p in judges}
        assert all(v > 0 for v in labels.values()), f"labels per judge replica: {labels}"

        # The trainer consumes the queue, trains a reward model and promotes it to the reward service.
        (trainer,) = [p for p in cluster.pods if p.name == "trainer-0"]
        (reward,) = [p for p in cluster.pods if p.name == "reward-0"]

        def channel(port: int) -> grpc.Channel:
            if not secrets:
                return grpc.insecure_channel(f"127.0.0.1:{port}")
            files = {k: v.read_bytes() for k, v in secrets["cai-grpc-tls"].items()}
            return grpc.secure_channel(
                f"127.0.0.1:{port}", grpc.ssl_channel_credentials(files["ca.crt"], files["tls.key"], files["tls.crt"])
            )

        with channel(trainer.port("grpc")) as tch, channel(reward.port("grpc")) as rch:
            status = trainer_pb2_grpc.TrainerStub(tch)
            info = reward_pb2_grpc.RewardStub(rch)
            while True:
                st = status.Status(trainer_pb2.TrainerStatusRequest(), timeout=10)
                served = info.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
                if st.last_checkpoint.id and served.checkpoint_id == st.last_checkpoint.id:
                    break
                assert st.phase != trainer_pb2.TRAINER_PHASE_FAILED, f"trainer failed: {st.error}"
                assert trainer.proc.poll() is None, f"trainer exited:\n{trainer.output()[-3000:]}"
                assert time.time() < deadline, (
                    f"no promoted reward model in time: trainer {st}, reward "
                    f"serves {served.checkpoint_id!r}\n{trainer.output()[-3000:]}"
                )
                time.sleep(1)
        assert st.last_checkpoint.kind == "reward" and st.items_consumed > 0
        # The reward service loaded it from the trainer's work volume (claim work-trainer-0).
        assert Path(served.model).resolve() == Path(st.last_checkpoint.path).resolve()
        assert Path(served.model).is_relative_to(cluster.claims["work-trainer-0"])
        for pod in cluster.pods:
            if pod.proc.poll() is None:
                continue
            assert pod in job_pods, f"{pod.name} exited {pod.proc.returncode}:\n{pod.output()[-2000:]}"
    finally:
        cluster.stop_all()
        if os.environ.get("CAI_TEST_KEEP_LOGS"):  # a folder to copy every pod's log to
            for pod in cluster.pods:
                if pod.log_path and pod.log_path.exists():
                    Path(os.environ["CAI_TEST_KEEP_LOGS"]).mkdir(parents=True, exist_ok=True)
                    (Path(os.environ["CAI_TEST_KEEP_LOGS"]) / f"{pod.name}.log").write_text(pod.output())
    print(f"labels per judge replica: {labels}; {time.time() - started:.0f} s")
