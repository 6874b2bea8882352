#!/usr/bin/env bash
# One command: install what the benchmark needs, then run every scenario (see bench/bench.py).
#   bash bench/run.sh                 # all scenarios
#   bash bench/run.sh telemetry --peers nodered-batched
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/ensure-services.sh
ensure_packages
ensure_python
.venv/bin/python -m pip install -q -e ".[bench]" 2>&1 | grep -v -i -E "^(warning|  !!|\s*$)" || true
exec .venv/bin/python bench/bench.py "${@:-all}"
