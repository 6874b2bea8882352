#!/usr/bin/env python3
"""AutoCore Monitor benchmark: one command, numbers comparable with the referee harness.

    .venv/bin/python bench/bench.py all            # telemetry x3, paced latency, mixed, scale
    .venv/bin/python bench/bench.py telemetry -m 200000 --repeat 3 [--peers nodered-batched]
    .venv/bin/python bench/bench.py paced -m 30000 --rate 1000
    .venv/bin/python bench/bench.py mixed -m 200000
    .venv/bin/python bench/bench.py scale          # 10k, 100k, 1M messages: cost per message
    .venv/bin/python bench/bench.py replicas -m 200000 --repeat 2   # 1, 2, 3 replicas on $share
    .venv/bin/python bench/bench.py events         # telemetry with 0 and with 10 /events clients
    .venv/bin/python bench/bench.py scale -m 1000000 --compare ../base-checkout   # A/B, alternating runs

Every scenario ends with a summary line per sink that adds `us/msg`: microseconds of the sink's CPU
per message. For the service its start-up CPU (measured once per invocation: start, wait until
ready, settle 1 s, no messages) is subtracted first; for the harness's sinks start-up is included.
`gmqtt-count` (the harness's gmqtt subscriber that only counts) runs beside the service in the
`telemetry` scenario: the practical ceiling of a gmqtt consumer on this box.
Beside it, `pg` and `box`: microseconds a message of the benchmark's PostgreSQL cluster and of
the whole box (every process), over the load only (bench/meters.py), and the hypervisor's steal.
With `--compare`, each alternating pair is printed too: what the service's change costs where its
work runs in PostgreSQL (statements, the rollup sweep) shows there, not in the service's CPU.

`--compare DIR` runs a second checkout of the service (say, main before a change; it uses this
checkout's .venv) as sink `autocore-base`, alternating with `autocore` run by run, so that both
meet the same load from the rest of the machine.

The referee harness (../shared/bench: run.py, loadgen.py) is used as a library: its driver runs
the `telemetry`, `paced` and `scale` scenarios with the sink entry in bench/autocore.toml (plus the
`mosquitto-sub` ceiling, and peers when the harness copy has them installed); its raw MQTT
generator publishes the `mixed` scenario (status + telemetry + relay on one fleet), measured here.

The benchmark runs its own PostgreSQL cluster (track_commit_timestamp on, for exact commit
times) and its own Mosquitto (the harness's config) under bench/.state, on BENCH_PGPORT (5433)
and BENCH_MQTT_PORT (1884), and stops them at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import meters

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
STATE = BENCH / ".state"
SINK_TOML = BENCH / "autocore.toml"


# ---------------------------------------------------------------------------------- services
def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


@contextlib.contextmanager
def services(harness: Path, pg_port: int, mqtt_port: int) -> Iterator[None]:
    """PostgreSQL and Mosquitto of the benchmark's own; stops only what it started."""
    pg_bin = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1])
    pgdata = STATE / "pgdata"
    started: list[str] = []
    STATE.mkdir(exist_ok=True)
    if not _port_open(pg_port) and not (pgdata / "PG_VERSION").exists():
        pgdata.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(pgdata, "postgres", "postgres")
            shutil.chown(STATE, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [
                    str(pg_bin / "initdb"),
                    "-D",
                    str(pgdata),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with open(pgdata / "postgresql.conf", "a") as conf:
            # As the harness's cluster: durability defaults, commit timestamps for the latency.
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {pg_port}\nunix_socket_directories = '{STATE}'\n"
                       "max_connections = 200\nshared_buffers = 512MB\nmax_wal_size = 4GB\n"
                       "checkpoint_timeout = 15min\ntrack_commit_timestamp = on\n")  # fmt: skip
    if not _port_open(pg_port):
        subprocess.run(_as_postgres([str(pg_bin / "pg_ctl"), "-D", str(pgdata), "-l", str(STATE / "postgres.log"),
                                     "-w", "-t", "60", "start"]), check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        started.append("pg")
    psql_admin = ["psql", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres", "-d", "postgres"]
    # Fails harmlessly when the database exists already.
    subprocess.run([*psql_admin, "-qc", "CREATE DATABASE bench"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker = None
    if not _port_open(mqtt_port):
        mq_state = STATE / "mosquitto"
        mq_state.mkdir(exist_ok=True)
        conf_text = (harness / "mosquitto.conf.in").read_text()
        conf_text = conf_text.replace("@STATE@", str(STATE)).replace("@MQPORT@", str(mqtt_port))
        (STATE / "logs").mkdir(exist_ok=True)
        (STATE / "mosquitto.conf").write_text(conf_text)
        if os.geteuid() == 0:
            for p in (mq_state, STATE / "logs"):
                shutil.chown(p, "mosquitto")
        broker = subprocess.Popen(["mosquitto", "-c", str(STATE / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        for _ in range(100):
            if _port_open(mqtt_port):
                break
            time.sleep(0.05)
    try:
        yield
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        if "pg" in started:
            subprocess.run(_as_postgres([str(pg_bin / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "stop"]),
                           stdout=subprocess.DEVNULL)  # fmt: skip


# ---------------------------------------------------------------------------------- harness
def load_harness(harness: Path) -> tuple[ModuleType, ModuleType]:
    sys.path.insert(0, str(harness))
    import loadgen
    import run as referee

    # The harness writes its run directories next to itself; ours go under bench/.state.
    referee.STATE = str(STATE / "referee")
    referee.PY = sys.executable
    return referee, loadgen


def referee_run(referee: ModuleType, argv: list[str], extra: Sequence[str] = ()) -> None:
    results = STATE / "results.jsonl"
    saved = sys.argv
    sys.argv = ["run.py", "--config", str(SINK_TOML), *extra, "--results", str(results), *argv]
    try:
        referee.main()
    finally:
        sys.argv = saved


# ---------------------------------------------------------------------------------- mixed scenario
def mixed_message(loadgen: ModuleType, devices: int, k: int) -> tuple[str, bytes, str]:
    """Message k of the mixed scenario: per device, every 10th a status, 2 in 10 a relay, the rest telemetry."""
    d, s = k % devices, k // devices
    did = loadgen.device_id(d, devices)
    ts = loadgen.BASE.timestamp() + s + (d % 1000) / 1000
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{d % 1000:03d}Z"
    slot = s % 10
    if slot == 0:
        online = (s // 10) % 7 != 6  # now and then offline
        body = {"status": "online" if online else "offline", "ip_address": f"10.0.{d // 250}.{d % 250 + 1}",
                "firmware_version": "1.2.0", "uptime": s, "timestamp": stamp}  # fmt: skip
        return f"autocore/{did}/status", json.dumps(body).encode(), "status"
    if slot in (3, 7):
        relay = (s // 10) % 4
        body = {"relay_index": relay, "state": bool((s // 10) % 2), "triggered_by": "schedule", "timestamp": stamp}
        return f"autocore/{did}/relay/{relay}/status", json.dumps(body).encode(), "relay"
    t, h, v, m = loadgen.values(k, devices)
    body = {"device_id": did, "temperature": t, "humidity": h, "voltage": v, "memory_free": m, "timestamp": stamp}
    return f"autocore/{did}/telemetry", json.dumps(body).encode(), "telemetry"


def sink_env(pg_port: int, mqtt_port: int) -> dict[str, str]:
    entry = tomllib.loads(SINK_TOML.read_text())["sinks"]["autocore"]
    values = {"MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(mqtt_port), "PGUSER": "postgres", "PGHOST": "127.0.0.1",
              "PGPORT": str(pg_port), "PGDATABASE": "bench"}  # fmt: skip
    env = {k: v.format(**values) for k, v in entry["env"].items()}
    return {**os.environ, **env, "MQTT_CLIENT_ID": "autocore-bench-mixed"}


def psql(pg_port: int, sql: str) -> list[list[str]]:
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres", "-d", "bench", "-AtF,",
                          "-c", sql], check=True, capture_output=True, text=True).stdout  # fmt: skip
    return [line.split(",") for line in out.splitlines() if line]


def run_mixed(
    loadgen: ModuleType, messages: int, devices: int, pg_port: int, mqtt_port: int, cwd: Path = ROOT
) -> dict[str, Any]:
    import asyncio
    from array import array

    import psutil

    kinds: dict[str, int] = {"status": 0, "relay": 0, "telemetry": 0}
    table = [mixed_message(loadgen, devices, k) for k in range(messages)]
    for _t, _p, kind in table:
        kinds[kind] += 1
    loadgen.message = lambda k, _n: table[k][:2]  # the harness's raw generator publishes our messages

    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "service.main:app", "--port", "8091", "--log-level",
                             "warning", "--no-access-log"], cwd=cwd, env=sink_env(pg_port, mqtt_port),
                            stdout=open(STATE / "mixed-sink.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115  # fmt: skip
    try:
        for _ in range(300):
            with contextlib.suppress(OSError):
                urllib.request.urlopen("http://127.0.0.1:8091/health/mqtt-monitor", timeout=1)
                break
            time.sleep(0.1)
        schema = "autocore_bench"
        psql(pg_port, f"TRUNCATE {schema}.telemetry, {schema}.relay_state_history, {schema}.relays, "
                      f"{schema}.devices, {schema}.connectivity_events, {schema}.connectivity_history, "
                      f"{schema}.dead_letters, {schema}.telemetry_stats, {schema}.alerts, {schema}.notifications, "
                      f"{schema}.telemetry_rollup_1m, {schema}.telemetry_rollup_1h")  # fmt: skip
        args = argparse.Namespace(host="127.0.0.1", port=mqtt_port, devices=devices, messages=messages,
                                  connections=8, window=256, rate=0.0, qos=1, ack_timeout=120.0)  # fmt: skip
        times = array("d", bytes(8 * messages))
        peak = 0
        sampler = psutil.Process(proc.pid)
        before = meters.read(STATE / "pgdata")
        acked, _t0, _sent, _t_acked = asyncio.run(loadgen.run_raw(args, loadgen.plan(args), times))
        deadline = time.time() + 180
        expected_rows = kinds["telemetry"] + kinds["relay"]
        while time.time() < deadline:
            peak = max(peak, sampler.memory_info().rss)
            body = json.load(urllib.request.urlopen("http://127.0.0.1:8091/health/mqtt-monitor", timeout=2))
            if body["messages_processed"] >= messages:
                break
            time.sleep(0.1)
        cpu = sampler.cpu_times()
        load = meters.read(STATE / "pgdata").minus(before)
        ((tel, tel_d),) = [
            [int(x) for x in r]
            for r in psql(pg_port, f"SELECT count(*), count(DISTINCT (device_id, ts)) FROM {schema}.telemetry")
        ]
        ((rel, rel_d),) = [
            [int(x) for x in r]
            for r in psql(
                pg_port,
                f"SELECT count(*), count(DISTINCT (device_id, relay_index, ts)) FROM {schema}.relay_state_history",
            )
        ]
        ((last_commit,),) = psql(
            pg_port,
            f"""SELECT max(c) FROM (
            SELECT max(extract(epoch FROM pg_xact_commit_timestamp(xmin))) c FROM {schema}.telemetry
            UNION ALL SELECT max(extract(epoch FROM pg_xact_commit_timestamp(xmin))) FROM {schema}.relay_state_history
            UNION ALL SELECT max(extract(epoch FROM pg_xact_commit_timestamp(xmin))) FROM {schema}.devices) x""",
        )
        ((dead,),) = psql(pg_port, f"SELECT count(*) FROM {schema}.dead_letters")
        ((statused,),) = psql(pg_port, f"SELECT count(*) FROM {schema}.devices WHERE status_ts IS NOT NULL")
        seconds = float(last_commit) - min(times)
        return {
            "messages": messages, "acked_by_broker": acked, "seconds": round(seconds, 2),
            "msgs_per_s": round(messages / seconds), "telemetry": f"{tel}/{kinds['telemetry']}",
            "relay_history": f"{rel}/{kinds['relay']}", "status_msgs": kinds["status"],
            "devices_with_status": int(statused), "lost": expected_rows - min(tel_d + rel_d, expected_rows),
            "dupes": (tel - tel_d) + (rel - rel_d), "dead_letters": int(dead),
            "peak_rss_mb": round(peak / 2**20, 1), "cpu_s": round(cpu.user + cpu.system, 2), **load,
        }  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


# ---------------------------------------------------------------------------------- CPU per message
def tree_cpu(proc: Any) -> float:
    """User+sys CPU seconds of a psutil process and its children."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(Exception):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def startup_cpu(pg_port: int, mqtt_port: int, cwd: Path = ROOT) -> float:
    """CPU seconds the service spends starting (migrations, connect, subscribe) and idling 1 s."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "service.main:app", "--port", "8092", "--log-level",
                             "warning", "--no-access-log"], cwd=cwd,
                            env={**sink_env(pg_port, mqtt_port), "MQTT_CLIENT_ID": "autocore-bench-startup"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        sampler = psutil.Process(proc.pid)
        for _ in range(600):
            with contextlib.suppress(OSError):
                urllib.request.urlopen("http://127.0.0.1:8092/health/mqtt-monitor", timeout=1)
                break
            time.sleep(0.1)
        time.sleep(1.0)  # the referee settles 1 s after ready as well
        return tree_cpu(sampler)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def new_results(offset: int) -> list[dict[str, Any]]:
    path = STATE / "results.jsonl"
    if not path.exists():
        return []
    with open(path) as f:
        f.seek(offset)
        return [json.loads(line) for line in f if line.strip()]


def results_offset() -> int:
    path = STATE / "results.jsonl"
    return path.stat().st_size if path.exists() else 0


def summarize(runs: list[dict[str, Any]], startup: dict[str, float]) -> None:
    """Median per sink of rows/s, latency and CPU, with microseconds of CPU per message."""
    by_sink: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        if "error" not in r:
            by_sink.setdefault((r["sink"], r["M"]), []).append(r)
    said = ", ".join(f"{k} {v:.2f} s" for k, v in startup.items())
    print(f"# summary (median per sink; us/msg = CPU per message, less the service's start-up: {said})")
    print(
        "# pg, box: CPU per message of the benchmark's PostgreSQL and of the whole box (all processes) over"
        " the load, from the first row count to the last; steal: the hypervisor's share, in % of the window"
    )
    print(
        f"{'sink':<22} {'M':>8} {'runs':>4} {'rows/s':>8} {'p50_ms':>8} {'p99_ms':>8} {'cpu_s':>7} {'us/msg':>7}"
        f" {'pg':>6} {'box':>6} {'steal':>5}"
    )
    for (sink, m), rs in by_sink.items():

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float | None:
            vals = [r[key] for r in rs if isinstance(r.get(key), int | float)]
            return statistics.median(vals) if vals else None

        cpu = med("cpu_s")
        base = startup.get(sink, 0.0)
        us = None if cpu is None else (cpu - base) / m * 1e6
        cells = [med("rows_per_s"), med("p50_ms"), med("p99_ms")]
        text = " ".join("       -" if v is None else f"{v:>8.0f}" for v in cells)
        pg, box, steal, window = med("pg_cpu_s"), med("box_cpu_s"), med("steal_s"), med("window_s")
        per_msg = " ".join("     -" if v is None else f"{v / m * 1e6:>6.2f}" for v in (pg, box))
        stolen = "    -" if steal is None or not window else f"{100 * steal / ((os.cpu_count() or 1) * window):>4.1f}%"
        print(
            f"{sink:<22} {m:>8} {len(rs):>4} {text} {cpu or 0:>7.1f} {'-' if us is None else f'{us:.2f}':>7}"
            f" {per_msg} {stolen}",
            flush=True,
        )


def pairs(runs: list[dict[str, Any]]) -> None:
    """autocore against autocore-base run by run: the two of a pair met the same load from the box."""
    base = [r for r in runs if r["sink"] == "autocore-base" and "error" not in r]
    new = [r for r in runs if r["sink"] == "autocore" and "error" not in r]
    print("# pairs, autocore against autocore-base: rows/s, and the extra CPU per message of the service and of"
          " PostgreSQL (us)")  # fmt: skip
    for b, a in zip(base, new, strict=False):
        m = a["M"]
        extra = [(a[k] - b[k]) / m * 1e6 if k in a and k in b else float("nan") for k in ("cpu_s", "pg_cpu_s")]
        rows = 100 * (a["rows_per_s"] / b["rows_per_s"] - 1)
        print(f"{rows:+6.1f} %   service {extra[0]:+5.2f}   pg {extra[1]:+5.2f}")


# ---------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=("telemetry", "paced", "mixed", "scale", "replicas", "events", "all"))
    p.add_argument("-m", "--messages", type=int)
    p.add_argument("-n", "--devices", type=int, default=500)
    p.add_argument("-r", "--rate", type=float, default=1000.0, help="paced scenario: msgs/s")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--peers", nargs="*", default=[], help="more sinks of the harness, e.g. nodered-batched")
    p.add_argument("--compare", type=Path, help="another checkout of the service, run as sink autocore-base")
    p.add_argument("--harness", type=Path, default=Path(os.environ.get("BENCH_HARNESS", ROOT.parent / "shared/bench")))
    args = p.parse_args()
    pg_port = int(os.environ.get("BENCH_PGPORT", "5433"))
    mqtt_port = int(os.environ.get("BENCH_MQTT_PORT", "1884"))
    os.environ.update(PGPORT=str(pg_port), MQTT_PORT=str(mqtt_port), PGHOST="127.0.0.1", PGUSER="postgres",
                      PGDATABASE="bench")  # fmt: skip
    referee, loadgen = load_harness(args.harness.resolve())
    meters.LoadWindow(referee, STATE / "pgdata")
    compare = args.compare.resolve() if args.compare else None
    extra: list[str] = []
    if compare is not None:
        STATE.mkdir(exist_ok=True)
        entry = tomllib.loads(SINK_TOML.read_text())["sinks"]["autocore"]
        venv_py = str(ROOT / ".venv/bin/python")
        start = entry["start"].replace(".venv/bin/python", venv_py)
        (STATE / "compare.toml").write_text(
            f"[sinks.autocore-base]\ndescription = {json.dumps(f'the service from {compare}')}\n"
            f"cwd = {json.dumps(str(compare))}\nstart = {json.dumps(start)}\n"
            f"ready_cmd = {json.dumps(entry['ready_cmd'].replace('.venv/bin/python', venv_py))}\n"
            + "".join(f"{k} = {json.dumps(entry[k])}\n" for k in ("wait_subscription", "ready_timeout", "setup_sql",
                                                                    "reset_sql", "count_sql", "final_sql", "rows_sql"))
            + "[sinks.autocore-base.env]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry["env"].items())
        )  # fmt: skip
        extra = ["--config", str(STATE / "compare.toml")]
    sinks = ["autocore-base", "autocore"] if compare is not None else ["autocore"]

    def run_sinks(argv: list[str], before: Sequence[str] = ()) -> None:
        if compare is None:
            referee_run(referee, [*argv, "--repeat", str(args.repeat), *before, *sinks], extra)
            return
        if before:
            referee_run(referee, [*argv, "--repeat", str(args.repeat), *before], extra)
        for _ in range(args.repeat):  # alternate, so both meet the same load
            referee_run(referee, [*argv, "--repeat", "1", *sinks], extra)

    todo = ["telemetry", "paced", "mixed", "scale"] if args.scenario == "all" else [args.scenario]
    with services(args.harness.resolve(), pg_port, mqtt_port):
        startup = {"autocore": startup_cpu(pg_port, mqtt_port)}
        if compare is not None:
            startup["autocore-base"] = startup_cpu(pg_port, mqtt_port, compare)
        print("# service start-up CPU:", ", ".join(f"{k} {v:.2f} s" for k, v in startup.items()), flush=True)
        for scenario in todo:
            print(f"\n## {scenario}", flush=True)
            offset = results_offset()
            if scenario == "telemetry":
                m = args.messages or 200_000
                run_sinks(
                    ["-m", str(m), "-n", str(args.devices), "--tag", "telemetry"],
                    ["mosquitto-sub", "gmqtt-count", *args.peers],
                )
            elif scenario == "paced":
                m = args.messages or max(30_000, int(args.rate * 10))
                run_sinks(["-m", str(m), "-r", str(args.rate), "--tag", "paced"], list(args.peers))
            elif scenario == "mixed":
                m = args.messages or 200_000
                dirs = {"autocore-base": compare, "autocore": ROOT} if compare is not None else {"autocore": ROOT}
                runs: dict[str, list[dict[str, Any]]] = {k: [] for k in dirs}
                for _ in range(args.repeat):
                    for sink, cwd in dirs.items():
                        r = {"sink": sink, **run_mixed(loadgen, m, args.devices, pg_port, mqtt_port, cwd)}
                        r["us_per_msg"] = round((r["cpu_s"] - startup[sink]) / m * 1e6, 2)
                        runs[sink].append(r)
                        print(json.dumps(r), flush=True)
                for sink, rs in runs.items():
                    pg, box = (statistics.median(r[k] for r in rs) / m * 1e6 for k in ("pg_cpu_s", "box_cpu_s"))
                    print(f"{sink}: median msgs/s {statistics.median(r['msgs_per_s'] for r in rs)},"
                          f" median us/msg {statistics.median(r['us_per_msg'] for r in rs)},"
                          f" pg {pg:.2f} us/msg, box {box:.2f} us/msg", flush=True)  # fmt: skip
                continue
            elif scenario == "replicas":
                # The service alone, then 1, 2 and 3 replicas on one shared subscription (bench/replicas.sh).
                m = args.messages or 200_000
                referee_run(referee, ["-m", str(m), "-n", str(args.devices), "--repeat", str(args.repeat),
                                      "--tag", "replicas", "autocore", "autocore-x1", "autocore-x2",
                                      "autocore-x3"])  # fmt: skip
            elif scenario == "events":
                # The same telemetry run with no /events client, with 10 that read everything (at the
                # default EVENTS_MAX_RATE), and with 10 and no rate limit (bench/sse_clients.py).
                m = args.messages or 200_000
                referee_run(referee, ["-m", str(m), "-n", str(args.devices), "--repeat", str(args.repeat),
                                      "--tag", "events", "autocore", "autocore-sse10",
                                      "autocore-sse10-unlimited"])  # fmt: skip
            elif scenario == "scale":
                sizes = [args.messages] if args.messages else [10_000, 100_000, 1_000_000]
                for m in sizes:
                    run_sinks(["-m", str(m), "-n", str(args.devices), "--tag", f"scale-{m}", "--timeout", "600"])
            summarize(new_results(offset), startup)
            if compare is not None:
                pairs(new_results(offset))


if __name__ == "__main__":
    main()
