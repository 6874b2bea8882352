#!/usr/bin/env python3
"""Cost of evaluating rule conditions per message, for the expression libraries considered.

    .venv/bin/python bench/rules_expressions.py             # ~20 s; prints µs per message
    .venv/bin/python bench/rules_expressions.py --pipeline  # the service's pipeline only

Each candidate compiles its expressions once, then evaluates them against the names of one
telemetry message (the referee's payload fields plus the topic's device_id). Two shapes:
one condition per message, and 20 conditions per message (the issue's benchmark: 20 rules on the
telemetry route). Not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import ast
import statistics
import time
from collections.abc import Callable
from typing import Any

MESSAGE: dict[str, Any] = {
    "device_id": "ESP32_007",
    "temperature": 20.5,
    "humidity": 31.3,
    "voltage": 3.07,
    "memory_free": 40101,
}
PY_CONDITIONS = [f"temperature > {70 + i} and humidity < {95 - i % 3} or voltage < {1 - i / 100}" for i in range(20)]
CEL_CONDITIONS = [c.replace(" and ", " && ").replace(" or ", " || ") for c in PY_CONDITIONS]


def per_message(fn: Callable[[], object], rounds: int = 7, n: int = 20_000) -> float:
    """Median µs per call over `rounds` runs of `n` calls."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times)


def simpleeval_candidate(conditions: list[str]) -> Callable[[], object]:
    from simpleeval import SimpleEval

    evaluator = SimpleEval(names=MESSAGE, functions={})
    parsed = [evaluator.parse(c) for c in conditions]

    def run() -> object:
        return [evaluator.eval("", previously_parsed=p) for p in parsed]

    return run


def asteval_candidate(conditions: list[str]) -> Callable[[], object]:
    from asteval import Interpreter

    interp = Interpreter(symtable=dict(MESSAGE), minimal=True, builtins_readonly=True)
    parsed = [interp.parse(c) for c in conditions]

    def run() -> object:
        return [interp.run(p, with_raise=True) for p in parsed]

    return run


def cel_candidate(conditions: list[str]) -> Callable[[], object]:
    import cel

    programs = [cel.compile(c) for c in conditions]

    def run() -> object:
        return [p.execute(MESSAGE) for p in programs]

    return run


def cel_one_program_candidate(conditions: list[str]) -> Callable[[], object]:
    """All of a route's conditions in one CEL program: one context conversion per message."""
    import cel

    program = cel.compile("[" + ", ".join(f"({c})" for c in conditions) + "]")

    def run() -> object:
        return program.execute(MESSAGE)

    return run


def python_bytecode_reference(conditions: list[str]) -> Callable[[], object]:
    """Not a candidate (the issue rules out eval): CPython's own bytecode, as the floor."""
    code = compile(ast.parse("[" + ", ".join(f"({c})" for c in conditions) + "]", mode="eval"), "<rules>", "eval")
    names = dict(MESSAGE)

    def run() -> object:
        return eval(code, {"__builtins__": {}}, names)

    return run


def stage_per_message(rules_file: str, n: int = 50_000) -> float:
    """µs per message the rules' pipeline stage adds (service/rules/stage.py), fast path included."""
    from datetime import UTC, datetime, timedelta
    from pathlib import Path

    from service.models import Telemetry
    from service.mqtt.message import InboundMessage
    from service.pipeline import MessageContext
    from service.routes import build_router
    from service.rules.loader import load_text
    from service.rules.stage import RouteStage

    router = build_router("autocore")
    rules = load_text(Path(rules_file).read_text(), router)
    stage = RouteStage(rules.by_route["telemetry"])
    route = router["telemetry"]
    t0 = datetime(2025, 1, 28, tzinfo=UTC)
    contexts = []
    for k in range(n):
        d, s = k % 500, k // 500
        message = InboundMessage("autocore/x/telemetry", b"{}", 1, False, 0.0)
        ctx = MessageContext(message, route, {"device_id": f"D{d}"})
        ctx.model = Telemetry(temperature=round(18 + ((d * 37 + s * 11) % 200) / 10, 1), humidity=40.0, voltage=3.2,
                              memory_free=42000, timestamp=t0 + timedelta(seconds=s, milliseconds=d))  # fmt: skip
        contexts.append(ctx)
    records: list[object] = []
    times = []
    for _ in range(5):
        stage = RouteStage(rules.by_route["telemetry"])
        start = time.perf_counter()
        for ctx in contexts:
            stage(ctx, records)  # type: ignore[arg-type]
        times.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times)


