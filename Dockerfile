# syntax=docker/dockerfile:1
# AutoCore Monitor: `docker build -t autocore-monitor .`
#
# Layout in the image: /app/service, /app/migrations and /app/alembic.ini side by side, because
# service/storage/migrate.py finds the migrations relative to the package's parent directory. The
# package is on PYTHONPATH rather than installed into site-packages for the same reason.
#
# Migrations: DB_MIGRATE_ON_START=true (the default here) makes the service apply Alembic migrations
# at start, before it subscribes or serves, under a PostgreSQL advisory lock (replicas starting
# together take turns). Set DB_MIGRATE_ON_START=false to run them as a separate step instead:
#   docker run --rm --env-file .env autocore-monitor alembic upgrade head

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
# Only pyproject.toml first: the dependency layer is rebuilt when the dependencies change, not the code.
COPY pyproject.toml ./
# The runtime dependencies alone ([project] dependencies, no dev extras), read from pyproject.toml.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && /opt/venv/bin/pip install -r requirements.txt

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 autocore \
    && useradd --system --uid 10001 --gid autocore --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin autocore
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini ./
COPY migrations ./migrations
COPY service ./service
# Compiled at build time, as root: the app directory is read-only to the service's user.
RUN python -m compileall -q /app/service /app/migrations
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DB_MIGRATE_ON_START=true
USER 10001:10001
EXPOSE 8000
# Python's own HTTP client, so the image needs no curl. A 503 (unhealthy, or degraded: a silent feed)
# raises, so the check exits 1; Docker only reports it (orchestrators use /health/live and /health/ready).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/mqtt-monitor', timeout=4)"]
# On SIGTERM the service commits and acknowledges what it holds (SHUTDOWN_GRACE_SECONDS) before it
# exits: give it longer than that before SIGKILL (`docker stop -t`, compose's stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["uvicorn", "service.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]
