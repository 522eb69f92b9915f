"""``cai serve SERVICE``: run one service of the registry (services/registry.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

from services import registry
from services.cli._common import QUEUE_FILE_HELP, _fail, _queue_url, _set
from services.cli._config_flags import add_config_flags, config_overrides
from services.common.server import ServerConfig
from services.registry import SERVICES

SERVER_EXCLUDE = ("tls_allowed_client_names",)  # --tls-allowed-client-name, repeated (below)


def _server_overrides(args) -> dict:
    names = tuple(args.tls_allowed_client_name) if args.tls_allowed_client_name else None
    return {**config_overrides(args, ServerConfig, SERVER_EXCLUDE), "tls_allowed_client_names": names}


def _engine_overrides(args) -> dict:
    return {"model": args.model, "kind": args.engine, "checkpoint_id": args.checkpoint_id}


async def _serve(service, port_file: str | None) -> None:
    await service.start()
    if port_file:
        Path(port_file).write_text(json.dumps({"port": service.port, "metrics_port": service.metrics_port}) + "\n")
    print(f"serving on port {service.port} (metrics on {service.metrics_port})", flush=True)
    await service.serve_until_signal()


def serve_config(args):
    """The config ``cai serve SERVICE`` runs with: the --config file with the flags laid over it
    *before* its rules are checked, so a field the file leaves out may come from a flag (the
    trainer's --queue in the k8s manifests). Raises ConfigError naming the file and field."""
    from services.config import load_config, validate_config

    config_cls = registry.service(args.service).config_type()
    config = load_config(config_cls, args.config, check=False) if args.config else config_cls()
    changes = {}
    if hasattr(config, "engine"):
        changes["engine"] = dataclasses.replace(config.engine, **_set(_engine_overrides(args)))
    elif args.service == "reward":
        changes.update(model=args.model, checkpoint_id=args.checkpoint_id)
    elif args.service == "trainer":
        changes.update(queue=_queue_url(args), work_dir=args.work_dir)
        changes["reward"] = dataclasses.replace(config.reward, **_set({"model": args.model}))
    changes["server"] = dataclasses.replace(config.server, **_set(_server_overrides(args)))
    if getattr(args, "constitution", None):
        changes["constitution"] = args.constitution
    if getattr(args, "checkpoint_dir", None):
        changes["checkpoint_dir"] = args.checkpoint_dir
    config = dataclasses.replace(config, **_set(changes))
    validate_config(config, args.config or "command line")
    return config


def cmd_serve(args) -> int:
    build = registry.service(args.service).build_function()
    config = serve_config(args)  # a ConfigError reaches the CLI's error boundary

    async def main():
        service = await build(config)
        await _serve(service, args.port_file)
        return getattr(service, "exit_code", 0)  # the trainer: 1 when its work loop failed

    try:
        code = asyncio.run(main())
    except (OSError, ValueError) as exc:  # a CaiError (no model, a dead engine) reaches the boundary
        return _fail(str(exc))
    return code


def add_parser(sub) -> None:
    """Registers the command on the ``cai`` parser's subparsers."""
    serve = sub.add_parser("serve", help="run a service").add_subparsers(dest="service", required=True)
    for name in SERVICES:
        p = serve.add_parser(name, help=SERVICES[name].help)
        p.add_argument("--config", help="YAML file with the service's sections (engine, server, limits, ...)")
        p.add_argument("--model", help="model folder, hub id or packaged name (trainer: the reward model's base)")
        fields = {f.name for f in dataclasses.fields(SERVICES[name].config_type())}  # the flags its config takes
        if "queue" in fields:
            p.add_argument("--queue", help="sqlite:///path.db or redis://host:port/db")
            p.add_argument("--queue-file", help=QUEUE_FILE_HELP)
            p.add_argument("--work-dir", help="folder for training data and checkpoints")
        else:
            p.add_argument("--checkpoint-id", help="id reported for the initial checkpoint")
        if "checkpoint_dir" in fields:
            p.add_argument(
                "--checkpoint-dir",
                help="LoadCheckpoint loads only from under this folder and records "
                "the promoted checkpoint there (a restart serves it); without it, only a loopback "
                "server accepts LoadCheckpoint",
            )
        if "engine" in fields:
            p.add_argument("--engine", choices=["vllm", "transformers"], help="inference engine (default vllm)")
        if "constitution" in fields:
            p.add_argument("--constitution", help="constitution file (default constitutions/default.yaml)")
        # One flag per ServerConfig field (--host, --port, --metrics-port, --grace-seconds, --tls-cert-file, ...)
        add_config_flags(p, ServerConfig, exclude=SERVER_EXCLUDE, defaults=SERVICES[name].config_type()().server)
        p.add_argument(
            "--tls-allowed-client-name",
            action="append",
            metavar="NAME",
            help="a client certificate name (SAN or CN) allowed to call LoadCheckpoint; repeat for "
            "several (default: every client; needs --tls-client-ca-file)",
        )
        p.add_argument("--port-file", help="write the bound ports as JSON to this file once serving")
        p.set_defaults(func=cmd_serve)


run = cmd_serve
