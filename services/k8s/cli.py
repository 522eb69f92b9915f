"""``cai k8s``: check and render a kustomize overlay, apply it with kubectl, report its rollout.

    cai k8s check k8s/deploy.example                # render + check service configs and constitution
    cai k8s render --overlay gpu --out deploy/      # offline; without --out: YAML on stdout
    cai k8s apply k8s/deploy.example                # check, then kubectl apply --server-side -k
    cai k8s status --namespace cai                  # kubectl get + rollout status (+ Trainer.Status)
    cai k8s sync-config [--check]                   # refresh k8s/base's copy of the constitution

A deployment is a kustomize overlay (copy ``k8s/deploy.example/``); ``DeployConfig`` files
(``--config``) are gone. ``cai k8s probe`` is kept for manifests that still run it: the probe is
``python -m services.common.probe``. ``add_parser(subparsers)`` registers the command on the ``cai``
parser; ``python -m services.k8s.cli ...`` runs it on its own. Exit status: 0 ok, 1 not ready / not
serving, 2 error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml

DEPLOY_CONFIG_GONE = (
    "--config: deployment settings files (DeployConfig) are replaced by kustomize overlays: copy "
    "k8s/deploy.example/ (namespace, images, replicas, components, configMapGenerator for service "
    "configs and the constitution), check it with `cai k8s check DIR` and apply it with "
    "`kubectl apply --server-side -k DIR` (or `cai k8s apply DIR`)"
)
_DEPRECATED = ("namespace", "image", "tls", "mtls", "external_redis", "monitoring")


def _fail(message: str) -> int:
    print(f"cai: error: {message}", file=sys.stderr)
    return 2


def _split_image(image: str) -> dict:
    ref, _, digest = image.partition("@")
    name, tag = ref, ""
    if ":" in ref.rsplit("/", 1)[-1]:
        name, tag = ref.rsplit(":", 1)
    return {"name": "cai", "newName": name, **({"digest": digest} if digest else {"newTag": tag} if tag else {})}


def _kustomization(args, tmp: str) -> Path:
    """The folder to render: DIR, or --overlay; with the deprecated flags, a kustomization over it
    written to ``tmp`` (what the user's own overlay would say)."""
    from services.k8s.manifests import K8S_DIR, K8sError, overlay_dir

    if getattr(args, "config", None):
        raise K8sError(DEPLOY_CONFIG_GONE)
    if args.dir and args.overlay:
        raise K8sError("give a kustomization folder or --overlay, not both")
    folder = overlay_dir(args.dir or args.overlay or "gpu")
    used = [f for f in _DEPRECATED if getattr(args, f, None)]
    if not used:
        return folder
    flags = ", ".join("--" + f.replace("_", "-") for f in used)
    print(f"cai: warning: {flags}: deprecated; say it in your overlay (see k8s/deploy.example/)", file=sys.stderr)
    root = Path(tmp)
    kust = {"resources": [os.path.relpath(folder.resolve(), root)]}
    if args.monitoring:
        kust["resources"].append(os.path.relpath(K8S_DIR / "monitoring", root))
    if args.namespace:
        kust["namespace"] = args.namespace
    components = ["tls"] if args.tls or args.mtls else []
    components += ["mtls"] if args.mtls else []
    components += ["external-redis"] if args.external_redis else []
    if components:
        kust["components"] = [os.path.relpath(K8S_DIR / "components" / c, root) for c in components]
    if args.image:
        kust["images"] = [_split_image(args.image)]
    (root / "kustomization.yaml").write_text(yaml.safe_dump(kust, sort_keys=False))
    return root


def _report(objects, problems, notes, where) -> int:
    for note in notes:
        print(note)
    if problems:
        for problem in problems:
            print(f"cai: error: {where}: {problem}", file=sys.stderr)
        return 2
    print(f"{where}: ok ({len(objects)} objects)")
    return 0


def cmd_check(args) -> int:
    from services.k8s.manifests import K8sError, check, kustomize

    with tempfile.TemporaryDirectory(prefix="cai-k8s-") as tmp:
        try:
            folder = _kustomization(args, tmp)
            objects = kustomize(folder)
        except K8sError as exc:
            return _fail(str(exc))
        return _report(objects, *check(objects), args.dir or args.overlay or folder)


def cmd_render(args) -> int:
    from services.k8s.manifests import K8sError, kustomize, sort_objects, to_yaml, write_objects

    with tempfile.TemporaryDirectory(prefix="cai-k8s-") as tmp:
        try:
            objects = sort_objects(kustomize(_kustomization(args, tmp)))
        except K8sError as exc:
            return _fail(str(exc))
    if args.out:
        paths = write_objects(objects, args.out)
        print(f"wrote {len(paths)} objects to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(to_yaml(objects))
    return 0


def _cluster_flags(args) -> list[str]:
    return [*(["--context", args.context] if args.context else []), f"--request-timeout={args.timeout:g}s"]


def cmd_apply(args) -> int:
    """``kubectl apply --server-side -k`` after ``check`` (``-f DIR`` with --from)."""
    from services.k8s.manifests import FIELD_MANAGER, K8sError, check, kubectl, kustomize, require_kubeconfig

    flags = ["--server-side", f"--field-manager={FIELD_MANAGER}", *_cluster_flags(args)]
    flags += ["--dry-run=server"] if args.dry_run else []
    flags += ["--force-conflicts"] if args.force_conflicts else []
    if args.config:
        return _fail(DEPLOY_CONFIG_GONE)
    with tempfile.TemporaryDirectory(prefix="cai-k8s-") as tmp:
        try:
            require_kubeconfig()
            if args.from_dir:
                source = ["-f", args.from_dir]
            else:
                folder = _kustomization(args, tmp)
                problems, notes = check(kustomize(folder))
                if problems:
                    return _report([], problems, notes, args.dir or args.overlay or folder)
                source = ["-k", str(folder)]
            done = kubectl("apply", *flags, *source, timeout=args.timeout + 600)
        except K8sError as exc:
            return _fail(str(exc))
    sys.stderr.write(done.stdout)
    print(f"{'checked (server dry run)' if args.dry_run else 'applied'}; follow the rollout with `cai k8s status`")
    return 0


def _rollout(kubectl, kind: str, selector: str, where: list[str], wait: float) -> bool:
    """``kubectl rollout status``, printed; whether every rollout finished (kubectl says "Waiting
    for ..." while one has not; with ``wait`` it waits that long)."""
    from services.k8s.manifests import K8sError

    watch = [f"--timeout={wait:g}s"] if wait else ["--watch=false"]
    try:
        out = kubectl("rollout", "status", kind, "-l", selector, *where, *watch, timeout=wait + 60).stdout
    except K8sError as exc:
        if "timed out waiting" not in str(exc):
            raise
        print(exc)
        return False
    print(out, end="")
    return not any(line.startswith("Waiting for") for line in out.splitlines())


def cmd_status(args) -> int:
    """kubectl's own tables, why pods wait, whether every rollout finished, the trainer's queue."""
    from services.k8s.manifests import PART_OF, K8sError, kubectl, require_kubeconfig, trainer_status_over_grpc

    if args.config:
        return _fail(DEPLOY_CONFIG_GONE)
    where = ["-n", args.namespace, *_cluster_flags(args)]
    why = 'WHY:.status.conditions[?(@.type=="PodScheduled")].message'
    try:
        require_kubeconfig()
        print(kubectl("get", "deployments,statefulsets,pods", "-l", PART_OF, *where).stdout, end="")
        waiting = kubectl(
            "get", "pods", "-l", PART_OF, "--field-selector=status.phase=Pending", *where,
            f"-o=custom-columns=POD:.metadata.name,{why}", "--no-headers",
        ).stdout  # fmt: skip
        for line in waiting.splitlines():
            print(f"pending: {line}")
        ready = all([_rollout(kubectl, kind, PART_OF, where, args.wait) for kind in ("deployment", "statefulset")])
    except K8sError as exc:
        return _fail(str(exc))
    if args.trainer:
        print(trainer_status_over_grpc(args.trainer, args.timeout))
    else:
        print(f"queue: see --trainer HOST:PORT (kubectl -n {args.namespace} port-forward svc/trainer 50051)")
    return 0 if ready else 1


def cmd_sync_config(args) -> int:
    from services.k8s.manifests import CONSTITUTION, CONSTITUTION_COPY, constitution_copy_is_fresh, sync_config

    if args.check:
        if constitution_copy_is_fresh():
            return 0
        return _fail(f"{CONSTITUTION_COPY} differs from {CONSTITUTION}: run `cai k8s sync-config`")
    changed = sync_config()
    print(f"{CONSTITUTION_COPY}: {'updated' if changed else 'already up to date'}")
    return 0


def cmd_probe(args) -> int:
    """``python -m services.common.probe``, under its old name (manifests rendered before it moved)."""
    from services.common.probe import probe

    return probe(args)


def _source_options(p: argparse.ArgumentParser, deprecated: bool = True) -> None:
    p.add_argument("dir", nargs="?", metavar="DIR", help="kustomization folder (e.g. a copy of k8s/deploy.example)")
    p.add_argument("--overlay", choices=["gpu", "cpu-small"], help="k8s/overlays/NAME instead of DIR (default gpu)")
    p.add_argument("--config", help=argparse.SUPPRESS)  # DeployConfig files: gone, a clear error
    if not deprecated:
        return
    hidden = "deprecated: say it in your overlay (k8s/deploy.example/)"
    p.add_argument("--namespace", help=f"namespace of every object ({hidden})")
    p.add_argument("--image", help=f"image of the services ({hidden})")
    for flag in ("tls", "mtls", "external-redis", "monitoring"):
        p.add_argument(f"--{flag}", action="store_true", default=None, help=f"add {flag} ({hidden})")


def _cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the API server")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``k8s`` and its subcommands on the ``cai`` parser's subparsers."""
    k8s = subparsers.add_parser("k8s", help="Kubernetes: check, render and apply a kustomize overlay (k8s/)")
    sub = k8s.add_subparsers(dest="k8s_command", required=True)

    check = sub.add_parser(
        "check", help="render an overlay and check its service configs and constitution (exit 2 on problems)"
    )
    _source_options(check, deprecated=False)
    check.set_defaults(func=cmd_check)

    render = sub.add_parser("render", help="render an overlay offline (kubectl kustomize), in apply order")
    _source_options(render)
    render.add_argument("--out", help="write one file per object here (default: YAML on stdout)")
    render.set_defaults(func=cmd_render)

    apply = sub.add_parser("apply", help="check, then kubectl apply --server-side -k to the current context")
    _source_options(apply)
    apply.add_argument("--from", dest="from_dir", metavar="DIR", help="apply the files `render --out DIR` wrote")
    apply.add_argument("--dry-run", action="store_true", help="have the API server check, not persist")
    apply.add_argument(
        "--force-conflicts", action="store_true", help="take over fields another manager (kubectl, an operator) set"
    )
    _cluster_options(apply)
    apply.set_defaults(func=cmd_apply)

    status = sub.add_parser("status", help="kubectl get and rollout status of the pipeline (exit 1 while not ready)")
    status.add_argument("--namespace", default="cai", help="namespace (default cai)")
    status.add_argument("--config", help=argparse.SUPPRESS)
    status.add_argument("--trainer", metavar="HOST:PORT", help="ask Trainer.Status here for the queue lag")
    status.add_argument("--wait", type=float, default=0, help="seconds to wait for the rollouts (default: do not)")
    _cluster_options(status)
    status.set_defaults(func=cmd_status)

    sync = sub.add_parser("sync-config", help="copy constitutions/default.yaml into k8s/base/config")
    sync.add_argument("--check", action="store_true", help="only check the copy is up to date")
    sync.set_defaults(func=cmd_sync_config)

    from services.common.probe import add_arguments

    probe = sub.add_parser("probe", help="gRPC health check of a local server (python -m services.common.probe)")
    add_arguments(probe).set_defaults(func=cmd_probe)
    return k8s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cai")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["k8s", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
