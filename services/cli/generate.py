"""``cai generate``: call a generation service."""

from __future__ import annotations

from services.cli._common import _fail
from services.common.channels import open_channel


def cmd_generate(args) -> int:
    import grpc

    from services.api.cai.v1 import common_pb2, generation_pb2, generation_pb2_grpc

    sampling = common_pb2.SamplingParams(n=args.n, max_tokens=args.max_tokens, temperature=args.temperature)
    if args.seed is not None:
        sampling.seed = args.seed
    request = generation_pb2.GenerateRequest(
        prompts=[
            common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content=p)]) for p in args.prompt
        ],
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


def add_parser(sub) -> None:
    """Registers the command on the ``cai`` parser's subparsers."""
    genc = sub.add_parser("generate", help="call a generation service")
    genc.add_argument("prompt", nargs="+")
    genc.add_argument("--addr", default="127.0.0.1:50051")
    genc.add_argument("-n", type=int, default=1)
    genc.add_argument("--max-tokens", type=int, default=128)
    genc.add_argument("--temperature", type=float, default=1.0)
    genc.add_argument("--seed", type=int)
    genc.add_argument("--timeout", type=float, default=120.0)
    genc.set_defaults(func=cmd_generate)


run = cmd_generate