def pipeline_per_message(rules_file: str | None, n: int = 50_000) -> float:
    """CPU µs per referee telemetry message through the whole pipeline (route, validate, handler,
    and the rules' stage when a file is given): the service's per-message work before the writer."""
    import asyncio
    from pathlib import Path

    from service.mqtt.message import InboundMessage
    from service.pipeline import Pipeline
    from service.routes import build_router
    from service.rules.loader import load_text
    from service.rules.stage import RouteStage


    def referee_message(k: int, devices: int = 500) -> tuple[str, bytes]:
        """The referee harness's telemetry message k (its loadgen.message(), same payload bytes)."""
        d, s = k % devices, k // devices
        did = f"ESP32_{d:03d}"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1738022400 + s)) + f".{d % 1000:03d}Z"
        t, h = round(18 + ((d * 37 + s * 11) % 200) / 10, 1), round(30 + ((d * 13 + s * 7) % 400) / 10, 1)
        v, m = round(3 + ((d * 7 + s * 3) % 50) / 100, 2), 40000 + (d * 101 + s * 17) % 10000
        body = (f'{{"device_id": "{did}", "temperature": {t:.1f}, "humidity": {h:.1f}, "voltage": {v:.2f}, '
                f'"memory_free": {m}, "timestamp": "{stamp}"}}')  # fmt: skip
        return f"autocore/{did}/telemetry", body.encode()

    # As the service builds it: its alert topic and the rules' publish topics are its own.
    router = build_router("autocore", own_topics=["autocore/alerts"])
    hooks: dict[str, object] = {}
    if rules_file:
        rules = load_text(Path(rules_file).read_text(), router)
        hooks = {name: RouteStage(r) for name, r in rules.by_route.items()}
        router.set_commands(rules.publish_topics)
    pipeline = Pipeline(router, after=hooks)  # type: ignore[arg-type]
    messages = [InboundMessage(*referee_message(k), 1, False, 0.0) for k in range(n)]

    async def run() -> float:
        start = time.process_time()
        for message in messages:
            await pipeline.process(message)
        return (time.process_time() - start) / n * 1e6

    return asyncio.run(run())


def main() -> None:
    import sys

    if "--pipeline" not in sys.argv[1:]:  # `--pipeline`: only the service's own figures below
        compare_candidates()
    print("\nCPU µs per referee telemetry message through the pipeline (median of 5, alternating):")
    files = {"no rules": None, "never-20": "bench/rules/never-20.yaml",
             "never-20 + fires-1pct": "bench/rules/never-20-fires-1pct.yaml"}  # fmt: skip
    samples: dict[str, list[float]] = {k: [] for k in files}
    for _ in range(5):
        for label, path in files.items():
            samples[label].append(pipeline_per_message(path))
    base = statistics.median(samples["no rules"])
    for label, values in samples.items():
        cost = statistics.median(values)
        print(f"  {label:24} {cost:6.2f} µs ({cost - base:+.2f})   runs {[round(v, 2) for v in values]}", flush=True)
    print("\nthe service's rules stage per message (compiled conditions, cache, records), bench/rules/*.yaml:")
    for name in ("never-20.yaml", "never-20-fires-1pct.yaml"):
        print(f"  {name:30} {stage_per_message(f'bench/rules/{name}'):6.2f} µs", flush=True)


def compare_candidates() -> None:
    candidates: list[tuple[str, Callable[[list[str]], Callable[[], object]], list[str]]] = [
        ("simpleeval 1.0 (SimpleEval, parsed once)", simpleeval_candidate, PY_CONDITIONS),
        ("asteval 1.0 (Interpreter, parsed once)", asteval_candidate, PY_CONDITIONS),
        ("CEL (common-expression-language), one program per rule", cel_candidate, CEL_CONDITIONS),
        ("CEL (common-expression-language), one program per route", cel_one_program_candidate, CEL_CONDITIONS),
        ("reference: CPython bytecode (eval, not a candidate)", python_bytecode_reference, PY_CONDITIONS),
    ]
    print(f"{'candidate':60} {'1 rule µs':>10} {'20 rules µs':>12}")
    for name, make, conditions in candidates:
        one = per_message(make(conditions[:1]))
        twenty = per_message(make(conditions), n=5_000)
        print(f"{name:60} {one:10.2f} {twenty:12.2f}", flush=True)


if __name__ == "__main__":
    main()
