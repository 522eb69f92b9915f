"""The Kubernetes deployment (k8s/, services/k8s): every rendered manifest is valid for the pinned
Kubernetes version, the objects say what a cluster admin expects (probes, resources, PDBs,
non-root, NetworkPolicies, GPUs), the monitoring objects and dashboard refer only to exported
metrics, and ``cai k8s`` fails clearly without a cluster. Offline: kustomize is kubectl's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from services.cli import build_parser, serve_config
from services.k8s import manifests
from services.k8s.manifests import check, kustomize

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"

KUBERNETES_VERSION = "1.33"
"""Schema version the manifests are validated against (kubernetes-validate 1.37.0 ships 1.25-1.37)."""
OLDEST_KUBERNETES_VERSION = "1.30"
"""Oldest supported cluster: gRPC probes (1.27) and the preStop sleep action (1.30, beta on by default)."""

EXPORTED_METRICS = frozenset(
    {
        # every service
        "cai_grpc_requests_total",
        "cai_grpc_errors_total",
        "cai_grpc_request_duration_seconds",
        "cai_grpc_requests_in_flight",
        "cai_batch_items",
        "cai_model_info",
        "cai_checkpoint_loads_total",
        "cai_checkpoint_loaded_timestamp_seconds",
        # generation
        "cai_generation_tokens_total",
        "cai_generation_prompt_tokens_total",
        "cai_generation_samples_total",
        "cai_generation_samples_per_request",
        # critique
        "cai_critique_rounds_total",
        "cai_critique_degenerate_revisions_total",
        # judge
        "cai_judge_labels_total",
        # queue (trainer and the `cai label` job)
        "cai_queue_published_total",
        "cai_queue_consumed_total",
        "cai_queue_dead_lettered_total",
        "cai_queue_depth",
        "cai_queue_lag",
        # trainer
        "cai_comparisons_consumed_total",
        "cai_trainer_loss",
        "cai_reward_model_accuracy",
        "cai_ppo_reward_mean",
        "cai_ppo_kl",
        "cai_trainer_last_checkpoint_timestamp_seconds",
    }
)
"""Metric names the services export; the dashboard and the alert rules may use only these."""
HISTOGRAMS = frozenset({"cai_grpc_request_duration_seconds", "cai_batch_items", "cai_generation_samples_per_request"})

GRPC_SERVICES = {
    "generation": "cai.v1.Generation",
    "critique": "cai.v1.Critique",
    "judge": "cai.v1.Judge",
    "reward": "cai.v1.Reward",
    "trainer": "cai.v1.Trainer",
}
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
LABEL_THROUGHPUT = 'sum(rate(cai_judge_labels_total{namespace=~"$namespace"}[$__rate_interval]))'


def user_overlay(root: Path, *resources: str, components=(), **fields) -> Path:
    """A user's kustomization in ``root`` over folders of k8s/ (kustomize wants relative paths)."""
    root.mkdir(parents=True, exist_ok=True)
    kust = {
        "resources": [os.path.relpath(K8S / r, root) for r in resources],
        "components": [os.path.relpath(K8S / "components" / c, root) for c in components],
        **fields,
    }
    (root / "kustomization.yaml").write_text(yaml.safe_dump(kust, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def renders(tmp_path_factory) -> dict[str, list[dict]]:
    """What `kubectl apply -k` would apply for each kustomization, and user overlays combining them."""
    tmp = tmp_path_factory.mktemp("overlays")
    everything = user_overlay(
        tmp / "all",
        "overlays/gpu",
        "monitoring",
        components=("tls", "external-redis"),
        namespace="exp1",
    )
    return {
        "base": kustomize(K8S / "base"),
        "gpu": kustomize(K8S / "overlays" / "gpu"),
        "cpu-small": kustomize(K8S / "overlays" / "cpu-small"),
        "monitoring": kustomize(K8S / "monitoring"),
        "deploy.example": kustomize(K8S / "deploy.example"),
        "gpu+tls+external-redis+monitoring": kustomize(everything),
        "cpu-small+tls": kustomize(user_overlay(tmp / "tls", "overlays/cpu-small", components=("tls",))),
    }


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    docs = []
    for path in sorted((K8S / "examples").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _id(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('name') or obj['metadata'].get('generateName')}"


def _of(objects, *kinds):
    return [o for o in objects if o["kind"] in kinds]


def _get(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert found, f"no {kind}/{name}"
    return found[0]


def _pod(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def _cai_workloads(objects):
    """Deployments and StatefulSets that run the cai image (not Redis)."""
    return [
        o
        for o in _of(objects, "Deployment", "StatefulSet")
        if o["metadata"]["labels"].get("app.kubernetes.io/name") in GRPC_SERVICES
    ]


def _config_of(objects, service: str) -> dict:
    cms = [o for o in _of(objects, "ConfigMap") if o["metadata"]["name"].startswith(f"{service}-config")]
    assert len(cms) == 1, f"{service}: {len(cms)} config ConfigMaps"
    return yaml.safe_load(cms[0]["data"][f"{service}.yaml"])


# --- schema ------------------------------------------------------------------------------------


def _validate(obj: dict, version: str) -> str | None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{_id(obj)}: {'.'.join(str(p) for p in exc.path)}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        return f"{_id(obj)}: {exc.message}"
    return None


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES_VERSION, KUBERNETES_VERSION])
def test_every_manifest_validates_against_the_kubernetes_schema(renders, examples, version):
    problems, checked = [], 0
    for name, objects in renders.items():
        for obj in objects:
            if obj["kind"] in CUSTOM_KINDS:
                continue
            checked += 1
            if p := _validate(obj, version):
                problems.append(f"{name}: {p}")
    for obj in examples:
        checked += 1
        if p := _validate(obj, version):
            problems.append(f"examples: {p}")
    assert not problems, "\n".join(problems)
    assert checked > 100


def test_validation_is_strict(renders):
    bad = json.loads(json.dumps(_get(renders["gpu"], "Deployment", "judge")))
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    assert _validate(bad, KUBERNETES_VERSION)


def test_custom_resources_are_well_formed(renders):
    objects = renders["gpu+tls+external-redis+monitoring"]
    kinds = {o["kind"] for o in _of(objects, *CUSTOM_KINDS)}
    assert kinds == CUSTOM_KINDS
    for obj in _of(objects, *CUSTOM_KINDS):
        assert obj["apiVersion"] == "monitoring.coreos.com/v1", _id(obj)
        assert obj["metadata"]["namespace"] == "exp1", _id(obj)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}, _id(obj)

    monitor = _get(objects, "ServiceMonitor", "cai-services")
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
        # The metrics carry their own `service` label (cai.v1.Judge); without honorLabels
        # Prometheus would rename it to exported_service and every query would miss.
        assert endpoint["honorLabels"] is True
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [
        s
        for s in _of(objects, "Service")
        if selector.items() <= s["metadata"]["labels"].items()
        and any(p["name"] == "metrics" for p in s["spec"]["ports"])
    ]
    assert {s["metadata"]["name"] for s in scraped} == set(GRPC_SERVICES)

    pods = _get(objects, "PodMonitor", "cai-pipeline-jobs")
    assert set(pods["spec"]) <= {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels"}
    assert all(e["port"] == "metrics" and e["honorLabels"] is True for e in pods["spec"]["podMetricsEndpoints"])
    job = yaml.safe_load((K8S / "examples" / "label-job.yaml").read_text())
    template_labels = job["spec"]["template"]["metadata"]["labels"]
    assert pods["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    assert any(p["name"] == "metrics" for p in job["spec"]["template"]["spec"]["containers"][0]["ports"])

    rules = _get(objects, "PrometheusRule", "cai-alerts")
    for group in rules["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]


# --- probes, resources, disruption, security ----------------------------------------------------


@pytest.mark.parametrize("name", ["base", "gpu", "cpu-small"])
def test_probes_are_grpc_health_checks_on_the_grpc_port(renders, name):
    workloads = _cai_workloads(renders[name])
    assert {w["metadata"]["name"] for w in workloads} == set(GRPC_SERVICES)
    for w in workloads:
        component = w["metadata"]["labels"]["app.kubernetes.io/name"]
        (container,) = _pod(w)["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": 50051, "metrics": 9090}, component
        args = container["args"]
        assert args[:2] == ["serve", component]
        assert args[args.index("--port") + 1] == "50051" and args[args.index("--metrics-port") + 1] == "9090"
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[kind]
            assert set(probe) - {
                "periodSeconds",
                "timeoutSeconds",
                "failureThreshold",
                "initialDelaySeconds",
                "successThreshold",
            } == {"grpc"}, (component, kind)
            assert probe["grpc"]["port"] == ports["grpc"], (component, kind)
        # readiness and startup ask for the component's own service; liveness for the server.
        assert container["readinessProbe"]["grpc"]["service"] == GRPC_SERVICES[component]
        assert container["startupProbe"]["grpc"]["service"] == GRPC_SERVICES[component]
        assert container["livenessProbe"]["grpc"].get("service", "") == ""
        startup = container["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        assert budget >= (1800 if name == "gpu" else 600), f"{component}: {budget}s to load a model"


@pytest.mark.parametrize("name", ["gpu+tls+external-redis+monitoring", "cpu-small+tls"])
def test_tls_component_serves_tls_and_probes_over_tls(renders, name):
    objects = renders[name]
    for w in _cai_workloads(objects):
        pod = _pod(w)
        (container,) = pod["containers"]
        assert "--tls-cert-file=/etc/cai/tls/tls.crt" in container["args"]
        assert "--tls-key-file=/etc/cai/tls/tls.key" in container["args"]
        assert {"name": "grpc-tls", "mountPath": "/etc/cai/tls", "readOnly": True} in container["volumeMounts"]
        assert any(v["name"] == "grpc-tls" and v["secret"]["secretName"] == "cai-grpc-tls" for v in pod["volumes"])
        env = {e["name"] for e in container["env"]}
        assert {"CAI_SERVICE_NAME", "CAI_POD_NAMESPACE", "CAI_TLS_SERVER_NAME"} <= env
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[kind]
            assert "grpc" not in probe
            command = probe["exec"]["command"]
            assert command[:3] == ["python", "-m", "services.common.probe"]
            assert "--tls-dir" in command


def test_the_tls_probe_command_parses():
    import argparse

    from services.common.probe import add_arguments

    parser = add_arguments(argparse.ArgumentParser())
    tls = yaml.safe_load((K8S / "components" / "tls" / "tls.yaml").read_text())
    commands = [op["value"]["command"] for op in tls if op["op"] == "add" and op["path"].endswith("Probe/exec")]
    assert len(commands) == 3
    for command in commands:
        args = parser.parse_args(command[3:])
        assert args.port == 50051 and args.tls_dir == "/etc/cai/tls"


def _assert_requests_and_limits(container: dict, who: str) -> None:
    resources = container.get("resources", {})
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{who}: {part}"


def _assert_restricted(pod: dict, who: str) -> None:
    """The restricted Pod Security Standard, the parts a manifest decides."""
    ctx = pod.get("securityContext", {})
    assert ctx.get("runAsNonRoot") is True, who
    assert ctx.get("runAsUser", 1) != 0, who
    assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", who
    assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True, who
    for volume in pod.get("volumes", []):
        assert "hostPath" not in volume, who
    for container in pod["containers"] + pod.get("initContainers", []):
        c = container.get("securityContext", {})
        assert c.get("allowPrivilegeEscalation") is False, who
        assert c.get("privileged") is not True, who
        assert c.get("capabilities", {}).get("drop") == ["ALL"], who
        assert not c.get("capabilities", {}).get("add"), who
        assert c.get("readOnlyRootFilesystem") is True, who


@pytest.mark.parametrize("name", ["base", "gpu", "cpu-small", "gpu+tls+external-redis+monitoring"])
def test_workloads_have_resources_disruption_budgets_and_run_as_non_root(renders, name):
    objects = renders[name]
    deployments = _of(objects, "Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {"generation", "critique", "judge", "reward"}
    budgets = _of(objects, "PodDisruptionBudget")
    for w in _of(objects, "Deployment", "StatefulSet"):
        who = f"{name}: {_id(w)}"
        pod = _pod(w)
        for container in pod["containers"]:
            _assert_requests_and_limits(container, who)
        _assert_restricted(pod, who)
        assert pod["automountServiceAccountToken"] is False, who
        # writable paths are volumes (readOnlyRootFilesystem)
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        if w["metadata"]["name"] in GRPC_SERVICES:
            assert {"/tmp", "/var/cache/cai"} <= mounts, who
    for d in deployments:
        labels = d["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == 1, f"{name}: {_id(d)} has {len(matching)} PodDisruptionBudgets"
        # a budget that never blocks a node drain with one replica
        assert matching[0]["spec"].get("maxUnavailable") == 1


def test_examples_run_restricted_with_resources(examples):
    assert {e["metadata"]["generateName"] for e in examples} == {"cai-label-", "cai-prepare-models-", "cai-run-"}
    for job in examples:
        pod = _pod(job)
        _assert_restricted(pod, _id(job))
        for container in pod["containers"]:
            _assert_requests_and_limits(container, _id(job))
        assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cai"


@pytest.mark.parametrize("name", ["base", "gpu", "cpu-small"])
def test_termination_grace_outlasts_the_drain(renders, name):
    objects = renders[name]
    for w in _cai_workloads(objects):
        component = w["metadata"]["name"]
        grace = float(_config_of(objects, component).get("server", {}).get("grace_seconds", 30))
        (container,) = _pod(w)["containers"]
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert _pod(w)["terminationGracePeriodSeconds"] >= pre_stop + grace + 10, component


@pytest.mark.parametrize("name", ["base", "gpu", "cpu-small"])
def test_service_configs_load_and_point_at_mounted_files(renders, name, tmp_path):
    objects = renders[name]
    for w in _cai_workloads(objects):
        component = w["metadata"]["name"]
        pod = _pod(w)
        (container,) = pod["containers"]
        config_path = container["args"][container["args"].index("--config") + 1]
        assert config_path == f"/etc/cai/config/{component}.yaml"
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert mounts["config"]["mountPath"] == "/etc/cai/config" and mounts["config"]["readOnly"]
        assert volumes["config"]["configMap"]["name"].startswith(f"{component}-config")

        config = _config_of(objects, component)
        path = tmp_path / f"{name}-{component}.yaml"
        path.write_text(yaml.safe_dump(config))
        # What the container runs: its own flags ($(VAR) from its env) over the file, no filling in.
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in container["args"]]  # noqa: B023
        args[args.index("--config") + 1] = str(path)
        serve_config(build_parser().parse_args(args))  # raises ConfigError naming file and field

        if component in ("critique", "judge"):
            assert config["constitution"] == "/etc/cai/constitution/default.yaml"
            assert mounts["constitution"]["mountPath"] == "/etc/cai/constitution"
            assert volumes["constitution"]["configMap"]["name"].startswith("constitution")
        model = (
            config.get("engine", {}).get("model")
            or config.get("model")
            or config.get("reward_base_model")
            or config.get("reward", {}).get("model")
        )
        if model:
            assert model.startswith("/models/"), f"{component}: {model}"
            assert mounts["models"]["readOnly"] is True
            assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "cai-models", "readOnly": True}


def test_checkpoints_reach_the_services_that_load_them(renders):
    objects = renders["gpu"]
    trainer = _get(objects, "StatefulSet", "trainer")
    (template,) = trainer["spec"]["volumeClaimTemplates"]
    work_mount = next(
        m for m in _pod(trainer)["containers"][0]["volumeMounts"] if m["name"] == template["metadata"]["name"]
    )
    config = _config_of(objects, "trainer")
    assert config["work_dir"] == work_mount["mountPath"]
    assert config["reward_service"] == "dns:///reward-headless:50051"
    claim = f"{template['metadata']['name']}-trainer-0"
    for name in ("reward", "generation"):
        pod = _pod(_get(objects, "Deployment", name))
        volume = next(v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim)
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
        assert mount["mountPath"] == work_mount["mountPath"] and mount["readOnly"] is True, name
    assert template["spec"]["accessModes"] == ["ReadWriteMany"]


def test_gpu_overlay_requests_gpus(renders):
    objects = renders["gpu"]
    for w in _cai_workloads(objects):
        pod = _pod(w)
        resources = pod["containers"][0]["resources"]
        assert int(resources["requests"]["nvidia.com/gpu"]) >= 1, _id(w)
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"], _id(w)
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["nodeSelector"]
        assert pod["containers"][0]["image"].endswith("-gpu")
    for component in ("generation", "critique", "judge"):
        engine = _config_of(objects, component)["engine"]
        assert engine["kind"] == "vllm" and engine["dtype"] == "bfloat16", component


def test_cpu_small_overlay_is_small_and_gpu_free(renders):
    objects = renders["cpu-small"]
    for w in _cai_workloads(objects):
        pod = _pod(w)
        resources = pod["containers"][0]["resources"]
        assert "nvidia.com/gpu" not in json.dumps(resources), _id(w)
        assert "nodeSelector" not in pod
        assert pod["containers"][0]["image"].endswith("-cpu")
        assert resources["limits"]["memory"] in ("4Gi", "6Gi"), _id(w)
    for component in ("generation", "critique", "judge"):
        engine = _config_of(objects, component)["engine"]
        assert engine["kind"] == "vllm" and "smollm2" in engine["model"].lower(), component
    assert _get(objects, "PersistentVolumeClaim", "cai-models")


def test_trainer_and_redis_keep_their_state(renders):
    objects = renders["gpu"]
    trainer = _get(objects, "StatefulSet", "trainer")
    assert trainer["spec"]["replicas"] == 1 and trainer["spec"]["volumeClaimTemplates"]
    governing = _get(objects, "Service", trainer["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    container = _pod(trainer)["containers"][0]
    args = container["args"]
    assert args[args.index("--queue") + 1] == "$(CAI_QUEUE_URL)"
    assert {"name": "CAI_QUEUE_URL", "value": "redis://redis:6379/0"} in container["env"]

    redis = _get(objects, "StatefulSet", "redis")
    args = _pod(redis)["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--dir") + 1] == "/data"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    (data,) = redis["spec"]["volumeClaimTemplates"]
    assert any(
        m["name"] == data["metadata"]["name"] and m["mountPath"] == "/data"
        for m in _pod(redis)["containers"][0]["volumeMounts"]
    )
    assert _get(objects, "Service", "redis")["spec"]["ports"][0]["port"] == 6379


def test_external_redis_component_replaces_the_bundled_redis(renders):
    objects = renders["gpu+tls+external-redis+monitoring"]
    assert not [o for o in objects if o["metadata"]["name"] == "redis"]
    container = _pod(_get(objects, "StatefulSet", "trainer"))["containers"][0]
    (queue,) = [e for e in container["env"] if e["name"] == "CAI_QUEUE_URL"]
    assert queue == {"name": "CAI_QUEUE_URL", "valueFrom": {"secretKeyRef": {"name": "cai-queue", "key": "url"}}}


@pytest.mark.parametrize("name", ["base", "gpu", "cpu-small"])
def test_network_policies_admit_only_the_pipeline_and_prometheus(renders, name):
    objects = renders[name]
    policies = {p["metadata"]["name"]: p["spec"] for p in _of(objects, "NetworkPolicy")}
    part_of = {"app.kubernetes.io/part-of": "cai"}
    deny = policies["cai-default-deny-ingress"]
    assert deny["podSelector"]["matchLabels"] == part_of and deny["policyTypes"] == ["Ingress"]
    assert not deny.get("ingress")
    (rule,) = policies["cai-allow-pipeline"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": part_of}}]
    assert {p["port"] for p in rule["ports"]} == {"grpc", "redis"}
    (rule,) = policies["cai-allow-prometheus"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["metrics"]
    assert "namespaceSelector" in rule["from"][0]
    # the policies apply to every pod, and the named ports exist
    for w in _of(objects, "Deployment", "StatefulSet"):
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert labels.items() >= part_of.items(), _id(w)
        port_names = {p["name"] for c in _pod(w)["containers"] for p in c.get("ports", [])}
        assert port_names & {"grpc", "redis"}, _id(w)


# --- the constitution copy ----------------------------------------------------------------------


def test_constitution_copy_is_fresh(renders):
    assert manifests.constitution_copy_is_fresh(), "run `cai k8s sync-config` (python -m services.k8s.cli sync-config)"
    expected = (REPO / "constitutions" / "default.yaml").read_text()
    for name in ("base", "gpu", "cpu-small"):
        (cm,) = [o for o in _of(renders[name], "ConfigMap") if o["metadata"]["name"].startswith("constitution")]
        assert cm["data"]["default.yaml"] == expected, f"{name}: the served constitution differs from the repo's"


def test_sync_config_check_passes():
    done = subprocess.run(
        [sys.executable, "-m", "services.k8s.cli", "sync-config", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


# --- dashboard and rules ------------------------------------------------------------------------


def _dashboard() -> dict:
    return json.loads((K8S / "monitoring" / "grafana-dashboard.json").read_text())


def _rules() -> list[dict]:
    doc = yaml.safe_load((K8S / "monitoring" / "prometheusrule.yaml").read_text())
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def test_dashboard_first_panel_is_label_throughput():
    dashboard = _dashboard()
    panels = dashboard["panels"]
    first = min(panels, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    assert first is panels[0]
    assert first["targets"][0]["expr"] == LABEL_THROUGHPUT
    assert "comparisons per second" in first["title"].lower()
    assert len({p["id"] for p in panels}) == len(panels)
    titles = [p["title"].lower() for p in panels]
    for wanted in ("queue lag", "judge latency", "tokens per second", "reward-model accuracy", "ppo reward and kl"):
        assert any(wanted in t for t in titles), wanted
    order = [
        next(i for i, t in enumerate(titles) if w in t)
        for w in (
            "comparisons per second",
            "queue lag",
            "judge latency",
            "tokens per second",
            "reward-model accuracy",
            "ppo reward and kl",
        )
    ]
    assert order == sorted(order)
    judge = next(p for p in panels if "judge latency" in p["title"].lower())
    exprs = " ".join(t["expr"] for t in judge["targets"])
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.95," in exprs
    assert 'cai_grpc_request_duration_seconds_bucket{namespace=~"$namespace",service="cai.v1.Judge"}' in exprs
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_ships_as_a_grafana_sidecar_configmap(renders):
    cm = _get(renders["monitoring"], "ConfigMap", "cai-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["cai-pipeline.json"]) == _dashboard()


def test_alert_rules_cover_the_pipeline():
    rules = {r["alert"]: r for r in _rules()}
    for name in ("CAILabelThroughputZero", "CAIQueueLagGrowing", "CAITrainerCheckpointStale", "CAIGrpcErrorRateHigh"):
        assert name in rules, name
    assert "cai_judge_labels_total" in rules["CAILabelThroughputZero"]["expr"]
    assert "cai_queue_lag" in rules["CAIQueueLagGrowing"]["expr"]
    assert "cai_trainer_last_checkpoint_timestamp_seconds" in rules["CAITrainerCheckpointStale"]["expr"]
    assert "cai_grpc_errors_total" in rules["CAIGrpcErrorRateHigh"]["expr"]


def _balanced(expr: str) -> bool:
    stack, pairs, quoted = [], {")": "(", "]": "[", "}": "{"}, False
    for ch in expr:
        if ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and not quoted


def test_queries_are_balanced():
    for expr in _dashboard_exprs() + [r["expr"] for r in _rules()]:
        assert _balanced(expr), expr


def _metric_names(expr: str) -> set[str]:
    names = set()
    for name in re.findall(r"\bcai_[a-z0-9_]+", expr):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def test_dashboard_and_rules_use_only_exported_metrics():
    used = set()
    for expr in _dashboard_exprs() + [r["expr"] for r in _rules()]:
        used |= _metric_names(expr)
    unknown = used - EXPORTED_METRICS
    assert not unknown, f"not exported by the services: {sorted(unknown)}"
    assert "cai_judge_labels_total" in used and "cai_queue_lag" in used
    # label values the services emit
    for expr in _dashboard_exprs() + [r["expr"] for r in _rules()]:
        for value in re.findall(r'service="([^"]+)"', expr):
            assert value in GRPC_SERVICES.values(), value


# --- cai k8s ------------------------------------------------------------------------------------


def _cai_k8s(*args, env=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "services.k8s.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _assert_clear_failure(done, *words):
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cai: error: "), done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("command", [["apply", "--overlay", "cpu-small"], ["status"]])
def test_without_a_cluster_apply_and_status_fail_clearly(command, tmp_path):
    done = _cai_k8s(*command, env={"KUBECONFIG": str(tmp_path / "missing" / "kubeconfig")})
    _assert_clear_failure(done, "kubeconfig")


@pytest.mark.parametrize("command", [["apply", "--overlay", "gpu"], ["status"]])
def test_with_an_unreachable_cluster_apply_and_status_fail_clearly(command, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "nowhere",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "nowhere", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    done = _cai_k8s(*command, "--timeout", "3", env={"KUBECONFIG": str(kubeconfig)})
    _assert_clear_failure(done, "cannot reach the cluster", "127.0.0.1:1")


def test_render_writes_one_file_per_object_in_apply_order(tmp_path):
    done = _cai_k8s("render", "--overlay", "cpu-small", "--namespace", "try1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    files = sorted(tmp_path.glob("*.yaml"))
    objects = manifests.read_objects(tmp_path)
    assert len(files) == len(objects) > 20
    assert objects[0]["kind"] == "Namespace" and objects[0]["metadata"]["name"] == "try1"
    assert all(o["metadata"].get("namespace") == "try1" for o in objects[1:])
    assert files[0].name.startswith("000-namespace-")
    stdout = _cai_k8s("render", "--overlay", "cpu-small", "--namespace", "try1")
    assert [d for d in yaml.safe_load_all(stdout.stdout) if d] == objects


def test_the_deploy_example_overlay_renders_and_checks(renders):
    objects = renders["deploy.example"]
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"cai-exp1"}
    assert _get(objects, "Namespace", "cai-exp1")
    assert _get(objects, "Deployment", "generation")["spec"]["replicas"] == 2
    assert _get(objects, "Deployment", "judge")["spec"]["replicas"] == 2
    images = {c["image"] for w in _cai_workloads(objects) for c in _pod(w)["containers"]}
    assert images == {"registry.example.com/ml/cai:0.1.0-gpu"}
    assert _of(objects, "PrometheusRule")
    trainer = _get(objects, "StatefulSet", "trainer")
    assert trainer["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "cephfs"
    assert _config_of(objects, "generation")["engine"]["tensor_parallel_size"] == 2
    problems, notes = check(objects)
    assert problems == []
    assert any(n.startswith("constitution sha256 ") and n.endswith("= constitutions/default.yaml") for n in notes)
    done = _cai_k8s("check", str(K8S / "deploy.example"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"{K8S / 'deploy.example'}: ok ({len(objects)} objects)")


@pytest.mark.parametrize(
    "file, text, words",
    [
        (
            "judge.yaml",
            "engine: {kind: vllm, max_model_len: 2}\n",
            ["Deployment judge", "key judge.yaml", "engine.max_model_len"],
        ),
        ("judge.yaml", "engine: {kind: vllm}\nnot_a_field: 1\n", ["Deployment judge", "not_a_field"]),
        (
            "trainer.yaml",
            "constitution_sha256: deadbeefdeadbeef\n",
            ["StatefulSet trainer", "key trainer.yaml", "constitution_sha256"],
        ),
        ("constitution.yaml", "format: nope\n", ["constitution", "ConfigMap constitution-"]),
    ],
)
def test_check_names_the_configmap_key_and_field(tmp_path, file, text, words):
    """A user overlay replacing one ConfigMap's file: `cai k8s check` exits 2, one line per problem
    naming the workload, the ConfigMap and its key, and the field."""
    (tmp_path / "config").mkdir()
    source = K8S / "overlays" / "cpu-small" / "config" / file
    if file == "trainer.yaml":  # the overlay's trainer config, expecting another constitution
        text = source.read_text() + text
    (tmp_path / "config" / file).write_text(text)
    name, key = ("constitution", "default.yaml") if file == "constitution.yaml" else (f"{file[:-5]}-config", file)
    generator = {"name": name, "behavior": "replace", "files": [f"{key}=config/{file}"]}
    user_overlay(tmp_path, "overlays/cpu-small", configMapGenerator=[generator])
    done = _cai_k8s("check", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert all(line.startswith("cai: error: ") for line in lines), done.stderr
    assert any(all(w in line for w in words) for line in lines), done.stderr


def test_check_reports_the_served_constitution_and_critique_and_judge_must_agree(tmp_path):
    ours = (REPO / "constitutions" / "default.yaml").read_bytes() + b"\n# ours\n"
    (tmp_path / "constitution.yaml").write_bytes(ours)
    generator = {"name": "constitution", "behavior": "replace", "files": ["default.yaml=constitution.yaml"]}
    objects = kustomize(user_overlay(tmp_path, "overlays/gpu", configMapGenerator=[generator]))
    problems, notes = check(objects)
    assert problems == []
    assert f"constitution sha256 {__import__('hashlib').sha256(ours).hexdigest()} " in notes[-1]
    assert "= constitutions/default.yaml" not in notes[-1]
    # judge reading another ConfigMap than critique: two hashes served
    judge = _get(objects, "Deployment", "judge")
    volume = next(v for v in _pod(judge)["volumes"] if v["name"] == "constitution")
    original = _get(renders_gpu := kustomize(K8S / "overlays" / "gpu"), "Deployment", "judge")
    volume["configMap"]["name"] = next(v for v in _pod(original)["volumes"] if v["name"] == "constitution")[
        "configMap"
    ]["name"]
    objects += [o for o in renders_gpu if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("constitution")]
    problems, _ = check(objects)
    assert any("critique and judge serve different constitutions" in p for p in problems), problems


def test_render_with_a_deploy_config_file_is_a_clear_error_naming_the_overlay(tmp_path):
    (tmp_path / "deploy.yaml").write_text("overlay: gpu\nnamespace: cai-exp1\n")
    for command in ("render", "apply", "check"):
        done = _cai_k8s(command, "--config", str(tmp_path / "deploy.yaml"))
        _assert_clear_failure(done, "k8s/deploy.example/", "kubectl apply --server-side -k")


def test_deprecated_render_flags_still_compose_the_overlay(renders, tmp_path):
    done = _cai_k8s("render", "--overlay", "gpu", "--namespace", "exp1", "--tls", "--external-redis", "--monitoring")
    assert done.returncode == 0, done.stderr
    assert "deprecated" in done.stderr and "k8s/deploy.example/" in done.stderr
    objects = [d for d in yaml.safe_load_all(done.stdout) if d]
    ours = manifests.sort_objects(renders["gpu+tls+external-redis+monitoring"])
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [(o["kind"], o["metadata"]["name"]) for o in ours]
    done = _cai_k8s("render", "--overlay", "cpu-small", "--image", "registry.example.com/cai:1.2@sha256:" + "a" * 64)
    images = {c["image"] for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"]}  # fmt: skip
    assert images == {"registry.example.com/cai@sha256:" + "a" * 64}


def test_the_probe_keeps_its_old_name_and_reports_serving_and_not_serving():
    """Manifests rendered before the probe moved to services.common.probe run `services.k8s.cli probe`."""
    from services.k8s.cli import main
    from tests.common.test_probe import health_server

    with health_server() as port:
        assert main(["probe", "--port", str(port)]) == 0
        assert main(["probe", "--port", str(port), "--service", "cai.v1.Judge"]) == 1
        assert main(["probe", "--port", str(port), "--service", "cai.v1.Unknown", "--timeout", "2"]) == 1


# --- status against a stand-in API server -----------------------------------------------------


class _FakeApiServer:
    """Just enough of the Kubernetes API for kubectl's discovery, get and rollout status."""

    CORE = [
        ("namespaces", "Namespace", False),
        ("configmaps", "ConfigMap", True),
        ("services", "Service", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("pods", "Pod", True),
        ("secrets", "Secret", True),
    ]
    GROUPS = {
        "apps/v1": [("deployments", "Deployment", True), ("statefulsets", "StatefulSet", True)],
        "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
        "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    }

    def __init__(self):
        self.judge_status: dict = {"observedGeneration": 1, "replicas": 1}
        """The judge Deployment's status (not rolled out: no replica updated and available)."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                code, body = fake.get(urlparse(self.path).path.rstrip("/") or "/")
                self._send(code, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def _resources(group_version, items):
        return {
            "kind": "APIResourceList",
            "groupVersion": group_version,
            "resources": [
                {
                    "name": n,
                    "singularName": "",
                    "kind": k,
                    "namespaced": ns,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                }
                for n, k, ns in items
            ],
        }

    def get(self, path):
        if path == "/version":
            return 200, {"major": "1", "minor": "33", "gitVersion": "v1.33.1", "platform": "linux/amd64"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/api/v1":
            return 200, self._resources("v1", self.CORE)
        if path == "/apis":
            groups = []
            for gv in self.GROUPS:
                group, version = gv.split("/")
                v = {"groupVersion": gv, "version": version}
                groups.append({"name": group, "versions": [v], "preferredVersion": v})
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        if path.startswith("/apis/") and path.count("/") == 3:
            gv = path.removeprefix("/apis/")
            if gv in self.GROUPS:
                return 200, self._resources(gv, self.GROUPS[gv])
        if path == "/api/v1/namespaces/cai/pods":
            return 200, {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {},
                "items": [
                    {
                        "metadata": {
                            "name": "judge-abc",
                            "labels": {"app.kubernetes.io/name": "judge"},
                            "creationTimestamp": "2026-01-01T00:00:00Z",
                        },
                        "spec": {"containers": [{"name": "judge", "image": "cai"}]},
                        "status": {
                            "phase": "Pending",
                            "conditions": [
                                {
                                    "type": "PodScheduled",
                                    "status": "False",
                                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                                }
                            ],
                        },
                    }
                ],
            }
        if path == "/apis/apps/v1/namespaces/cai/deployments":
            return 200, {
                "kind": "DeploymentList",
                "apiVersion": "apps/v1",
                "metadata": {},
                "items": [
                    {
                        "metadata": {"name": "judge", "generation": 1},
                        "spec": {"replicas": 1, "selector": {}, "template": {}},
                        "status": self.judge_status,
                    }
                ],
            }
        if path == "/apis/apps/v1/namespaces/cai/statefulsets":
            return 200, {"kind": "StatefulSetList", "apiVersion": "apps/v1", "metadata": {}, "items": []}
        if path == "/api/v1/namespaces/cai/persistentvolumeclaims":
            return 200, {
                "kind": "PersistentVolumeClaimList",
                "apiVersion": "v1",
                "metadata": {},
                "items": [{"metadata": {"name": "cai-models"}, "spec": {}, "status": {"phase": "Pending"}}],
            }
        return 404, {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": f"{path} not found",
            "reason": "NotFound",
            "code": 404,
        }

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "c", "cluster": {"server": self.url}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "c", "user": "u", "namespace": "cai"}}],
                }
            )
        )
        return path

    def close(self):
        self.server.shutdown()


@pytest.fixture
def fake_api(tmp_path, monkeypatch):
    fake = _FakeApiServer()
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
    yield fake
    fake.close()


def test_status_lists_pods_why_they_wait_and_the_queue(fake_api, capsys):
    """kubectl's own tables and rollout status against a stand-in API server, the scheduler's
    reason for a Pending pod, and the trainer's queue over gRPC."""
    from services.k8s.cli import main

    assert main(["status", "--trainer", "127.0.0.1:1", "--timeout", "2"]) == 1  # not ready
    out = capsys.readouterr().out
    assert "judge-abc" in out
    assert "pending: judge-abc" in out and "Insufficient nvidia.com/gpu" in out
    assert 'Waiting for deployment "judge" rollout to finish' in out
    # unreachable trainer: UNAVAILABLE, or DEADLINE_EXCEEDED once channels retry UNAVAILABLE
    assert re.search(r"queue: unknown \((UNAVAILABLE|DEADLINE_EXCEEDED)", out), out


def test_status_is_ready_once_every_rollout_finished(fake_api, capsys):
    from services.k8s.cli import main

    fake_api.judge_status = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    assert main(["status", "--timeout", "2"]) == 0
    out = capsys.readouterr().out
    assert 'deployment "judge" successfully rolled out' in out and "queue: see --trainer" in out


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 1000, "mb": 2**20, "gb": 2**30}
    for suffix, factor in units.items():
        if quantity.lower().endswith(suffix.lower()):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


@pytest.mark.parametrize("name", ["base", "gpu", "cpu-small"])
def test_redis_is_bounded_below_its_memory_limit_and_scraped(renders, name):
    """--maxmemory (Redis's 'mb' is MiB) set and under the container's limit, noeviction, and a pinned
    exporter whose port the ServiceMonitor scrapes through the Service."""
    objects = renders[name]
    pod = _pod(_get(objects, "StatefulSet", "redis"))
    redis = next(c for c in pod["containers"] if c["name"] == "redis")
    args = redis["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    maxmemory = _bytes(args[args.index("--maxmemory") + 1])
    limit = _bytes(redis["resources"]["limits"]["memory"])
    assert 0.5 * limit <= maxmemory <= 0.8 * limit, (maxmemory, limit)
    exporter = next(c for c in pod["containers"] if c["name"] == "exporter")
    image, _, tag = exporter["image"].rpartition(":")
    assert image.endswith("redis_exporter") and re.fullmatch(r"v\d+\.\d+\.\d+", tag)
    assert any(a.startswith("--check-streams=") for a in exporter["args"])
    ports = {p["name"]: p for p in _get(objects, "Service", "redis")["spec"]["ports"]}
    assert ports["metrics"]["targetPort"] == "metrics"
    assert {"name": "metrics", "containerPort": 9121, "protocol": "TCP"} in exporter["ports"]


def test_alerts_watch_redis_the_queue_the_trainer_and_workloads_that_do_not_run():
    rules = {r["alert"]: r["expr"] for r in _rules()}
    assert (
        "redis_memory_used_bytes" in rules["CAIRedisMemoryHigh"]
        and "redis_memory_max_bytes" in rules["CAIRedisMemoryHigh"]
    )
    assert "redis_stream_length" in rules["CAIQueueDepthHigh"]
    assert "redis_stream_group_lag" in rules["CAIConsumerLagHigh"]
    assert 'up{job="trainer"}' in rules["CAITrainerNotReporting"] and "unless" in rules["CAITrainerNotReporting"]
    assert "kube_deployment_status_replicas_available" in rules["CAIWorkloadNotReady"]
    assert 'phase="Pending"' in rules["CAIPodPending"]
    assert "kube_statefulset_status_replicas_ready" in rules["CAIStatefulSetNotReady"]


@pytest.mark.parametrize("name", ["base", "gpu", "cpu-small"])
def test_inference_services_have_a_headless_twin_and_clients_dial_it(renders, name):
    objects = renders[name]
    for service in ("generation", "critique", "judge", "reward"):
        plain, headless = _get(objects, "Service", service), _get(objects, "Service", f"{service}-headless")
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["selector"] == plain["spec"]["selector"]
        assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]  # scraped once, via the plain one
    config = _config_of(objects, "trainer")
    assert config["reward_service"] == "dns:///reward-headless:50051"
    assert config["policy_training"]["generation_service"] == "dns:///generation-headless:50051"


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_tls_reaches_the_trainer_and_jobs_and_mutual_tls_is_an_option(tmp_path):
    """With tls, the trainer (a client: it promotes checkpoints) and pipeline jobs rendered with the
    overlay trust the Secret's CA; with mtls, servers require client certificates and every client
    presents the Secret's certificate."""
    job_text = (K8S / "examples" / "label-job.yaml").read_text().replace("generateName: cai-label-", "name: cai-label")
    for mtls in (False, True):
        root = tmp_path / f"with-job-{mtls}"  # a user overlay listing the Job beside the deployment
        components = ("tls", "mtls") if mtls else ("tls",)
        user_overlay(root, "overlays/cpu-small", components=components)
        (root / "job.yaml").write_text(job_text)
        kust = yaml.safe_load((root / "kustomization.yaml").read_text())
        (root / "kustomization.yaml").write_text(
            yaml.safe_dump({**kust, "resources": [*kust["resources"], "job.yaml"]})
        )
        objects = kustomize(root)
        trainer = _pod(_get(objects, "StatefulSet", "trainer"))["containers"][0]
        (job,) = _of(objects, "Job")
        for client in (trainer, _pod(job)["containers"][0]):
            env = _env(client)
            assert env["CAI_GRPC_TLS_CA_FILE"] == "/etc/cai/tls/ca.crt"
            assert any(m["mountPath"] == "/etc/cai/tls" for m in client["volumeMounts"])
            assert ("CAI_GRPC_TLS_CERT_FILE" in env) == mtls and ("CAI_GRPC_TLS_KEY_FILE" in env) == mtls
        for w in _cai_workloads(objects):
            args = _pod(w)["containers"][0]["args"]
            assert "--tls-cert-file=/etc/cai/tls/tls.crt" in args
            assert ("--tls-client-ca-file=/etc/cai/tls/ca.crt" in args) == mtls, _id(w)
            serve = build_parser().parse_args([a for a in args])
            assert serve.tls_client_ca_file == ("/etc/cai/tls/ca.crt" if mtls else None)


def test_the_distributed_run_writes_where_the_services_read(renders):
    """configs/distributed.yaml names Services the deployment has; the run Job (k8s/examples/run-job.yaml)
    writes its run folder on the trainer's work volume at the path reward and generation mount it."""
    objects = renders["cpu-small"]
    config = yaml.safe_load((REPO / "configs" / "distributed.yaml").read_text())
    for _service, address in config["services"].items():
        host = address.removeprefix("dns:///").rsplit(":", 1)[0]
        name, namespace = host.split(".")[:2]
        assert namespace == "cai" and _get(objects, "Service", name)["spec"].get("clusterIP") == "None"
    assert config["queue"].startswith("redis://redis.cai.svc:6379/")
    job = yaml.safe_load((K8S / "examples" / "run-job.yaml").read_text())
    container = _pod(job)["containers"][0]
    args = container["args"]
    assert args[args.index("--config") + 1] == "/opt/cai/configs/distributed.yaml"
    out = args[args.index("--out") + 1]
    work = next(v for v in _pod(job)["volumes"] if v["name"] == "work")["persistentVolumeClaim"]["claimName"]
    job_mount = next(m for m in container["volumeMounts"] if m["name"] == "work")["mountPath"]
    assert out.startswith(job_mount + "/")
    for name in ("reward", "generation"):
        pod = _pod(_get(objects, "Deployment", name))
        volume = next(v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == work)
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
        assert mount["mountPath"] == job_mount, name
        # and LoadCheckpoint accepts paths under the service's checkpoint_dir only
        assert out.startswith(_config_of(objects, name)["checkpoint_dir"] + "/"), name
    assert config["policy"]["model"].startswith("/models/")
    assert any(m["mountPath"] == "/models" for m in container["volumeMounts"])


def test_dashboard_is_scoped_to_a_namespace_with_rate_intervals_and_units_per_axis():
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "namespace" in variables["namespace"]["definition"]
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for selector in re.findall(r"\bcai_[a-z0-9_]+(\{[^}]*\})?", expr):
                assert 'namespace=~"$namespace"' in selector, (panel["title"], expr)
            assert not re.search(r"\[\d+[sm]\]", expr), (panel["title"], expr)  # $__rate_interval instead
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), panel["title"]
        for override in panel["fieldConfig"].get("overrides", []):
            props = {p["id"]: p["value"] for p in override["properties"]}
            assert props.get("custom.axisPlacement") == "right" and props.get("unit"), panel["title"]
