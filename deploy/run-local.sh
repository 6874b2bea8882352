#!/usr/bin/env bash
# Run the service on this machine: installs PostgreSQL/Mosquitto if missing, creates the
# `autocore` database, applies migrations and serves on :8000. Settings from the environment / .env.
#
#   bash deploy/run-local.sh --demo
# adds a simulated fleet of 25 devices (bad messages, devices dropping off) and prints the page's
# address. It uses the running broker and PostgreSQL without reconfiguring them, with a database
# (autocore_demo), topic prefix (autocore-demo) and MQTT client id of its own, and the first free
# port from 8000 on. Ctrl-C stops the service and the simulator.
#
#   bash deploy/run-local.sh --demo --for 30
# stops by itself after 30 seconds, printing what the service stored (exit status 0 if it did).
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/ensure-services.sh

demo=0 duration=""
if [ "${1:-}" = "--demo" ]; then demo=1; shift; fi
if [ "$demo" = 1 ] && [ "${1:-}" = "--for" ]; then duration=${2:?--for needs a number of seconds}; shift 2; fi

ensure_packages
ensure_postgres
ensure_mosquitto
ensure_python

create_database() {
    psql "$PG_ADMIN_URL" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$1'" | grep -q 1 \
        || psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $1"
    local base=${PG_ADMIN_URL%/*}
    echo "${base/postgresql:/postgresql+asyncpg:}/$1"
}

if [ "$demo" = 0 ]; then
    if [ -z "${DATABASE_URL:-}" ] && ! grep -qs '^DATABASE_URL=' .env; then
        DATABASE_URL=$(create_database autocore)
        export DATABASE_URL
    fi
    exec .venv/bin/uvicorn service.main:app --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
fi

# --- the demo ---------------------------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=${PORT:-8000}
if [ -z "${PORT:-}" ]; then
    while ! port_free "$port"; do port=$((port + 1)); done
fi
# Environment variables win over .env: the demo never writes to the real database or topics.
DATABASE_URL=$(create_database autocore_demo)
export DATABASE_URL
# The local broker that ensure_mosquitto made sure of (an address from the environment wins).
export MQTT_BROKER_HOST=${MQTT_BROKER_HOST:-127.0.0.1} MQTT_BROKER_PORT=${MQTT_BROKER_PORT:-1883}
export MQTT_TOPIC_PREFIX=autocore-demo MQTT_CLIENT_ID="autocore-demo-$$" MQTT_SESSION_EXPIRY=0
export DATABASE_SCHEMA=public HEALTH_STALE_AFTER_SECONDS=60
if [ -z "${API_TOKEN:-}" ]; then
    API_TOKEN=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(12))')
fi
export API_TOKEN

pids=()
stop_demo() {
    trap - INT TERM EXIT
    [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    echo "demo stopped" >&2
}
trap stop_demo EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

.venv/bin/uvicorn service.main:app --host "${HOST:-127.0.0.1}" --port "$port" --no-access-log &
pids+=($!)
for _ in $(seq 150); do
    .venv/bin/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health/live', timeout=1)" \
        >/dev/null 2>&1 && break
    kill -0 "${pids[0]}" 2>/dev/null || { echo "the service did not start" >&2; exit 1; }
    sleep 0.2
done
.venv/bin/python -m service.simulate --host "$MQTT_BROKER_HOST" --port "$MQTT_BROKER_PORT" \
    --prefix autocore-demo --devices 25 --rate 25 --bad-share 0.03 --churn 0.01 --offline-seconds 20 --quiet &
pids+=($!)
cat <<MSG

  AutoCore Monitor demo: open http://${HOST:-127.0.0.1}:$port/
  25 simulated devices on topics autocore-demo/..., database autocore_demo.
  Replaying a dead letter from the page asks for the API token: $API_TOKEN
  Ctrl-C stops the service and the simulator.

MSG
if [ -n "$duration" ]; then
    sleep "$duration" &
    timer=$!
    wait -n "${pids[@]}" "$timer" || true
    if kill -0 "${pids[0]}" 2>/dev/null && kill -0 "${pids[1]}" 2>/dev/null; then
        # What the demo produced, from the service's own API.
        .venv/bin/python - "$port" <<'PY'
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
get = lambda path: json.load(urllib.request.urlopen(base + path, timeout=5))
online = get("/devices?limit=1&online=true")["total"]
print(f"demo after its run: {get('/devices?limit=1')['total']} devices ({online} online), "
      f"{get('/health/mqtt-monitor')['messages_processed']} messages committed, "
      f"{get('/dead-letters?limit=1')['total']} dead letters; page: {base}/ answers "
      f"{urllib.request.urlopen(base + '/', timeout=5).status}")
PY
        exit 0
    fi
else
    wait -n "${pids[@]}" || true
fi
echo "the service or the simulator stopped" >&2
exit 1
