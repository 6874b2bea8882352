#!/usr/bin/env bash
# Sourced by .ci/run and deploy/run-local.sh: make sure PostgreSQL, Mosquitto (and Redis) are installed and
# running on this machine, installing them from Debian's packages if they are missing (and, for the
# tests, Chromium; for the venv, python3-venv where Debian's Python lacks ensurepip).
# Exports PG_ADMIN_URL: a superuser URL (no password) the tests and the local run can use.
# Starts only what is not running, and never stops anything it did not start.

set -euo pipefail

_as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

_apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    _as_root apt-get update -qq
    _as_root apt-get install -y -qq "$@" >/dev/null
}

_pg_ok() { psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1; }

ensure_packages() {
    local missing=()
    command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
    command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
    [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
    command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}" >&2
        _apt_install "${missing[@]}"
    fi
}

ensure_test_tools() {
    # tests/test_deploy.py validates compose.yaml with `docker-compose config`, which needs no engine;
    # without recommends, so no Docker engine comes with it.
    if ! command -v docker-compose >/dev/null 2>&1; then
        echo "installing: docker-compose" >&2
        _apt_install --no-install-recommends docker-compose
    fi
}

ensure_postgres() {
    local url="postgresql://postgres@127.0.0.1:5432/postgres"
    if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
        local version
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        echo "starting PostgreSQL $version" >&2
        _as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
        for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
    fi
    if _pg_ok "$url"; then
        export PG_ADMIN_URL="$url"
        return
    fi
    # The system cluster wants a password on TCP (Debian's default). Rather than change its
    # authentication, run a throw-away cluster of our own with trust on loopback.
    local bin port dir
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    port=${AUTOCORE_PRIVATE_PGPORT:-55432}
    dir=${AUTOCORE_PRIVATE_PGDATA:-/tmp/autocore-pg-$port}
    if ! pg_isready -q -h 127.0.0.1 -p "$port" 2>/dev/null; then
        echo "starting a private PostgreSQL cluster on 127.0.0.1:$port ($dir)" >&2
        _as_root rm -rf "$dir"
        _as_root install -d -o postgres -g postgres "$dir"
        _as_root runuser -u postgres -- "$bin/initdb" -A trust -U postgres -D "$dir/data" >/dev/null
        _as_root runuser -u postgres -- "$bin/pg_ctl" -s -D "$dir/data" -l "$dir/log" \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir" -w start
    fi
    export PG_ADMIN_URL="postgresql://postgres@127.0.0.1:$port/postgres"
    _pg_ok "$PG_ADMIN_URL" || { echo "cannot reach PostgreSQL at $PG_ADMIN_URL" >&2; return 1; }
}

ensure_mosquitto() {
    # The tests start brokers of their own; the local run wants one on 1883.
    if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
        echo "starting Mosquitto on 127.0.0.1:1883" >&2
        # Debian's config writes its pid file and log in directories that systemd makes at boot; a
        # machine without systemd (a container, a chroot) has neither, and Mosquitto would exit.
        if id mosquitto >/dev/null 2>&1; then
            _as_root install -d -o mosquitto -g mosquitto /run/mosquitto /var/log/mosquitto
        fi
        _as_root mosquitto -d -c /etc/mosquitto/mosquitto.conf
        for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 0.1; done
        (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null \
            || { echo "Mosquitto did not start (see /var/log/mosquitto/mosquitto.log)" >&2; return 1; }
    fi
}

ensure_redis() {
    # The tests start Redis servers of their own on free ports (and stop them by PID): only the
    # binary is needed here. Debian's package also starts one on 6379 (rate limits in a local run).
    if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
        echo "installing: redis-server" >&2
        _apt_install --no-install-recommends redis-server
    fi
}

ensure_chromium() {
    # The page tests (tests/test_web_page.py) drive Debian's chromium headless through playwright;
    # playwright's own browser download is not used.
    # playwright's driver (node, in its wheel) needs libatomic, which a minimal Debian lacks.
    local missing=()
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    ldconfig -p 2>/dev/null | grep 'libatomic\.so\.1 ' >/dev/null || missing+=(libatomic1)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}" >&2
        _apt_install "${missing[@]}"
    fi
}

_venv_works() { [ -x .venv/bin/python ] && .venv/bin/python -m pip --version >/dev/null 2>&1; }

ensure_python() {
    # One venv in the checkout, with the project installed editable plus its dev extras.
    local py=${PYTHON:-python3}
    if ! _venv_works; then
        # A venv left half-made by an earlier failure (no pip in it) is made again.
        rm -rf .venv
        if ! "$py" -m venv .venv >/dev/null 2>&1; then
            rm -rf .venv
            # Debian ships venv's pip bootstrap (ensurepip) separately, in python3-venv; only
            # Debian's own Python can be helped that way: a Python from elsewhere brings its own.
            if [ "$(command -v "$py")" = /usr/bin/python3 ] && command -v apt-get >/dev/null 2>&1; then
                echo "installing: python3-venv (Debian's python3 cannot make a venv without it)" >&2
                _apt_install python3-venv
            fi
            "$py" -m venv .venv || { echo "$py cannot create a virtual environment: install its venv module" >&2; return 1; }
        fi
    fi
    # Installed again only when pyproject.toml changed since (and so also works offline after once).
    local stamp=.venv/.autocore-installed
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
        if .venv/bin/python -m pip install -q -e ".[dev]" >.venv/pip-install.log 2>&1; then
            touch "$stamp"
        else
            grep -v -i -E "^(warning|  !!|\s*$)" .venv/pip-install.log | tail -n 20 >&2 || true
        fi
    fi
    .venv/bin/python -c "import service, gmqtt, asyncpg, paho" >/dev/null
}
