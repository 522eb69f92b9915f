"""``cai judge validate``: check a judge on labelled pairs."""

from __future__ import annotations

import asyncio

from services.cli._common import _fail


async def _with_judge(args, work):
    """Runs ``work(address)`` against --judge ADDR, or an in-process judge on --model."""
    from services.engines.config import EngineConfig
    from services.pipeline.embedded import EmbeddedSpec, services_at

    kwargs = {"model": args.model} if args.model else {}
    spec = EmbeddedSpec(
        policy=EngineConfig(kind=args.engine or "vllm", **kwargs),
        constitution=getattr(args, "constitution", None) or "",
    )
    async with services_at({"judge": args.judge or ""}, spec) as addresses:
        return await work(addresses["judge"])


def _rpc_failure(exc) -> str | None:
    import grpc

    if isinstance(exc, grpc.RpcError):
        return f"judge call failed: {exc.code().name}: {exc.details()}"
    return None


def _judged(coro):
    """``asyncio.run(coro)``: ``(result, 0)``, or ``(None, 2)`` once the input or judge failure is said."""
    try:
        return asyncio.run(coro), 0
    except (ValueError, OSError) as exc:
        return None, _fail(str(exc))
    except Exception as exc:
        if (message := _rpc_failure(exc)) is None:
            raise
        return None, _fail(message)


def cmd_judge_validate(args) -> int:
    from services.judge.validate import load_pairs, validate, write_report

    load_pairs(args.pairs)  # a PairFileError reaches the CLI's error boundary
    name = args.judge or (args.model or "smollm2-135m-instruct")
    result, code = _judged(
        _with_judge(
            args,
            lambda address: validate(
                args.pairs,
                address,
                judge=name,
                seed=args.seed,
                limit=args.limit,
                batch_size=args.batch_size,
                principle_id=args.principle or "",
            ),
        )
    )
    if result is None:
        return code
    files = write_report(result, args.out)
    s, pb = result["summary"], result["summary"]["position_bias"]
    print(
        f"{s['pairs']} pairs: accuracy {s['accuracy']:.3f}, mean p(correct) {s['mean_p_correct']:.3f}, "
        f"ECE {s['ece']:.3f}; mean p_a chosen first {pb['mean_p_a_chosen_first']:.3f}, chosen second "
        f"{pb['mean_p_a_chosen_second']:.3f}; prefers A {pb['prefers_a']:.3f}, B {pb['prefers_b']:.3f}"
    )
    print(f"wrote {files['json']}, {files['html']}")
    return 0


def add_parser(sub) -> None:
    """Registers the command on the ``cai`` parser's subparsers."""
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


run = cmd_judge_validate
