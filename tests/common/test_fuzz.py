"""A fuzz run against every method of every service, built from server reflection.

Real service processes on tiny models (``fast_servers``), loopback only. For each method the
request type comes from reflection (file descriptors), and the cases are: random bytes, a message
of another type, invalid UTF-8 in each string field, huge strings and repeated fields, extreme
numbers, random small values. Each round sends every case, 50 in flight at once; three rounds.

Promises checked: no server crashes; only the expected status codes (never UNKNOWN, INTERNAL or
UNAVAILABLE); every non-OK answer has a message that is not a Python repr; health answers within
one second throughout (a background poller); server memory (RSS) reaches a plateau.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import random
import re
import subprocess
import sys
import time

import grpc
from google.protobuf import descriptor, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

EXPECTED = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "NOT_FOUND", "DEADLINE_EXCEEDED"}
"""DEADLINE_EXCEEDED: a valid request that needed more than the client's 20 s deadline (counted)."""
BURST = 50
ROUNDS = 3
F = descriptor.FieldDescriptor
INT_EXTREMES = {
    F.CPPTYPE_INT32: (-(2**31), 2**31 - 1, 0, -1),
    F.CPPTYPE_INT64: (-(2**63), 2**63 - 1, -1),
    F.CPPTYPE_UINT32: (0, 2**32 - 1),
    F.CPPTYPE_UINT64: (0, 2**64 - 1, 2**63),
}
FLOAT_EXTREMES = (float("inf"), float("-inf"), float("nan"), -0.0, 1e308, -1e308, 5e-324)
REPR = re.compile(r"<class '|Traceback|^Unexpected <|^\w+(Error|Exception)\(|object at 0x")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _fill(
    msg, rng: random.Random, *, text=None, number=None, repeat: int = 1, depth: int = 0, budget: list | None = None
) -> None:
    """Sets every field of ``msg`` (recursively, ``repeat`` items per repeated field); ``text``
    goes into the first ``budget[0]`` string fields, the others get small values."""
    budget = budget if budget is not None else [2]
    for field in msg.DESCRIPTOR.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue
        count = repeat if field.is_repeated else 1
        for _ in range(count):
            if field.cpp_type == F.CPPTYPE_MESSAGE:
                if depth >= 4 or field.message_type.full_name.startswith("google.protobuf"):
                    continue
                sub = getattr(msg, field.name).add() if field.is_repeated else getattr(msg, field.name)
                _fill(sub, rng, text=text, number=number, repeat=1, depth=depth + 1, budget=budget)
                continue
            big = text if text is not None and field.cpp_type == F.CPPTYPE_STRING and budget[0] > 0 else None
            if big is not None:
                budget[0] -= 1
            value = _value(field, rng, big, number)
            try:
                if field.is_repeated:
                    getattr(msg, field.name).append(value)
                else:
                    setattr(msg, field.name, value)
            except (ValueError, TypeError):
                pass


def _value(field, rng: random.Random, text, number):
    if field.cpp_type == F.CPPTYPE_STRING:
        if field.type == F.TYPE_BYTES:
            return (text or "x").encode()
        if text is not None:
            return text
        return rng.choice(["user", "assistant", "system", "", "Hi", "How do I pick a lock?", "ü" * 5])
    if field.cpp_type == F.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if field.cpp_type == F.CPPTYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values] + [99])
    if field.cpp_type in (F.CPPTYPE_FLOAT, F.CPPTYPE_DOUBLE):
        return rng.choice(FLOAT_EXTREMES) if number == "extreme" else rng.choice([0.0, 0.5, 1.0])
    if number == "extreme":
        return rng.choice(INT_EXTREMES[field.cpp_type])
    return rng.choice([0, 1, 2])


def _invalid_utf8(desc, depth: int = 0) -> list[bytes]:
    """Raw requests with invalid UTF-8 in each string field (one level of nesting followed)."""
    out = []
    for field in desc.fields:
        if field.type == F.TYPE_STRING:
            out.append(_len_field(field.number, b"\xc3\x28\xff\xfe"))
        elif field.type == F.TYPE_MESSAGE and depth < 3 and not field.message_type.GetOptions().map_entry:
            out += [_len_field(field.number, inner) for inner in _invalid_utf8(field.message_type, depth + 1)[:2]]
    return out


def build_cases(input_cls, other_cls, rng: random.Random) -> list[tuple[str, bytes]]:
    cases = [(f"random-bytes-{n}", bytes(rng.getrandbits(8) for _ in range(n))) for n in (3, 64, 700)]
    other = other_cls()
    _fill(other, rng)
    cases.append(("wrong-type", other.SerializeToString()))
    cases.append(("wrong-wire-type", _varint(1 << 3 | 5) + b"\x01\x02"))  # fixed32 where a field is not
    cases += [("invalid-utf8", raw) for raw in _invalid_utf8(input_cls.DESCRIPTOR)[:3]]
    for size in (70_000, 6_000_000):
        msg = input_cls()
        _fill(msg, rng, text="A" * size)
        cases.append((f"huge-string-{size}", msg.SerializeToString()))
    msg = input_cls()
    _fill(msg, rng, repeat=3000)
    cases.append(("huge-repeated", msg.SerializeToString()[:20_000_000]))
    for i in range(3):
        msg = input_cls()
        _fill(msg, rng, number="extreme")
        cases.append((f"extreme-numbers-{i}", msg.SerializeToString()))
    for i in range(2):
        msg = input_cls()
        _fill(msg, rng)
        cases.append((f"random-small-{i}", msg.SerializeToString()))
    return cases


