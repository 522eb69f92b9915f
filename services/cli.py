"""The ``cai`` command line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from services.common.channels import open_channel


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "urllib3", "filelock", "transformers", "vllm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


QUEUE_FILE_HELP = ("file holding the queue URL (a mounted Secret), so a password stays off the command line; "
                   "without --queue/--queue-file: $CAI_QUEUE_URL, then the file $CAI_QUEUE_URL_FILE names")


def _queue_url(args) -> str | None:
    """--queue, else the URL in --queue-file, else the environment (CAI_QUEUE_URL, CAI_QUEUE_URL_FILE);
    None when none is set (a --config file may name it)."""
    from services.config import ConfigError
    from services.queue import QueueError, queue_url_from_environment, read_queue_url_file

    if args.queue:
        return args.queue
    try:
        if getattr(args, "queue_file", None):
            return read_queue_url_file(args.queue_file)
        return queue_url_from_environment() or None
    except QueueError as exc:
        raise ConfigError(str(exc)) from None


def _fail(message: str) -> int:
    print(f"cai: error: {message}", file=sys.stderr)
    return 2


# --- cai serve -------------------------------------------------------------------------------


def _server_overrides(args) -> dict:
    return {
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
        "tls_cert_file": args.tls_cert_file,
        "tls_key_file": args.tls_key_file,
        "tls_client_ca_file": args.tls_client_ca_file,
        "tls_allowed_client_names": tuple(args.tls_allowed_client_name) if args.tls_allowed_client_name else None,
    }


def _engine_overrides(args) -> dict:
    return {"model": args.model, "kind": args.engine, "checkpoint_id": args.checkpoint_id}


def _set(changes: dict) -> dict:
    """The flags that were given (argparse leaves the others None)."""
    return {k: v for k, v in changes.items() if v is not None}


async def _serve(service, port_file: str | None) -> None:
    await service.start()
    if port_file:
        Path(port_file).write_text(
            json.dumps({"port": service.port, "metrics_port": service.metrics_port}) + "\n"
        )
    print(f"serving on port {service.port} (metrics on {service.metrics_port})", flush=True)
    await service.serve_until_signal()


SERVICES = {
    # name: (config module and class, builder module and function)
    "generation": ("services.generation.config:GenerationConfig", "services.generation.service:build_generation_service"),
    "critique": ("services.critique.config:CritiqueConfig", "services.critique.service:build_critique_service"),
    "judge": ("services.judge.config:JudgeConfig", "services.judge.service:build_judge_service"),
    "reward": ("services.reward.config:RewardConfig", "services.reward.service:build_reward_service"),
    "trainer": ("services.trainer.config:TrainerConfig", "services.trainer.service:build_trainer_service"),
}


def _load(ref: str):
    import importlib

    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def serve_config(args):
    """The config ``cai serve SERVICE`` runs with: the --config file with the flags laid over it
    *before* its rules are checked, so a field the file leaves out may come from a flag (the
    trainer's --queue in the k8s manifests). Raises ConfigError naming the file and field."""
    from services.config import load_config, validate_config

    config_cls = _load(SERVICES[args.service][0])
    config = load_config(config_cls, args.config, check=False) if args.config else config_cls()
    changes = {}
    if hasattr(config, "engine"):
        changes["engine"] = dataclasses.replace(config.engine, **_set(_engine_overrides(args)))
    elif args.service == "reward":
        changes.update(model=args.model, checkpoint_id=args.checkpoint_id)
    elif args.service == "trainer":
        changes.update(queue=_queue_url(args), work_dir=args.work_dir, reward_base_model=args.model)
    changes["server"] = dataclasses.replace(config.server, **_set(_server_overrides(args)))
    if getattr(args, "constitution", None):
        changes["constitution"] = args.constitution
    if getattr(args, "checkpoint_dir", None):
        changes["checkpoint_dir"] = args.checkpoint_dir
    config = dataclasses.replace(config, **_set(changes))
    validate_config(config, args.config or "command line")
    return config


def cmd_serve(args) -> int:
    from services.config import ConfigError
    from services.constitution import ConstitutionError
    from services.engines import EngineError
    from services.models.registry import ModelNotFound

    build = _load(SERVICES[args.service][1])
    try:
        config = serve_config(args)
    except ConfigError as exc:
        return _fail(str(exc))

    async def main():
        service = await build(config)
        await _serve(service, args.port_file)
        return getattr(service, "exit_code", 0)  # the trainer: 1 when its work loop failed

    try:
        code = asyncio.run(main())
    except (ModelNotFound, EngineError, ConstitutionError, OSError, ValueError) as exc:
        return _fail(str(exc))
    return code


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


# --- cai judge validate / cai constitution diff ----------------------------------------------


async def _with_judge(args, work):
    """Runs ``work(address)`` against --judge ADDR, or an in-process judge on --model."""
    if args.judge:
        return await work(args.judge)
    from services.engines.config import EngineConfig
    from services.pipeline.embedded import EmbeddedSpec, embedded_services

    kwargs = {"model": args.model} if args.model else {}
    spec = EmbeddedSpec(policy=EngineConfig(kind=args.engine or "vllm", **kwargs),
                        constitution=getattr(args, "constitution", None) or "")
    async with embedded_services(spec, ("judge",)) as started:
        return await work(started["judge"])


def _rpc_failure(exc) -> str | None:
    import grpc

    if isinstance(exc, grpc.RpcError):
        return f"judge call failed: {exc.code().name}: {exc.details()}"
    return None


def cmd_judge_validate(args) -> int:
    from services.judge.validate import PairFileError, load_pairs, validate, write_report

    try:
        load_pairs(args.pairs)
    except PairFileError as exc:
        return _fail(str(exc))
    name = args.judge or (args.model or "smollm2-135m-instruct")
    try:
        result = asyncio.run(_with_judge(args, lambda address: validate(
            args.pairs, address, judge=name, seed=args.seed, limit=args.limit, batch_size=args.batch_size,
            principle_id=args.principle or "")))
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    except Exception as exc:
        if (message := _rpc_failure(exc)) is None:
            raise
        return _fail(message)
    files = write_report(result, args.out)
    s, pb = result["summary"], result["summary"]["position_bias"]
    print(f"{s['pairs']} pairs: accuracy {s['accuracy']:.3f}, mean p(correct) {s['mean_p_correct']:.3f}, "
          f"ECE {s['ece']:.3f}; mean p_a chosen first {pb['mean_p_a_chosen_first']:.3f}, chosen second "
          f"{pb['mean_p_a_chosen_second']:.3f}; prefers A {pb['prefers_a']:.3f}, B {pb['prefers_b']:.3f}")
    print(f"wrote {files['json']}, {files['html']}")
    return 0


def cmd_constitution_diff(args) -> int:
    from services.constitution import ConstitutionError, load_constitution
    from services.judge.diff import constitution_diff, judges_in_process, load_comparisons, write_report
    from services.judge.validate import PairFileError

    if bool(args.judge_old) != bool(args.judge_new):
        return _fail("give both --judge-old and --judge-new addresses, or neither")
    try:
        for path in (args.old, args.new):
            load_constitution(path)
        load_comparisons(args.comparisons)
    except ConstitutionError as exc:
        return _fail("\n".join(exc.problems) if exc.problems else str(exc))
    except PairFileError as exc:
        return _fail(str(exc))

    async def main():
        run = lambda old, new: constitution_diff(  # noqa: E731
            args.old, args.new, args.comparisons, old, new, seed=args.seed, swap=not args.no_swap, limit=args.limit)
        if args.judge_old:
            return await run(args.judge_old, args.judge_new)
        async with judges_in_process(args.model or "", args.engine or "vllm", args.old, args.new) as (old, new):
            return await run(old, new)

    try:
        result = asyncio.run(main())
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    except Exception as exc:
        if (message := _rpc_failure(exc)) is None:
            raise
        return _fail(message)
    files = write_report(result, args.out)
    o = result["overall"]
    print(f"{o['comparisons']} comparisons, labels as sampled: agreement {o['agreement']:.3f}, "
          f"mean |dp_a| {o['mean_abs_delta_p_a']:.3f}, {o['flipped']} flipped")
    for r in result["principles"]:
        print(f"  {r['principle_id']} ({r['change']}): agreement {r['agreement']:.3f}, "
              f"mean |dp_a| {r['mean_abs_delta_p_a']:.3f}, {r['flipped']} flipped")
    print(f"wrote {files['json']}, {files['html']}")
    return 0


# --- cai constitution ------------------------------------------------------------------------


def cmd_constitution_check(args) -> int:
    from services.constitution import DEFAULT_CONSTITUTION, ConstitutionError, load_constitution

    args.file = args.file or str(DEFAULT_CONSTITUTION)
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


# --- cai trace ID ---------------------------------------------------------------------------


def cmd_trace(args) -> int:
    from services.trace import TraceError, format_trace, trace

    try:
        found = trace(args.id, args.folders or [], args.queue or "")
    except TraceError as exc:
        print(f"cai trace: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print("\n\n".join(format_trace(f) for f in found))
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
    with open_channel(args.addr) as channel:
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


# --- cai sl-data / train ---------------------------------------------------------------------


def cmd_sl_data(args) -> int:
    from services.config import ConfigError, load_config, replace_config
    from services.pipeline.sl_data import SLDataConfig, produce_sl_data
    from services.prompts import PromptFileError

    try:
        cfg = load_config(SLDataConfig, args.config) if args.config else SLDataConfig()
        cfg = replace_config(
            cfg, prompts=args.prompts, helpfulness=args.helpfulness, rounds=args.rounds,
            limit=args.limit, batch_size=args.batch_size, max_tokens=args.max_tokens, seed=args.seed,
            generation=args.generation, critique=args.critique, constitution=args.constitution,
            split=args.split, eval_fraction=args.eval_fraction,
            policy=replace_config(cfg.policy, model=args.model, kind=args.engine),
        )
    except ConfigError as exc:
        return _fail(str(exc))
    try:
        manifest = asyncio.run(produce_sl_data(cfg, args.out, progress=not args.no_progress))
    except (PromptFileError, ValueError, OSError) as exc:
        return _fail(str(exc))
    except Exception as exc:  # grpc errors from remote services
        import grpc

        if isinstance(exc, grpc.RpcError):
            return _fail(f"service call failed: {exc.code().name}: {exc.details()}")
        raise
    print(f"wrote {args.out}: {manifest['files']}")
    return 0


def cmd_label(args) -> int:
    from services.config import ConfigError, load_config, replace_config
    from services.pipeline.label import LabelConfig, LabelError, run_label
    from services.prompts import PromptFileError
    from services.queue import redact

    def _env_int(name: str) -> int | None:
        text = os.environ.get(name, "").strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} is not a whole number") from None

    try:
        queue = _queue_url(args)
        cfg = load_config(LabelConfig, args.config) if args.config else LabelConfig(queue=queue or "")
        cfg = replace_config(
            cfg, queue=queue, prompts=args.prompts, helpfulness_pairs=args.helpfulness_pairs,
            samples_per_prompt=args.samples, pairs=args.pairs, limit=args.limit,
            batch_size=args.batch_size, max_tokens=args.max_tokens, mode=args.mode,
            swap_debias=False if args.no_swap else None, seed=args.seed,
            generation=args.generation, judge=args.judge, constitution=args.constitution,
            metrics_port=args.metrics_port, in_flight=args.in_flight,
            # an Indexed Job's pod: its completion index is its shard; CAI_NUM_SHARDS = completions
            shard_index=args.shard_index if args.shard_index is not None else _env_int("JOB_COMPLETION_INDEX"),
            num_shards=args.num_shards if args.num_shards is not None else _env_int("CAI_NUM_SHARDS"),
            policy=replace_config(cfg.policy, model=args.model, kind=args.engine),
        )
    except ConfigError as exc:
        return _fail(str(exc))
    except ValueError as exc:
        return _fail(f"label: {exc}")
    try:
        stats = asyncio.run(run_label(cfg, progress=not args.no_progress))
    except LabelError as exc:
        return _fail(f"label: {exc}")
    except (PromptFileError, ValueError, OSError) as exc:
        return _fail(str(exc))
    except Exception as exc:
        import grpc

        from services.queue import QueueError

        if isinstance(exc, grpc.RpcError):
            return _fail(f"service call failed: {exc.code().name}: {exc.details()}")
        if isinstance(exc, QueueError):
            return _fail(str(exc))
        raise
    print(f"published {stats['comparisons_published']} labeled comparisons "
          f"({stats['comparisons_per_second']:.2f}/s) and {stats['helpfulness_published']} helpfulness "
          f"comparisons to {redact(cfg.queue)}; {stats['prompts_skipped_as_done']} of shard "
          f"{cfg.shard_index}/{cfg.num_shards}'s {stats['prompts']} prompts were already done")
    return 0


def cmd_eval(args) -> int:
    import json

    from services.engines.config import EngineConfig
    from services.pipeline.embedded import EmbeddedServices
    from services.pipeline.evaluate import EvalConfig, evaluate
    from services.prompts import EVAL, HELPFULNESS, RED_TEAM, PromptFileError, load_prompts, split_prompts, split_record

    policies = {}
    for item in args.policy:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            return _fail(f"--policy {item!r}: expected NAME=PATH")
        policies[name] = path
    if len(policies) < 2:
        return _fail("give at least two --policy NAME=PATH to compare")
    if args.split != EVAL and not args.allow_train_prompts:
        return _fail(f"--split {args.split} includes prompts the training commands use by default; evaluating on "
                     "them flatters the policies (pass --allow-train-prompts to do it anyway)")
    if args.samples < 1:
        return _fail("--samples must be at least 1")
    files = {"red_team": args.red_team or str(RED_TEAM), "helpfulness": args.helpfulness or str(HELPFULNESS)}
    try:
        sets = {name: split_prompts(load_prompts(path), args.split, args.eval_fraction)[: args.prompts]
                for name, path in files.items()}
    except (PromptFileError, ValueError) as exc:
        return _fail(str(exc))
    for name, prompts in sets.items():
        if not prompts:
            return _fail(f"{files[name]}: no prompts in the {args.split} part of the split "
                         f"(eval fraction {args.eval_fraction})")
    cfg = EvalConfig(max_tokens=args.max_tokens, seed=args.seed, samples=args.samples, bootstrap=args.bootstrap,
                     refusal_principle=args.refusal_principle)
    judge_model = args.eval_judge_model
    constitution = args.eval_constitution or ""

    async def main():
        reward_service = None
        addresses = {"reward": args.reward or ""}
        if args.reward_model and not args.reward:
            from services.common.server import ServerConfig
            from services.reward.config import RewardConfig
            from services.reward.service import build_reward_service

            reward_service = await build_reward_service(RewardConfig(
                model=args.reward_model, server=ServerConfig(host="127.0.0.1", port=0, metrics_port=-1)))
            await reward_service.start()
            addresses["reward"] = f"127.0.0.1:{reward_service.port}"
        try:
            if args.generation:
                return await evaluate(policies, sets, {**addresses, "generation": args.generation, "judge": args.judge}, cfg)
            first = next(iter(policies.values()))
            kind = args.engine or "vllm"
            async with EmbeddedServices(constitution) as embedded:  # one engine per policy, started once
                generation = {name: await embedded.address("generation", EngineConfig(model=path, kind=kind))
                              for name, path in policies.items()}  # no LoadCheckpoint swaps
                judge = await embedded.address("judge", EngineConfig(model=judge_model or first, kind=kind))
                return await evaluate(policies, sets, {**addresses, "generation": generation, "judge": judge}, cfg)
        finally:
            if reward_service is not None:
                await reward_service.stop(grace=2)

    if bool(args.generation) != bool(args.judge):
        return _fail("give both --generation and --judge addresses, or neither")
    results = asyncio.run(main())
    results["split"] = split_record(files, args.split, args.eval_fraction)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    ci = lambda x: f"[{x[0]:.2f}, {x[1]:.2f}]"  # noqa: E731
    for pair in results["pairs"]:
        for s in sets:
            print(f"{s}: win rate of {pair['a']} over {pair['b']} {pair[s]['win_rate_a']:.2f} "
                  f"(95% CI {ci(pair[s]['ci95'])}, {pair[s]['comparisons']} comparisons)")
    for name, v in results["policies"].items():
        refusal = ", ".join(f"{s} {r['rate']:.2f} {ci(r['ci95'])}" for s, r in v["refusal"].items())
        over = ", ".join(f"{s} {r['rate']:.2f} {ci(r['ci95'])} on {r['prompts']} prompts"
                         for s, r in v.get("over_refusal", {}).items())
        print(f"{name}: refusal rate {refusal}; over-refusal (benign bait prompts) {over or 'n/a'}; "
              f"reward {v['reward_mean'] or 'n/a'}")
    print(f"refusals decided by: {results['refusal_method']}")
    judge = results.get("judge", {})
    print(f"judge: {judge.get('model', '?')} under {judge.get('constitution_file', '?')} "
          f"({judge.get('constitution_sha256', '')[:12]})")
    if results["judge_same_constitution_as_training"]:
        print("note: the evaluation judge uses the constitution the policies were trained under; win rates are "
              "not independent of training (use --eval-constitution / --eval-judge-model for an independent judge)")
    print(f"wrote {args.out}")
    return 0


def _sft_rounds(text: str) -> int:
    """``--rounds``: N (revisions of rounds 1..N) or ``all`` (0)."""
    if text.strip().lower() == "all":
        return 0
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a round number or 'all', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a round number of 1 or more, or 'all', got {text!r}")
    return n


def cmd_train_sft(args) -> int:
    from services.config import ConfigError, replace_config
    from services.trainer.sft_config import SFTRunConfig

    try:
        cfg = replace_config(
            SFTRunConfig(data=args.data, out=args.out), model=args.model, rounds=args.rounds,
            include_flagged=args.include_flagged or None,
            lora=args.lora or None, epochs=args.epochs, max_steps=args.max_steps,
            learning_rate=args.learning_rate, batch_size=args.batch_size,
        )
    except ConfigError as exc:
        return _fail(str(exc))
    from services.trainer.sft_trainer import train_sft

    try:
        out = train_sft(cfg)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    print(f"wrote SFT checkpoint {out}")
    return 0


# --- cai run ---------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from services.pipeline.run import run_main

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
    helps = {
        "generation": "the generation service (cai.v1.Generation)",
        "critique": "the critique service (cai.v1.Critique)",
        "judge": "the judge service (cai.v1.Judge): soft preference labels",
        "reward": "the reward service (cai.v1.Reward): scores answers with the reward model",
        "trainer": "the trainer (cai.v1.Trainer): consumes the queue, trains reward model and policy",
    }
    for name in SERVICES:
        p = serve.add_parser(name, help=helps[name])
        p.add_argument("--config", help="YAML file with the service's sections (engine, server, limits, ...)")
        p.add_argument("--model", help="model folder, hub id or packaged name (trainer: the reward model's base)")
        if name == "trainer":
            p.add_argument("--queue", help="sqlite:///path.db or redis://host:port/db")
            p.add_argument("--queue-file", help=QUEUE_FILE_HELP)
            p.add_argument("--work-dir", help="folder for training data and checkpoints")
        else:
            p.add_argument("--checkpoint-id", help="id reported for the initial checkpoint")
        if name in ("generation", "reward"):
            p.add_argument("--checkpoint-dir", help="LoadCheckpoint loads only from under this folder and records "
                           "the promoted checkpoint there (a restart serves it); without it, only a loopback "
                           "server accepts LoadCheckpoint")
        if name not in ("reward", "trainer"):
            p.add_argument("--engine", choices=["vllm", "transformers"], help="inference engine (default vllm)")
        if name in ("critique", "judge"):
            p.add_argument("--constitution", help="constitution file (default constitutions/default.yaml)")
        p.add_argument("--host", help="listen address (default 0.0.0.0)")
        p.add_argument("--port", type=int, help="gRPC port (0 picks one)")
        p.add_argument("--metrics-port", type=int, help="Prometheus port (-1 off, 0 picks one)")
        p.add_argument("--tls-cert-file", help="PEM certificate chain: serve gRPC over TLS")
        p.add_argument("--tls-key-file", help="PEM private key (with --tls-cert-file)")
        p.add_argument("--tls-client-ca-file",
                       help="PEM CA bundle: require client certificates signed by it (mutual TLS; with --tls-cert-file)")
        p.add_argument("--tls-allowed-client-name", action="append", metavar="NAME",
                       help="a client certificate name (SAN or CN) allowed to call LoadCheckpoint; repeat for "
                            "several (default: every client; needs --tls-client-ca-file)")
        p.add_argument("--port-file", help="write the bound ports as JSON to this file once serving")
        p.set_defaults(func=cmd_serve)

    sl = sub.add_parser("sl-data", help="make the SL-CAI dataset through the services")
    sl.add_argument("--prompts", help="red-team prompts, JSONL or a local dataset folder (default: shipped)")
    sl.add_argument("--helpfulness", help="helpfulness prompts (default: shipped; '' for none)")
    sl.add_argument("--out", required=True, help="dataset folder (re-run to resume)")
    sl.add_argument("--rounds", type=int, help="critique/revision rounds (default 4)")
    sl.add_argument("--limit", type=int, help="only the first N prompts of each file")
    sl.add_argument("--batch-size", type=int)
    sl.add_argument("--max-tokens", type=int)
    sl.add_argument("--seed", type=int)
    sl.add_argument("--generation", help="generation service address (default: start one in-process)")
    sl.add_argument("--critique", help="critique service address (default: start one in-process)")
    sl.add_argument("--model", help="policy for the in-process services")
    sl.add_argument("--engine", choices=["vllm", "transformers"])
    sl.add_argument("--constitution", help="constitution for the in-process critique service")
    sl.add_argument("--split", choices=["train", "eval", "all"],
                    help="part of the prompt split to use (default train: the eval part stays held out)")
    sl.add_argument("--eval-fraction", type=float, help="share of prompts in the eval part (default 0.2)")
    sl.add_argument("--config", help="YAML with the same settings")
    sl.add_argument("--no-progress", action="store_true", help="no progress bar")
    sl.set_defaults(func=cmd_sl_data)

    lab = sub.add_parser("label", help="label comparisons with the judge and publish them to the queue")
    lab.add_argument("--queue", help="sqlite:///path.db or redis://host:port/db")
    lab.add_argument("--queue-file", help=QUEUE_FILE_HELP)
    lab.add_argument("--prompts", help="prompts to answer and compare (default: shipped red-team prompts)")
    lab.add_argument("--helpfulness-pairs", help="helpfulness preference pairs to mix in ('' for none)")
    lab.add_argument("--samples", type=int, help="answers per prompt (default 2)")
    lab.add_argument("--pairs", choices=["adjacent", "all"])
    lab.add_argument("--limit", type=int, help="only the first N prompts")
    lab.add_argument("--batch-size", type=int)
    lab.add_argument("--max-tokens", type=int)
    lab.add_argument("--mode", choices=["logprob", "chain-of-thought"])
    lab.add_argument("--no-swap", action="store_true", help="judge each pair in one order only")
    lab.add_argument("--seed", type=int)
    lab.add_argument("--generation", help="generation service address (default: start one in-process)")
    lab.add_argument("--judge", help="judge service address (default: start one in-process)")
    lab.add_argument("--model", help="policy (and judge) model for the in-process services")
    lab.add_argument("--engine", choices=["vllm", "transformers"])
    lab.add_argument("--constitution", help="constitution for the in-process judge")
    lab.add_argument("--metrics-port", type=int, help="serve this job's Prometheus metrics on this port")
    lab.add_argument("--in-flight", type=int, help="batches worked on at once (default 4; 1: sequential)")
    lab.add_argument("--shard-index", type=int,
                     help="this worker's shard of the prompts (default: $JOB_COMPLETION_INDEX, else 0)")
    lab.add_argument("--num-shards", type=int,
                     help="workers the prompts are split across (default: $CAI_NUM_SHARDS, else 1)")
    lab.add_argument("--config", help="YAML with the same settings")
    lab.add_argument("--no-progress", action="store_true")
    lab.set_defaults(func=cmd_label)

    ev = sub.add_parser("eval", help="compare policies on held-out prompts (judge win rates, reward, refusals)")
    ev.add_argument("--policy", action="append", required=True, metavar="NAME=PATH", help="a policy (twice or more)")
    ev.add_argument("--reward-model", help="reward-model folder (scored in-process)")
    ev.add_argument("--reward", help="reward service address instead of --reward-model")
    ev.add_argument("--eval-judge-model", "--judge-model", dest="eval_judge_model",
                    help="evaluation judge model for the in-process judge (default: the first policy); "
                         "a model other than the training judge makes the win rates independent of training")
    ev.add_argument("--generation", help="generation service address (default: in-process)")
    ev.add_argument("--judge", help="judge service address (default: in-process)")
    ev.add_argument("--engine", choices=["vllm", "transformers"])
    ev.add_argument("--eval-constitution", "--constitution", dest="eval_constitution",
                    help="constitution of the in-process evaluation judge (default: the shipped one)")
    ev.add_argument("--red-team", help="harmlessness prompts (JSONL; its eval part is used)")
    ev.add_argument("--helpfulness", help="helpfulness prompts (JSONL; its eval part is used)")
    ev.add_argument("--split", choices=["eval", "train", "all"], default="eval",
                    help="part of the prompt split to evaluate on (train/all need --allow-train-prompts)")
    ev.add_argument("--eval-fraction", type=float, default=0.2, help="share of prompts in the eval part")
    ev.add_argument("--allow-train-prompts", action="store_true",
                    help="evaluate on prompts the training commands use (results flatter the policies)")
    ev.add_argument("--prompts", type=int, default=16, help="at most this many held-out prompts per set")
    ev.add_argument("--samples", type=int, default=4, help="answers per prompt and policy")
    ev.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the 95%% intervals")
    ev.add_argument("--refusal-principle", default="judge-no-needless-refusal",
                    help="judging principle under which the judge decides refusals ('' for the regex)")
    ev.add_argument("--max-tokens", type=int, default=64)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default="eval.json")
    ev.set_defaults(func=cmd_eval)

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="train_command", required=True)
    sft = train.add_parser("sft", help="supervised fine-tuning on SL-CAI data (TRL)")
    sft.add_argument("--data", required=True, help="folder written by cai sl-data")
    sft.add_argument("--model", help="policy to fine-tune (default smollm2-135m-instruct)")
    sft.add_argument("--out", required=True, help="checkpoint folder")
    sft.add_argument("--rounds", type=_sft_rounds, metavar="N|all",
                     help="SL-CAI-n: the revisions of rounds 1..N, or all (default: all)")
    sft.add_argument("--include-flagged", action="store_true",
                     help="also train on rows cai sl-data marked (truncated, scaffold leaks, failed rounds)")
    sft.add_argument("--lora", action="store_true", help="train LoRA adapters (merged on save)")
    sft.add_argument("--epochs", type=float)
    sft.add_argument("--max-steps", type=int)
    sft.add_argument("--learning-rate", type=float)
    sft.add_argument("--batch-size", type=int)
    sft.set_defaults(func=cmd_train_sft)

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

    jud = sub.add_parser("judge", help="the judge").add_subparsers(dest="judge_command", required=True)
    val = jud.add_parser("validate", help="check a judge on labelled pairs: accuracy, calibration, position bias")
    val.add_argument("--pairs", required=True, help="JSONL of prompt/chosen/rejected (TRL preference format)")
    val.add_argument("--judge", help="judge service address (default: start one in-process)")
    val.add_argument("--model", help="judge model for the in-process judge (default smollm2-135m-instruct)")
    val.add_argument("--engine", choices=["vllm", "transformers"], help="engine of the in-process judge")
    val.add_argument("--constitution", help="constitution for the in-process judge")
    val.add_argument("--principle", help="judge every pair under this principle id (default: sampled per pair)")
    val.add_argument("--seed", type=int, default=0)
    val.add_argument("--limit", type=int, default=0, help="only the first N pairs")
    val.add_argument("--batch-size", type=int, default=32, help="pairs per Compare request")
    val.add_argument("--out", default="judge-validation", help="folder for validation.json/.html and the plot")
    val.set_defaults(func=cmd_judge_validate)

    con = sub.add_parser("constitution", help="constitution files").add_subparsers(dest="con_command", required=True)
    check = con.add_parser("check", help="validate a constitution file")
    check.add_argument("file", nargs="?", help="constitution YAML (default: the shipped default.yaml)")
    check.set_defaults(func=cmd_constitution_check)
    cdiff = con.add_parser("diff", help="relabel fixed comparisons under two constitutions; the impact per principle")
    cdiff.add_argument("old", help="the constitution before")
    cdiff.add_argument("new", help="the constitution after")
    cdiff.add_argument("--comparisons", required=True,
                       help="JSONL of comparisons (prompt, answer_a, answer_b) or TRL pairs (prompt, chosen, rejected)")
    cdiff.add_argument("--model", help="judge model for the in-process judges (default smollm2-135m-instruct)")
    cdiff.add_argument("--engine", choices=["vllm", "transformers"])
    cdiff.add_argument("--judge-old", help="address of a judge serving OLD (with --judge-new; default in-process)")
    cdiff.add_argument("--judge-new", help="address of a judge serving NEW, the same model")
    cdiff.add_argument("--seed", type=int, default=0)
    cdiff.add_argument("--no-swap", action="store_true", help="judge each pair in one order only")
    cdiff.add_argument("--limit", type=int, default=0, help="only the first N comparisons")
    cdiff.add_argument("--out", default="constitution-diff", help="folder for diff.json/.html and the plot")
    cdiff.set_defaults(func=cmd_constitution_diff)

    genc = sub.add_parser("generate", help="call a generation service")
    genc.add_argument("prompt", nargs="+")
    genc.add_argument("--addr", default="127.0.0.1:50051")
    genc.add_argument("-n", type=int, default=1)
    genc.add_argument("--max-tokens", type=int, default=128)
    genc.add_argument("--temperature", type=float, default=1.0)
    genc.add_argument("--seed", type=int)
    genc.add_argument("--timeout", type=float, default=120.0)
    genc.set_defaults(func=cmd_generate)

    tr = sub.add_parser("trace", help="where a label or SFT row came from: constitution sentence, judge, prompt line")
    tr.add_argument("id", help="a comparison id (or a prefix of 8+ characters), or PROMPT_ID/rN for an SFT row")
    tr.add_argument("--in", dest="folders", action="append", metavar="DIR",
                    help="a run folder, the trainer's work folder or an sl_data folder (repeatable)")
    tr.add_argument("--queue", default="", help="also search this queue (sqlite:///... or redis://...)")
    tr.add_argument("--json", action="store_true", help="print JSON")
    tr.set_defaults(func=cmd_trace)

    protos = sub.add_parser("protos", help="regenerate the gRPC code from protos/")
    protos.add_argument("--check", action="store_true", help="only check it is fresh")
    protos.set_defaults(func=cmd_protos)

    from services.k8s.cli import add_parser as add_k8s_parser

    add_k8s_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
