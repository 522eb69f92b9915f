"""Rendered Kubernetes workloads started as local processes on loopback ("pods").

Each pod runs its container's command exactly as rendered (the image's entrypoint ``cai`` with the
container's args, ``$(VAR)`` expanded from its env as the kubelet does), with its env and its
mounted ConfigMap files. What changes, and only that:

- paths: every volume's mountPath becomes a folder of the test (a ConfigMap's files written there,
  a PersistentVolumeClaim one folder per claim shared by the pods that mount it, an emptyDir one per
  pod), in args, env values and the mounted ConfigMap files;
- addresses: a Service's DNS name (``judge:50051``, ``dns:///judge-headless:50051``,
  ``judge.cai.svc:50051``) becomes the loopback ports of the pods it selects (an ``ipv4:`` list for
  a headless Service, one pod for a ClusterIP one, which pins one connection to one pod), and the
  Redis Service the real Redis on 127.0.0.1:6379; with TLS, clients check the name "localhost" on
  the servers' certificate (CAI_GRPC_TLS_SERVER_NAME) since they no longer dial a Service's name;
- ports: the container ports (50051, 9090) become free ports (``--host 0.0.0.0`` stays: the clients
  dial 127.0.0.1).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
BASE_ENV = {
    # The process's own needs (an image sets these in its layers), not the manifests'.
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "LANG": "C.UTF-8",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion ($$ escapes, unknown names stay as written)."""
    return re.sub(r"\$\$|\$\((\w+)\)", lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


@dataclass
class Pod:
    name: str
    workload: dict
    labels: dict
    index: int = 0
    env_extra: dict = field(default_factory=dict)
    ports: dict = field(default_factory=dict)  # containerPort -> local port
    env: dict = field(default_factory=dict)  # the process's env from the manifest (remapped)
    remap: object = None  # the pod's path and address remapping
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def container(self) -> dict:
        (c,) = self.workload["spec"]["template"]["spec"]["containers"]
        return c

    def port(self, name_or_number) -> int:
        for p in self.container.get("ports", []):
            if name_or_number in (p["name"], p["containerPort"]):
                return self.ports[p["containerPort"]]
        raise KeyError(f"{self.name}: no port {name_or_number}")

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""


class Cluster:
    """The rendered objects of one namespace, run as processes under ``root``."""

    def __init__(
        self,
        objects: list[dict],
        root: Path,
        namespace: str,
        models: Path,
        redis_url: str,
        volume_roots: dict[str, Path] | None = None,
        secrets: dict[str, dict[str, Path]] | None = None,
    ):
        self.objects, self.root, self.namespace = objects, root, namespace
        self.models, self.redis_url = models, redis_url
        self.secrets = secrets or {}
        """Secret name -> {key: file}: what the Secrets the manifests mount (and a user creates) hold."""
        self.claims = {"cai-models": models, **(volume_roots or {})}
        self.pods: list[Pod] = []

    # -- objects ------------------------------------------------------------------------------

    def get(self, kind: str, name: str) -> dict:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert found, f"no {kind}/{name} in the rendered objects"
        return found[0]

    def add_workload(self, workload: dict, replicas: int | None = None, env_per_index=None) -> list[Pod]:
        kind, name = (
            workload["kind"],
            workload["metadata"].get("name") or workload["metadata"]["generateName"].rstrip("-"),
        )
        count = (
            replicas
            if replicas is not None
            else (workload["spec"].get("parallelism", 1) if kind == "Job" else workload["spec"].get("replicas", 1))
        )
        pods = []
        for i in range(count):
            pod_name = f"{name}-{i}"
            labels = dict(workload["spec"]["template"]["metadata"].get("labels", {}))
            pod = Pod(pod_name, workload, labels, index=i, env_extra=(env_per_index or (lambda i: {}))(i))
            pod.ports = {p["containerPort"]: free_port() for p in pod.container.get("ports", [])}
            pods.append(pod)
        self.pods += pods
        return pods

    # -- addresses ----------------------------------------------------------------------------

    def _selected(self, selector: dict) -> list[Pod]:
        return [p for p in self.pods if all(p.labels.get(k) == v for k, v in selector.items())]

    def address_map(self) -> dict[str, str]:
        """'host:port' and 'dns:///host:port' forms of every Service -> a loopback gRPC target."""
        out = {}
        for svc in (o for o in self.objects if o["kind"] == "Service"):
            name, spec = svc["metadata"]["name"], svc["spec"]
            hosts = [
                name,
                f"{name}.{self.namespace}",
                f"{name}.{self.namespace}.svc",
                f"{name}.{self.namespace}.svc.cluster.local",
            ]
            for port in spec["ports"]:
                if name == "redis":
                    targets = ["127.0.0.1:6379"]
                else:
                    pods = self._selected(spec["selector"])
                    targets = [f"127.0.0.1:{p.port(port['targetPort'])}" for p in pods]
                if not targets:
                    continue
                headless = spec.get("clusterIP") == "None"
                for host in hosts:
                    # DNS of a headless Service returns every pod; a ClusterIP is one virtual address,
                    # and a gRPC connection to it stays on one pod.
                    many = f"ipv4:{','.join(targets)}" if headless and len(targets) > 1 else targets[0]
                    out[f"dns:///{host}:{port['port']}"] = many
                    out[f"{host}:{port['port']}"] = many
        return out

    def _remap_addresses(self, text: str, addresses: dict[str, str]) -> str:
        keys = sorted(addresses, key=len, reverse=True)
        pattern = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, keys)) + r")(?![\w.])")
        return pattern.sub(lambda m: addresses[m.group(1)], text)

    # -- volumes and paths --------------------------------------------------------------------

    def _volumes(self, pod: Pod) -> dict[str, Path]:
        """Volume name -> folder on this machine, ConfigMaps written."""
        spec = pod.workload["spec"]
        folders = {}
        for vol in spec["template"]["spec"].get("volumes", []):
            if "configMap" in vol:
                folder = self.root / "pods" / pod.name / vol["name"]
                folders[vol["name"]] = folder
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                folders[vol["name"]] = self.claims.setdefault(claim, self.root / "claims" / claim)
            elif "emptyDir" in vol:
                folders[vol["name"]] = self.root / "pods" / pod.name / vol["name"]
            elif "secret" in vol:
                name = vol["secret"]["secretName"]
                assert name in self.secrets, f"{pod.name}: Secret {name} (create it: the test's secrets)"
                folder = self.root / "pods" / pod.name / vol["name"]
                folder.mkdir(parents=True, exist_ok=True)
                for key, source in self.secrets[name].items():
                    shutil.copyfile(source, folder / key)
                folders[vol["name"]] = folder
            else:
                raise AssertionError(f"{pod.name}: volume {vol['name']} of a kind this test cannot run: {vol}")
        for tmpl in spec.get("volumeClaimTemplates", []):
            claim = f"{tmpl['metadata']['name']}-{pod.workload['metadata']['name']}-{pod.index}"
            folders[tmpl["metadata"]["name"]] = self.claims.setdefault(claim, self.root / "claims" / claim)
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        return folders

    def start(self, pod: Pod) -> None:
        container = pod.container
        folders = self._volumes(pod)
        mounts = {m["mountPath"]: folders[m["name"]] for m in container.get("volumeMounts", [])}
        path_re = (
            re.compile(
                r"(?<![\w.-])(" + "|".join(map(re.escape, sorted(mounts, key=len, reverse=True))) + r")(?=/|$|[^\w.-])"
            )
            if mounts
            else None
        )
        addresses = self.address_map()

        def remap(text: str) -> str:
            text = self._remap_addresses(text, addresses)
            return path_re.sub(lambda m: str(mounts[m.group(1)]), text) if path_re else text

        pod.remap = remap

        # ConfigMap files, paths and addresses remapped.
        for vol in pod.workload["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in vol:
                cm = self.get("ConfigMap", vol["configMap"]["name"])
                for key, value in cm.get("data", {}).items():
                    (folders[vol["name"]] / key).write_text(remap(value))

        env: dict[str, str] = {}
        for item in container.get("env", []):
            if "value" in item:
                value = _expand(item["value"], env)
            else:
                ref = item["valueFrom"].get("fieldRef", {}).get("fieldPath", "")
                if ref == "metadata.namespace":
                    value = self.namespace
                elif ref.startswith("metadata.labels['"):
                    value = pod.labels[ref[len("metadata.labels['") : -2]]
                elif ref == "metadata.name":
                    value = pod.name
                else:
                    raise AssertionError(f"{pod.name}: env {item['name']}: cannot run {item['valueFrom']}")
            env[item["name"]] = remap(value)
        env.update(pod.env_extra)
        if "CAI_QUEUE_URL" in env:
            assert env["CAI_QUEUE_URL"].startswith("redis://127.0.0.1:6379/"), env["CAI_QUEUE_URL"]
            env["CAI_QUEUE_URL"] = self.redis_url  # our own stream on the shared Redis

        if env.get("CAI_GRPC_TLS_CA_FILE") and "CAI_GRPC_TLS_SERVER_NAME" not in env:
            # The Service names became loopback addresses, so the name a client checks on the
            # servers' certificate is no longer the Service's: check "localhost" (on the test's
            # certificate, beside every Service name) -- part of the address remapping.
            env["CAI_GRPC_TLS_SERVER_NAME"] = "localhost"
        pod.env = env
        args = [remap(_expand(a, env)) for a in container.get("args", [])]
        for flag, _number in (("--port", 50051), ("--metrics-port", 9090)):
            if flag in args:
                i = args.index(flag) + 1
                args[i] = str(pod.ports[int(args[i])])
        # --host stays as rendered (0.0.0.0): a server that treats loopback specially (LoadCheckpoint
        # without --checkpoint-dir) must behave here as in a pod; it is still reached on loopback.
        home = self.root / "pods" / pod.name / "home"
        home.mkdir(parents=True, exist_ok=True)
        pod.log_path = self.root / "pods" / pod.name / "log.txt"
        command = container.get("command") or [str(Path(sys.executable).parent / "cai")]
        pod.proc = subprocess.Popen(
            [*command, *args],
            cwd=home,
            env={**BASE_ENV, "HOME": str(home), **env},
            stdout=open(pod.log_path, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    # -- waiting ------------------------------------------------------------------------------

    def wait_serving(self, pod: Pod, deadline: float) -> None:
        probe = pod.container["readinessProbe"]
        if "exec" in probe:
            return self._wait_exec(pod, probe["exec"]["command"], deadline)
        probe = probe["grpc"]
        target = f"127.0.0.1:{pod.ports[probe['port']]}"
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if pod.proc.poll() is not None:
                    raise AssertionError(f"{pod.name} exited {pod.proc.returncode}:\n{pod.output()[-3000:]}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=probe.get("service", "")), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.time() > deadline:
                    raise AssertionError(f"{pod.name} not SERVING in time:\n{pod.output()[-3000:]}")
                time.sleep(0.5)

    def _wait_exec(self, pod: Pod, command: list[str], deadline: float) -> None:
        """An exec probe, run as the kubelet would in the container: its env, paths and port remapped."""
        argv = [pod.remap(_expand(a, pod.env)) for a in command]
        if "--port" in argv:
            i = argv.index("--port") + 1
            argv[i] = str(pod.ports[int(argv[i])])
        if argv[0] == "python":
            argv[0] = sys.executable
        while True:
            if pod.proc.poll() is not None:
                raise AssertionError(f"{pod.name} exited {pod.proc.returncode}:\n{pod.output()[-3000:]}")
            done = subprocess.run(argv, env={**BASE_ENV, **pod.env}, capture_output=True, text=True, timeout=60)
            if done.returncode == 0:
                return
            if time.time() > deadline:
                raise AssertionError(f"{pod.name}: probe {argv} fails: {done.stderr[-500:]}\n{pod.output()[-3000:]}")
            time.sleep(1)

    def stop_all(self) -> None:
        for pod in self.pods:
            if pod.proc and pod.proc.poll() is None:
                pod.proc.send_signal(signal.SIGTERM)
        for pod in self.pods:
            if pod.proc:
                try:
                    pod.proc.wait(30)
                except subprocess.TimeoutExpired:
                    pod.proc.kill()
                    pod.proc.wait()


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