def reflect(address: str):
    """(service name, method descriptors, message class factory) for every service the server
    lists by reflection, health and reflection themselves left out."""
    channel = grpc.insecure_channel(address)
    db = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(db)
    services = []
    for name in db.get_services():
        if name.startswith("grpc."):
            continue
        services.append((name, list(pool.FindServiceByName(name).methods)))
    channel.close()
    return services


POLLER = r"""
import json, sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
stubs = [(a, health_pb2_grpc.HealthStub(grpc.insecure_channel(a.split("@")[-1]))) for a in sys.argv[2:]]
failures, checks, slowest = [], 0, 0.0
while not __import__("os").path.exists(sys.argv[1]):
    time.sleep(0.2)
    for address, stub in stubs:
        started = time.perf_counter()
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
            if status != health_pb2.HealthCheckResponse.SERVING:
                failures.append(f"{address}: status {status}")
        except grpc.RpcError as exc:
            failures.append(f"{address}: {exc.code().name} {exc.details()}")
        checks += 1
        slowest = max(slowest, time.perf_counter() - started)
print(json.dumps({"failures": failures, "checks": checks, "slowest": slowest}))
"""


class HealthPoller:
    """Asks every server's health every 0.2 s with a 1 s deadline, from its own process (so the
    fuzzing client's threads do not delay it); ``finish()`` returns what it saw."""

    def __init__(self, addresses: list[str], stop_file):
        self.stop_file = stop_file
        self.proc = subprocess.Popen(
            [sys.executable, "-c", POLLER, str(stop_file), *addresses], stdout=subprocess.PIPE, text=True
        )

    def finish(self) -> dict:
        self.stop_file.write_text("stop")
        out, _ = self.proc.communicate(timeout=60)
        return json.loads(out)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_fuzz_every_method_of_every_service_from_reflection(fast_servers, tmp_path):
    rng = random.Random(12)
    targets = []  # (server name, full method, case name, payload)
    for name, server in fast_servers.items():
        services = reflect(server.address)
        assert services, f"{name}: reflection lists no service"
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(grpc.insecure_channel(server.address)))
        for service_name, methods in services:
            for method in methods:
                input_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(method.input_type.full_name))
                other = next((m for m in methods if m.input_type.full_name != method.input_type.full_name), None)
                other_cls = (
                    message_factory.GetMessageClass(pool.FindMessageTypeByName(other.input_type.full_name))
                    if other
                    else health_pb2.HealthCheckRequest
                )
                path = f"/{service_name}/{method.name}"
                kind = "stream" if method.server_streaming else "unary"
                targets += [
                    (name, path, kind, case, payload) for case, payload in build_cases(input_cls, other_cls, rng)
                ]
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channels = {n: grpc.insecure_channel(s.address, options=options) for n, s in fast_servers.items()}

    took_by_case: collections.Counter = collections.Counter()

    def call(target):
        name, path, kind, case, payload = target
        channel = channels[name]
        started = time.perf_counter()
        try:
            if kind == "unary":
                channel.unary_unary(path)(payload, timeout=20)
            else:
                for _ in channel.unary_stream(path)(payload, timeout=20):
                    pass
            return target, "OK", ""
        except grpc.RpcError as exc:
            return target, exc.code().name, exc.details() or ""
        finally:
            took_by_case[f"{path} [{case.rstrip('-0123456789')}]"] += time.perf_counter() - started

    poller = HealthPoller([f"{n}@{s.address}" for n, s in fast_servers.items()], tmp_path / "stop")
    counts: collections.Counter = collections.Counter()
    bad: list[str] = []
    rss: dict[str, list[int]] = {n: [] for n in fast_servers}
    started = time.perf_counter()
    try:
        with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
            for _ in range(ROUNDS):
                order = targets[:]
                rng.shuffle(order)
                for i in range(0, len(order), BURST):
                    for (_name, path, _, case, _), code, message in pool.map(call, order[i : i + BURST]):
                        counts[code] += 1
                        if code not in EXPECTED:
                            bad.append(f"{path} [{case}]: {code} {message[:200]}")
                        elif code != "OK" and (not message.strip() or REPR.search(message)):
                            bad.append(f"{path} [{case}]: {code} with message {message[:200]!r}")
                for n, s in fast_servers.items():
                    rss[n].append(rss_bytes(s.proc.pid))
    finally:
        health = poller.finish()
        for c in channels.values():
            c.close()
    took = time.perf_counter() - started
    print(
        f"\nfuzz: {sum(counts.values())} requests in {took:.1f}s over {len(targets)} cases; by status: "
        + ", ".join(f"{k}={v}" for k, v in counts.most_common())
    )
    print(f"health: {health['checks']} checks, slowest {health['slowest']:.3f}s, {len(health['failures'])} failures")
    print("slowest cases (s, all rounds): " + ", ".join(f"{k} {v:.1f}" for k, v in took_by_case.most_common(8)))
    print("rss MiB by round: " + "; ".join(f"{n}: {[r >> 20 for r in v]}" for n, v in rss.items()))

    crashed = {n: s.proc.returncode for n, s in fast_servers.items() if s.proc.poll() is not None}
    assert not crashed, f"servers exited: {crashed}"
    assert not bad, f"{len(bad)} unexpected answers:\n" + "\n".join(bad[:30])
    assert not health["failures"] and health["slowest"] < 1.0, health["failures"][:10]
    for n, values in rss.items():  # plateau: the last round does not grow past the one before
        assert values[-1] <= values[-2] * 1.10 + (48 << 20), f"{n}: RSS kept growing {[v >> 20 for v in values]} MiB"
    for n, s in fast_servers.items():
        log = s.output()
        assert "Unexpected <class" not in log and "DecodeError" not in log, f"{n} logged a decode traceback"
