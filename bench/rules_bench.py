#!/usr/bin/env python3
"""Cost of the rules on the hot path: the referee's telemetry scenario with and without rules.

    .venv/bin/python bench/rules_bench.py [-m 200000] [--rounds 3]

Three sinks, the service with the same settings as bench/autocore.toml and:
  no-rules          no RULES_FILE
  rules-never-20    bench/rules/never-20.yaml: 20 rules on the telemetry route that never fire
  rules-fire-1pct   bench/rules/never-20-fires-1pct.yaml: the same 20 plus one that fires on 1 % of
                    the messages (2 000 firings in 200 000 messages, each a rule_firings row)
run one after the other in rounds (no-rules, never-20, fire-1pct, then again), so a change in the
box's load hits all three alike; per sink the medians of rows/s and CPU seconds are printed, and
each against no-rules. The same PostgreSQL (5433) and Mosquitto (1884) as bench/bench.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tomllib
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench as driver  # noqa: E402  (bench/bench.py: services and the referee harness)

VARIANTS = {
    "no-rules": None,
    "rules-never-20": BENCH / "rules" / "never-20.yaml",
    "rules-fire-1pct": BENCH / "rules" / "never-20-fires-1pct.yaml",
}
# The service's reset (bench/autocore.toml: the outbox, the alerts and what is derived from the
# telemetry too) and the rules' state: a run starts from nothing the run before it left.
_RULE_TABLES = ", autocore_bench.rule_state, autocore_bench.rule_firings"


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # TOML basic strings are JSON strings


def write_config(path: Path) -> None:
    base = tomllib.loads(driver.SINK_TOML.read_text())["sinks"]["autocore"]
    lines: list[str] = []
    for name, rules in VARIANTS.items():
        lines.append(f"[sinks.{name}]")
        for key, value in base.items():
            if key == "env":
                continue
            if key == "cwd":
                value = str(driver.ROOT)
            if key == "reset_sql":
                value += _RULE_TABLES
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append(f"[sinks.{name}.env]")
        for key, value in base["env"].items():
            lines.append(f"{key} = {_toml_value(value)}")
        if rules is not None:
            lines.append(f"RULES_FILE = {_toml_value(str(rules))}")
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--messages", type=int, default=200_000)
    p.add_argument("-n", "--devices", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), help="these variants alone (no-rules is the baseline)")
    default_harness = os.environ.get("BENCH_HARNESS", driver.ROOT.parent / "shared/bench")
    p.add_argument("--harness", type=Path, default=Path(default_harness))
    args = p.parse_args()
    pg_port = int(os.environ.get("BENCH_PGPORT", "5433"))
    mqtt_port = int(os.environ.get("BENCH_MQTT_PORT", "1884"))
    os.environ.update(PGPORT=str(pg_port), MQTT_PORT=str(mqtt_port), PGHOST="127.0.0.1", PGUSER="postgres",
                      PGDATABASE="bench")  # fmt: skip
    referee, _loadgen = driver.load_harness(args.harness.resolve())
    driver.STATE.mkdir(exist_ok=True)
    config = driver.STATE / "rules-sinks.toml"
    write_config(config)
    results = driver.STATE / "rules-results.jsonl"
    seen = len(results.read_text().splitlines()) if results.exists() else 0
    chosen = args.only or list(VARIANTS)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    with driver.services(args.harness.resolve(), pg_port, mqtt_port):
        for round_no in range(args.rounds):
            for name in chosen:
                print(f"\n## round {round_no + 1}: {name}", flush=True)
                saved = sys.argv
                sys.argv = ["run.py", "--config", str(config), "--results", str(results), "-m", str(args.messages),
                            "-n", str(args.devices), "--tag", f"rules-{name}", name]  # fmt: skip
                try:
                    referee.main()
                finally:
                    sys.argv = saved
                if VARIANTS[name] is not None:
                    counts = "SELECT (SELECT count(*) FROM autocore_bench.rule_firings), " \
                             "(SELECT count(*) FROM autocore_bench.rule_state), " \
                             "(SELECT count(*) FROM autocore_bench.notifications WHERE status = 'sent'), " \
                             "(SELECT count(*) FROM autocore_bench.notifications), " \
                             "(SELECT count(*) FROM autocore_bench.alerts WHERE kind = 'rule')"
                    ((fired, states, sent, rows, alerts),) = driver.psql(pg_port, counts)
                    print(f"# {name}: {fired} rule firings, {states} rule states stored; outbox {sent} of {rows} "
                          f"rows sent when the run ended; {alerts} rule alerts", flush=True)  # fmt: skip
                lines = results.read_text().splitlines()
                for line in lines[seen:]:
                    row = json.loads(line)
                    if "error" not in row:
                        runs[name].append(row)
                seen = len(lines)
    print("\n# medians (rows/s: higher is better; CPU s of the service's process tree: lower is better)")
    baseline = runs.get("no-rules", [])
    base = {k: statistics.median(r[k] for r in baseline) if baseline else 0.0 for k in ("rows_per_s", "cpu_s")}

    def against(value: float, key: str) -> str:
        return f"({value / base[key] - 1:+.1%})" if base[key] else "(no baseline)"

    for name, rows in runs.items():
        if not rows:
            print(f"{name:18} no good run")
            continue
        rate = statistics.median(r["rows_per_s"] for r in rows)
        cpu = statistics.median(r["cpu_s"] for r in rows)
        print(f"{name:18} rows/s {rate:9.0f} {against(rate, 'rows_per_s')}   cpu_s {cpu:5.2f} "
              f"{against(cpu, 'cpu_s')}   runs {[round(r['rows_per_s']) for r in rows]} "
              f"cpu {[r['cpu_s'] for r in rows]}  lost {[r.get('lost') for r in rows]}")  # fmt: skip


if __name__ == "__main__":
    main()
