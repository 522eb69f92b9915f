"""``cai k8s``: render the Kubernetes manifests offline, apply them, report the pipeline's state.

    cai k8s render --overlay gpu --out deploy/      # offline; without --out: YAML on stdout
    cai k8s apply --overlay gpu                     # server-side apply to the current context
    cai k8s status                                  # pods, readiness, queue lag
    cai k8s sync-config [--check]                   # refresh k8s/base's copy of the constitution
    cai k8s probe --port 50051 --tls-dir DIR        # gRPC health over TLS (the tls component's probe)

``add_parser(subparsers)`` registers the command on the ``cai`` parser; ``python -m
services.k8s.cli ...`` runs it on its own. Exit status: 0 ok, 1 not ready / not serving, 2 error.
"""

from __future__ import annotations

import argparse
import os
import sys

from services.common.channels import open_channel


def _fail(message: str) -> int:
    print(f"cai: error: {message}", file=sys.stderr)
    return 2


def _deploy_config(args):
    from services.config import ConfigError, replace_config
    from services.k8s.manifests import K8sError, load_deploy_config

    config, base_dir = load_deploy_config(args.config)
    try:
        config = replace_config(
            config,
            overlay=args.overlay,
            namespace=args.namespace,
            image=args.image,
            tls=args.tls,
            mtls=args.mtls,
            external_redis=args.external_redis,
            monitoring=args.monitoring,
        )
    except ConfigError as exc:
        raise K8sError(str(exc)) from None
    return config, base_dir


