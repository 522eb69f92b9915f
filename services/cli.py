"""The ``cai`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "urllib3", "filelock", "transformers", "vllm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(message: str) -> int:
    print(f"cai: error: {message}", file=sys.stderr)
    return 2


# --- cai serve -------------------------------------------------------------------------------


def _server_overrides(args) -> dict:
    return {
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
    }


def _engine_overrides(args) -> dict:
    return {"model": args.model, "kind": args.engine, "checkpoint_id": args.checkpoint_id}


async def _serve(service, port_file: str | None) -> None:
    await service.start()
    if port_file:
        Path(port_file).write_text(
            json.dumps({"port": service.port, "metrics_port": service.metrics_port}) + "\n"
        )
    print(f"serving on port {service.port} (metrics on {service.metrics_port})", flush=True)
    await service.serve_until_signal()


def cmd_serve_generation(args) -> int:
    from services.config import ConfigError, load_config, replace_config
    from services.engines import EngineError
    from services.generation.config import GenerationConfig
    from services.generation.service import build_generation_service
    from services.models.registry import ModelNotFound

    try:
        config = load_config(GenerationConfig, args.config) if args.config else GenerationConfig()
        config = replace_config(
            config,
            engine=replace_config(config.engine, **_engine_overrides(args)),
            server=replace_config(config.server, **_server_overrides(args)),
        )
    except ConfigError as exc:
        return _fail(str(exc))

    async def main():
        service = await build_generation_service(config)
        await _serve(service, args.port_file)

    try:
        asyncio.run(main())
    except (ModelNotFound, EngineError) as exc:
        return _fail(str(exc))
    return 0


# --- cai tiny-model / model ------------------------------------------------------------------


def cmd_tiny_model(args) -> int:
    from services.models.tiny import build_tiny_model

    out = build_tiny_model(args.dir, reward=args.reward, size=args.size, seed=args.seed)
    kind = "reward model" if args.reward else "causal LM"
    print(f"wrote a {args.size} {kind} to {out}")
    return 0


def cmd_model_prepare(args) -> int:
    from services.models.registry import ModelNotFound, resolve_model

    try:
        print(resolve_model(args.model))
    except ModelNotFound as exc:
        return _fail(str(exc))
    return 0


# --- cai constitution ------------------------------------------------------------------------


def cmd_constitution_check(args) -> int:
    from services.constitution import ConstitutionError, load_constitution

    try:
        c = load_constitution(args.file)
    except ConstitutionError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.file}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    print(
        f"{args.file}: ok: {c.name!r}, {len(c.critique_revision)} critique/revision principles, "
        f"{len(c.judging)} judging principles, {len(c.critique_examples)}+{len(c.judging_examples)} "
        f"few-shot examples, sha256 {c.sha256}"
    )
    return 0


# --- cai generate (a client) -----------------------------------------------------------------


def cmd_generate(args) -> int:
    import grpc

    from services.api.cai.v1 import common_pb2, generation_pb2, generation_pb2_grpc

    sampling = common_pb2.SamplingParams(n=args.n, max_tokens=args.max_tokens, temperature=args.temperature)
    if args.seed is not None:
        sampling.seed = args.seed
    request = generation_pb2.GenerateRequest(
        prompts=[common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content=p)])
                 for p in args.prompt],
        sampling=sampling,
    )
    with grpc.insecure_channel(args.addr) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        try:
            response = stub.Generate(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            return _fail(f"{args.addr}: {exc.code().name}: {exc.details()}")
    for prompt, completion in zip(args.prompt, response.completions):
        print(f"> {prompt}")
        for i, s in enumerate(completion.samples):
            print(f"[{i}] ({s.token_count} tokens) {s.text}")
    return 0


# --- cai run ---------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from services.run import run_main

    return run_main(args.config, args.out)


def cmd_protos(args) -> int:
    from services import protogen

    return protogen.main(["--check"] if args.check else [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cai", description="Constitutional AI services and pipeline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the main job on the embedded default")
    run.add_argument("--config", help="YAML config of the run")
    run.add_argument("--out", help="run folder (default: runs/<time>)")
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser("serve", help="run a service").add_subparsers(dest="service", required=True)
    gen = serve.add_parser("generation", help="the generation service (cai.v1.Generation)")
    gen.add_argument("--config", help="YAML file with engine/server/limits sections")
    gen.add_argument("--model", help="model folder, hub id or packaged name (default smollm2-135m-instruct)")
    gen.add_argument("--engine", choices=["vllm", "transformers"], help="inference engine (default vllm)")
    gen.add_argument("--checkpoint-id", help="id reported for the initial checkpoint")
    gen.add_argument("--host", help="listen address (default 0.0.0.0)")
    gen.add_argument("--port", type=int, help="gRPC port (default 50051; 0 picks one)")
    gen.add_argument("--metrics-port", type=int, help="Prometheus port (default 9090; -1 off)")
    gen.add_argument("--port-file", help="write the bound ports as JSON to this file once serving")
    gen.set_defaults(func=cmd_serve_generation)

    tiny = sub.add_parser("tiny-model", help="build a tiny local model (no download)")
    tiny.add_argument("dir")
    tiny.add_argument("--reward", action="store_true", help="a sequence-classification reward model")
    tiny.add_argument("--size", choices=["tiny", "small"], default="tiny", help="tiny ~0.1M, small ~25M parameters")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_model)

    model = sub.add_parser("model", help="models").add_subparsers(dest="model_command", required=True)
    prep = model.add_parser("prepare", help="resolve a model (converting a packaged one once); print its folder")
    prep.add_argument("model", nargs="?", default="smollm2-135m-instruct")
    prep.set_defaults(func=cmd_model_prepare)

    con = sub.add_parser("constitution", help="constitution files").add_subparsers(dest="con_command", required=True)
    check = con.add_parser("check", help="validate a constitution file")
    check.add_argument("file")
    check.set_defaults(func=cmd_constitution_check)

    genc = sub.add_parser("generate", help="call a generation service")
    genc.add_argument("prompt", nargs="+")
    genc.add_argument("--addr", default="127.0.0.1:50051")
    genc.add_argument("-n", type=int, default=1)
    genc.add_argument("--max-tokens", type=int, default=128)
    genc.add_argument("--temperature", type=float, default=1.0)
    genc.add_argument("--seed", type=int)
    genc.add_argument("--timeout", type=float, default=120.0)
    genc.set_defaults(func=cmd_generate)

    protos = sub.add_parser("protos", help="regenerate the gRPC code from protos/")
    protos.add_argument("--check", action="store_true", help="only check it is fresh")
    protos.set_defaults(func=cmd_protos)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
