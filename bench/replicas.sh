#!/usr/bin/env bash
# N replicas of the service on one shared subscription (the harness's sinks autocore-x1..x3):
# HTTP ports 8089, 8090, ...; each its own client id ({pid}). The harness stops the whole process
# group with SIGTERM; each replica drains and disconnects.
set -euo pipefail
n=${1:-1}
pids=()
for i in $(seq 0 $((n - 1))); do
    .venv/bin/python -m uvicorn service.main:app --host 127.0.0.1 --port $((8089 + i)) --no-access-log \
        --log-level warning &
    pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true; wait' TERM INT
wait