def cmd_render(args) -> int:
    from services.k8s.manifests import K8sError, render, to_yaml, write_objects

    try:
        config, base_dir = _deploy_config(args)
        objects = render(config, base_dir)
    except K8sError as exc:
        return _fail(str(exc))
    if args.out:
        paths = write_objects(objects, args.out)
        print(
            f"wrote {len(paths)} objects ({config.overlay}, namespace {config.namespace}) to {args.out}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(to_yaml(objects))
    return 0


def cmd_apply(args) -> int:
    from services.k8s.manifests import Cluster, K8sError, read_objects, render

    try:
        cluster = Cluster.connect(context=args.context, timeout=args.timeout)
        if args.from_dir:
            objects = read_objects(args.from_dir)
        else:
            config, base_dir = _deploy_config(args)
            objects = render(config, base_dir)
        cluster.apply(
            objects,
            dry_run=args.dry_run,
            force_conflicts=args.force_conflicts,
            report=lambda line: print(line, file=sys.stderr),
        )
    except K8sError as exc:
        return _fail(str(exc))
    verb = "checked (server dry run)" if args.dry_run else "applied"
    print(
        f"{verb} {len(objects)} objects on {cluster.host} (context {cluster.context or '?'}); "
        "follow the rollout with `cai k8s status`"
    )
    return 0


def cmd_status(args) -> int:
    from services.k8s.manifests import Cluster, K8sError, load_deploy_config

    try:
        namespace = args.namespace or load_deploy_config(args.config)[0].namespace
        cluster = Cluster.connect(context=args.context, timeout=args.timeout)
        status = cluster.status(namespace, trainer=args.trainer or "", timeout=args.timeout)
    except K8sError as exc:
        return _fail(str(exc))
    print(f"namespace {status.namespace} on {cluster.host} (context {cluster.context or '?'})")
    for line in status.lines():
        print(line)
    return 0 if status.ready else 1


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
    """gRPC health check of a local server (exec probe: kubelet's gRPC probes cannot speak TLS)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address = f"{args.host}:{args.port}"
    if args.tls_dir:
        cert = os.path.join(args.tls_dir, "tls.crt")
        ca = os.path.join(args.tls_dir, "ca.crt")
        try:
            with open(ca if os.path.isfile(ca) else cert, "rb") as f:
                roots = f.read()
        except OSError as exc:
            return _fail(f"probe: {exc}")
        options = []
        server_name = args.server_name or os.environ.get("CAI_TLS_SERVER_NAME", "")
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        # The pod's own certificate as the client's: needed when the server verifies client
        # certificates (k8s/components/mtls), ignored otherwise.
        key = os.path.join(args.tls_dir, "tls.key")
        chain = private_key = None
        if os.path.isfile(key) and os.path.isfile(cert):
            try:
                with open(cert, "rb") as f:
                    chain = f.read()
                with open(key, "rb") as f:
                    private_key = f.read()
            except OSError as exc:
                return _fail(f"probe: {exc}")
        channel = grpc.secure_channel(
            address,
            grpc.ssl_channel_credentials(root_certificates=roots, private_key=private_key, certificate_chain=chain),
            options,
        )
    else:
        channel = open_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"{address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"{address} {args.service or '(server)'}: {state}", file=sys.stderr)
        return 1
    return 0


def _render_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overlay", choices=["gpu", "cpu-small"], help="overlay under k8s/overlays (default gpu)")
    p.add_argument("--config", help="deployment settings, YAML (fields: DeployConfig in services/k8s/manifests.py)")
    p.add_argument("--namespace", help="namespace of every object (default cai)")
    p.add_argument("--image", help="image of the services, e.g. registry.example.com/cai:0.1.0-gpu")
    p.add_argument(
        "--tls",
        action="store_true",
        default=None,
        help="serve gRPC over TLS with the Secret cai-grpc-tls (k8s/components/tls)",
    )
    p.add_argument(
        "--mtls",
        action="store_true",
        default=None,
        help="mutual TLS on top of --tls: servers verify client certificates (k8s/components/mtls)",
    )
    p.add_argument(
        "--external-redis",
        action="store_true",
        default=None,
        help="use an existing Redis, URL in the Secret cai-queue (k8s/components/external-redis)",
    )
    p.add_argument(
        "--monitoring",
        action="store_true",
        default=None,
        help="include k8s/monitoring (Prometheus Operator CRDs needed) and the Grafana dashboard",
    )


def _cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the API server")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``k8s`` and its subcommands on the ``cai`` parser's subparsers."""
    k8s = subparsers.add_parser("k8s", help="Kubernetes: render, apply and check the deployment (k8s/)")
    sub = k8s.add_subparsers(dest="k8s_command", required=True)

    render = sub.add_parser("render", help="render the manifests of an overlay offline (kustomize)")
    _render_options(render)
    render.add_argument("--out", help="write one file per object here (default: YAML on stdout)")
    render.set_defaults(func=cmd_render)

    apply = sub.add_parser("apply", help="server-side apply the rendered manifests to the current cluster")
    _render_options(apply)
    apply.add_argument("--from", dest="from_dir", metavar="DIR", help="apply the files `render --out DIR` wrote")
    apply.add_argument("--dry-run", action="store_true", help="have the API server check, not persist")
    apply.add_argument(
        "--force-conflicts", action="store_true", help="take over fields another manager (kubectl, an operator) set"
    )
    _cluster_options(apply)
    apply.set_defaults(func=cmd_apply)

    status = sub.add_parser(
        "status", help="pods and readiness of the pipeline, and the queue lag (exit 1 while not all ready)"
    )
    status.add_argument("--namespace", help="namespace (default: the --config file's, else cai)")
    status.add_argument("--config", help="deployment settings, YAML (for its namespace)")
    status.add_argument(
        "--trainer",
        metavar="HOST:PORT",
        help="ask Trainer.Status here (e.g. after kubectl port-forward svc/trainer 50051) "
        "instead of port-forwarding to the trainer's /metrics",
    )
    _cluster_options(status)
    status.set_defaults(func=cmd_status)

    sync = sub.add_parser("sync-config", help="copy constitutions/default.yaml into k8s/base/config")
    sync.add_argument("--check", action="store_true", help="only check the copy is up to date")
    sync.set_defaults(func=cmd_sync_config)

    probe = sub.add_parser("probe", help="gRPC health check of a local server (exit 0 when SERVING)")
    probe.add_argument("--host", default="127.0.0.1")
    probe.add_argument("--port", type=int, default=50051)
    probe.add_argument("--service", default="", help="service name to check (default: the whole server)")
    probe.add_argument("--tls-dir", help="folder with tls.crt (and ca.crt): connect over TLS")
    probe.add_argument("--server-name", help="name expected on the certificate (default $CAI_TLS_SERVER_NAME)")
    probe.add_argument("--timeout", type=float, default=5.0)
    probe.set_defaults(func=cmd_probe)
    return k8s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cai")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["k8s", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
