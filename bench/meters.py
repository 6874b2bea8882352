"""CPU of PostgreSQL and of the whole box over a run's load, beside the service's own.

The service's CPU misses what it makes PostgreSQL do (the statistics' WRITE, the rollup sweep, the
alerts), and on this 2-core box every process shares the same cores: the box's busy CPU per message is
the figure that decides throughput there. Steal is reported apart: it is time the hypervisor gave to
someone else, the noise that moves rows/s between runs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Reading:
    at: float  # wall clock, s
    pg: float  # CPU s of the cluster: the postmaster, its live children and the children it reaped
    busy: float  # CPU s of the whole box: user, nice, system, irq, softirq
    steal: float

    def minus(self, earlier: Reading) -> dict[str, float]:
        return {
            "window_s": round(self.at - earlier.at, 2),
            "pg_cpu_s": round(self.pg - earlier.pg, 2),
            "box_cpu_s": round(self.busy - earlier.busy, 2),
            "steal_s": round(self.steal - earlier.steal, 2),
        }


def pg_cpu(pgdata: Path) -> float:
    import psutil

    try:
        postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
        total = sum(postmaster.cpu_times()[:4])  # its own and its reaped backends'
        for child in postmaster.children():
            try:
                total += sum(child.cpu_times()[:4])
            except psutil.NoSuchProcess:
                continue  # exited between the listing and the read; the postmaster reaps its time
        return total
    except (OSError, ValueError, psutil.Error):
        return float("nan")


def read(pgdata: Path) -> Reading:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return Reading(time.time(), pg_cpu(pgdata), (user + nice + system + irq + softirq) / TICK, steal / TICK)


class LoadWindow:
    """Wraps the referee's run_once: a reading at a run's first row count (its generator has just
    started) and at its final count, added to the run's result. Sinks that count in a file (the
    harness's gmqtt-count) have no such window and get none."""

    def __init__(self, referee: ModuleType, pgdata: Path) -> None:
        self._pgdata = pgdata
        self._run_once = referee.run_once
        self._sql_one = referee.sql_one
        self._readings: list[Reading] = []
        referee.run_once = self.run_once
        referee.sql_one = self.sql_one

    def sql_one(self, url: str, sql: str) -> Any:
        self._readings.append(read(self._pgdata))
        return self._sql_one(url, sql)

    def run_once(self, *args: Any) -> dict[str, Any]:
        self._readings = []
        result: dict[str, Any] = self._run_once(*args)
        if len(self._readings) >= 2 and "error" not in result:
            result.update(self._readings[-1].minus(self._readings[0]))
        return result
