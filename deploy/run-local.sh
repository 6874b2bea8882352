#!/usr/bin/env bash
# Run the service on this machine: installs PostgreSQL/Mosquitto if missing, creates the
# `autocore` database, applies migrations and serves on :8000. Settings from the environment / .env.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/ensure-services.sh

ensure_packages
ensure_postgres
ensure_mosquitto
ensure_python

if [ -z "${DATABASE_URL:-}" ] && ! grep -qs '^DATABASE_URL=' .env; then
    base=${PG_ADMIN_URL%/*}
    psql "$PG_ADMIN_URL" -Atqc "SELECT 1 FROM pg_database WHERE datname = 'autocore'" | grep -q 1 \
        || psql "$PG_ADMIN_URL" -qc 'CREATE DATABASE autocore'
    export DATABASE_URL="${base/postgresql:/postgresql+asyncpg:}/autocore"
fi
exec .venv/bin/uvicorn service.main:app --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
