"""``cai eval``: compare policies on held-out prompts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from services.cli._common import _fail
from services.cli._config_flags import add_config_flags, load_with_flags
from services.pipeline.evaluate import EvalConfig


def cmd_eval(args) -> int:

    from services.engines.config import EngineConfig
    from services.pipeline.embedded import EmbeddedServices
    from services.pipeline.evaluate import evaluate
    from services.prompts import EVAL, HELPFULNESS, RED_TEAM, load_prompts, split_prompts, split_record

    policies = {}
    for item in args.policy:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            return _fail(f"--policy {item!r}: expected NAME=PATH")
        policies[name] = path
    if len(policies) < 2:
        return _fail("give at least two --policy NAME=PATH to compare")
    cfg = load_with_flags(EvalConfig, args, args.config)  # a ConfigError reaches the CLI's error boundary
    if cfg.split != EVAL and not args.allow_train_prompts:
        return _fail(
            f"--split {cfg.split} includes prompts the training commands use by default; evaluating on "
            "them flatters the policies (pass --allow-train-prompts to do it anyway)"
        )
    files = {"red_team": args.red_team or str(RED_TEAM), "helpfulness": args.helpfulness or str(HELPFULNESS)}
    try:
        sets = {
            name: split_prompts(load_prompts(path), cfg.split, cfg.eval_fraction)[: cfg.prompts]
            for name, path in files.items()
        }
    except ValueError as exc:  # a PromptFileError too (it is a ValueError)
        return _fail(str(exc))
    for name, prompts in sets.items():
        if not prompts:
            return _fail(
                f"{files[name]}: no prompts in the {cfg.split} part of the split (eval fraction {cfg.eval_fraction})"
            )
    judge_model = args.eval_judge_model
    constitution = args.eval_constitution or ""

    async def main():
        reward_service = None
        addresses = {"reward": args.reward or ""}
        if args.reward_model and not args.reward:
            from services.pipeline.embedded import start_reward_here

            reward_service, addresses["reward"] = await start_reward_here(args.reward_model)
        try:
            if args.generation:
                return await evaluate(
                    policies, sets, {**addresses, "generation": args.generation, "judge": args.judge}, cfg
                )
            first = next(iter(policies.values()))
            kind = args.engine or "vllm"
            async with EmbeddedServices(constitution) as embedded:  # one engine per policy, started once
                generation = {
                    name: await embedded.address("generation", EngineConfig(model=path, kind=kind))
                    for name, path in policies.items()
                }  # no LoadCheckpoint swaps
                judge = await embedded.address("judge", EngineConfig(model=judge_model or first, kind=kind))
                return await evaluate(policies, sets, {**addresses, "generation": generation, "judge": judge}, cfg)
        finally:
            if reward_service is not None:
                await reward_service.stop(grace=2)

    if bool(args.generation) != bool(args.judge):
        return _fail("give both --generation and --judge addresses, or neither")
    results = asyncio.run(main())
    results["split"] = split_record(files, cfg.split, cfg.eval_fraction)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    ci = lambda x: f"[{x[0]:.2f}, {x[1]:.2f}]"  # noqa: E731
    for pair in results["pairs"]:
        for s in sets:
            print(
                f"{s}: win rate of {pair['a']} over {pair['b']} {pair[s]['win_rate_a']:.2f} "
                f"(95% CI {ci(pair[s]['ci95'])}, {pair[s]['comparisons']} comparisons)"
            )
    for name, v in results["policies"].items():
        refusal = ", ".join(f"{s} {r['rate']:.2f} {ci(r['ci95'])}" for s, r in v["refusal"].items())
        over = ", ".join(
            f"{s} {r['rate']:.2f} {ci(r['ci95'])} on {r['prompts']} prompts"
            for s, r in v.get("over_refusal", {}).items()
        )
        print(
            f"{name}: refusal rate {refusal}; over-refusal (benign bait prompts) {over or 'n/a'}; "
            f"reward {v['reward_mean'] or 'n/a'}"
        )
    print(f"refusals decided by: {results['refusal_method']}")
    judge = results.get("judge", {})
    print(
        f"judge: {judge.get('model', '?')} under {judge.get('constitution_file', '?')} "
        f"({judge.get('constitution_sha256', '')[:12]})"
    )
    if results["judge_same_constitution_as_training"]:
        print(
            "note: the evaluation judge uses the constitution the policies were trained under; win rates are "
            "not independent of training (use --eval-constitution / --eval-judge-model for an independent judge)"
        )
    print(f"wrote {args.out}")
    return 0


def add_parser(sub) -> None:
    """Registers the command on the ``cai`` parser's subparsers."""
    ev = sub.add_parser("eval", help="compare policies on held-out prompts (judge win rates, reward, refusals)")
    ev.add_argument("--policy", action="append", required=True, metavar="NAME=PATH", help="a policy (twice or more)")
    ev.add_argument("--reward-model", help="reward-model folder (scored in-process)")
    ev.add_argument("--reward", help="reward service address instead of --reward-model")
    ev.add_argument(
        "--eval-judge-model",
        "--judge-model",
        dest="eval_judge_model",
        help="evaluation judge model for the in-process judge (default: the first policy); "
        "a model other than the training judge makes the win rates independent of training",
    )
    ev.add_argument("--generation", help="generation service address (default: in-process)")
    ev.add_argument("--judge", help="judge service address (default: in-process)")
    ev.add_argument("--engine", choices=["vllm", "transformers"])
    ev.add_argument(
        "--eval-constitution",
        "--constitution",
        dest="eval_constitution",
        help="constitution of the in-process evaluation judge (default: the shipped one)",
    )
    ev.add_argument("--red-team", help="harmlessness prompts (JSONL; its eval part is used)")
    ev.add_argument("--helpfulness", help="helpfulness prompts (JSONL; its eval part is used)")
    ev.add_argument(
        "--allow-train-prompts",
        action="store_true",
        help="evaluate on prompts the training commands use (results flatter the policies)",
    )
    ev.add_argument("--out", default="eval.json")
    ev.add_argument("--config", help="YAML with the evaluation settings below")
    # One flag per EvalConfig field (help: the field's docstring): --prompts, --samples, --max-tokens, ...
    add_config_flags(ev, EvalConfig, choices={"split": ["eval", "train", "all"]})
    ev.set_defaults(func=cmd_eval)


run = cmd_eval
