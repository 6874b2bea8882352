"""The rules file: what loads, and the one line that says why something does not (no services needed)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from simpleeval import SimpleEval

from service.models import RelayStatus, Telemetry
from service.routes import build_router
from service.rules.expressions import check, compile_any, compile_route, route_names
from service.rules.loader import RulesError, load_text
from service.rules.schema import parse_duration

ROUTER = build_router("autocore")

EXAMPLE = """
rules:
  - name: overheat                 # unique, [a-z0-9_-]
    on: telemetry
    devices: ["ESP32_*"]
    if: "temperature > 70"
    for: 0s
    severity: critical
    then:
      - alert: "{device_id} is at {temperature} °C"
      - publish: {topic: "autocore/{device_id}/relay/0/set", payload: {"state": false}, qos: 1}
      - webhook: {url: "https://ops.example/hooks/autocore"}
  - name: pump-on
    on: relay
    if: "relay == 3 and state"
    then:
      - webhook: {url: "https://ops.example/hooks/pumps"}
"""


def one_rule(**fields: str) -> str:
    rule = {"name": "r1", "on": "telemetry", "if": '"temperature > 70"', "then": '[{alert: "hot"}]', **fields}
    return "rules:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in rule.items() if v is not None) + "\n"


def test_the_issues_example_loads() -> None:
    rules = load_text(EXAMPLE, ROUTER)
    assert [r.name for r in rules.rules] == ["overheat", "pump-on"]
    overheat = rules["overheat"]
    assert (overheat.route, overheat.severity, overheat.hold) == ("telemetry", "critical", timedelta(0))
    assert overheat.matches_device("ESP32_007") and not overheat.matches_device("PUMP_1")
    assert rules["pump-on"].matches_device("anything")
    assert rules.by_route["relay"].relay_param == "relay"
    assert rules.by_route["telemetry"].relay_param is None
    assert overheat.render({"device_id": "ESP32_1", "temperature": 71.5}) == [
        {"alert": {"text": "ESP32_1 is at 71.5 °C", "severity": "critical", "key": "overheat"}},
        {"publish": {"topic": "autocore/ESP32_1/relay/0/set", "payload": {"state": False}, "qos": 1, "retain": False}},
        {"webhook": {"url": "https://ops.example/hooks/autocore"}},
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (one_rule(on="nope"),
         "rule 'r1': unknown route 'nope' (routes: status, telemetry, relay, display, system)"),
        (one_rule(**{"if": '"temprature > 70"'}),
         "rule 'r1': unknown field 'temprature' (known: device_id, humidity, memory_free, temperature, voltage)"),
        (one_rule(**{"if": '"temperature >"'}), "rule 'r1': condition 'temperature >' does not parse: invalid syntax"),
        (one_rule(**{"if": '"temperature.real > 1"'}),
         "rule 'r1': attribute access not allowed (only comparisons, and/or/not, arithmetic)"),
        (one_rule(**{"if": '"abs(temperature) > 1"'}),
         "rule 'r1': calls not allowed (only comparisons, and/or/not, arithmetic)"),
        (one_rule(**{"if": "\"__import__('os') > 1\""}),
         "rule 'r1': calls not allowed (only comparisons, and/or/not, arithmetic)"),
        (one_rule(**{"if": '"temperature ** 2 > 1"'}),
         "rule 'r1': operator 'temperature ** 2' not allowed (only comparisons, and/or/not, arithmetic)"),
        (one_rule(**{"if": '"device_id > 3"'}), "rule 'r1': 'device_id > 3' compares str with num"),
        (one_rule(**{"if": '"timestamp > 3"'}),
         "rule 'r1': field 'timestamp' cannot be used in a condition (not a number, text or bool)"),
        (one_rule(then='[{alert: "{device_id} at {temp}"}]'),
         "rule 'r1': template '{device_id} at {temp}': unknown field 'temp' (known: device_id, humidity, "
         "memory_free, rule, severity, temperature, timestamp, voltage)"),
        (one_rule(then='[{alert: "{device_id.__class__}"}]'),
         "rule 'r1': template '{device_id.__class__}': placeholder {device_id.__class__} must be a plain field name"),
        (one_rule(then='[{alert: "{temperature:zz}"}]'),
         "rule 'r1': template '{temperature:zz}': bad format spec 'zz' for 'temperature'"),
        (one_rule(then='[{publish: {topic: "autocore/{device_id}/telemetry", payload: 1}}]'),
         "rule 'r1': publish topic 'autocore/{device_id}/telemetry' is matched by route 'telemetry': it would feed "
         "back into the rules (say `loop: allowed` if that is intended)"),
        (one_rule(then='[{publish: {topic: "autocore/+/x"}}]'),
         "rule 'r1': publish topic 'autocore/+/x' is not a topic name (no wildcards or empty levels)"),
        (one_rule(then='[{shout: "x"}]'),
         "rule 'r1': then: action 1: unknown action 'shout' (use alert, publish or webhook)"),
        (one_rule(then="[]"), "rule 'r1': then: List should have at least 1 item after validation, not 0"),
        (one_rule(then='[{webhook: {url: "ftp://x"}}]'),
         "rule 'r1': then.0.url: String should match pattern '^https?://[^\\s]+$'"),
        (one_rule(name="Bad Name"), "rule 'Bad Name': name: String should match pattern '^[a-z0-9_-]{1,64}$'"),
        (one_rule(**{"for": "5 minutes"}),
         "rule 'r1': for: '5 minutes' is not a duration (use e.g. 0s, 30s, 5m, 1h, 1h30m)"),
        (one_rule(severity="loud"), "rule 'r1': severity: Input should be 'info', 'warning' or 'critical'"),
        (one_rule(loop="maybe"), "rule 'r1': loop: Input should be 'refused' or 'allowed'"),
        (one_rule(colour="red"), "rule 'r1': colour: Extra inputs are not permitted"),
        (one_rule(name=None), "rule 1: name: Field required"),
        (one_rule() + one_rule().removeprefix("rules:\n"), "rule 'r1': the name is used twice"),
        ("rules: [ {name: a", "not YAML at line 1: expected ',' or '}', but got '<stream end>'"),
        ("- just a list", "expected a mapping with a 'rules:' list"),
    ],
)  # fmt: skip
def test_each_problem_is_one_line_naming_the_rule(text: str, line: str) -> None:
    with pytest.raises(RulesError) as refused:
        load_text(text, ROUTER, source="rules.yaml")
    assert str(refused.value) == f"rules file 'rules.yaml': {line}"
    assert "\n" not in str(refused.value)


def test_a_feedback_publish_loads_when_the_rule_allows_the_loop() -> None:
    text = one_rule(then='[{publish: {topic: "autocore/{device_id}/telemetry", payload: {t: 1}}}]', loop="allowed")
    assert load_text(text, ROUTER).rules[0].name == "r1"
    # Under another prefix the same topic is no route of ours: nothing to refuse.
    assert load_text(one_rule(then='[{publish: {topic: "elsewhere/{device_id}/telemetry"}}]'), ROUTER).rules


def test_an_empty_file_is_no_rules() -> None:
    assert load_text("", ROUTER).rules == ()
    assert load_text("rules: []", ROUTER).rules == ()


@pytest.mark.parametrize(
    ("text", "seconds"), [("0s", 0), ("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("250ms", 0.25), (90, 90)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


CONDITIONS = [
    "temperature > 30",
    "temperature >= 20 and humidity < 50",
    "not temperature > 25 or voltage < 3.1",
    "20 < temperature <= 30",
    "temperature * 1.8 + 32 > 80",
    "(temperature - 20) / 2 > humidity % 7",
    "memory_free // 1000 == 42",
    "device_id == 'ESP32_001' and temperature != 21.5",
    "-temperature < -25",
    "temperature > humidity or temperature == 20",
]


def test_compiled_conditions_agree_with_simpleeval() -> None:
    """The compiled form against the well-kept interpreter, on many messages."""
    names = route_names(Telemetry, ["device_id"])
    checked = [check(c, names) for c in CONDITIONS]
    evaluate = compile_route(checked, names)
    reference = SimpleEval(functions={})
    parsed = [reference.parse(c) for c in CONDITIONS]
    rng = random.Random(13)
    for _ in range(2000):
        fields = {"temperature": round(rng.uniform(10, 40), 1), "humidity": round(rng.uniform(0, 100), 1),
                  "voltage": round(rng.uniform(2.8, 3.4), 2), "memory_free": rng.randrange(38_000, 46_000)}  # fmt: skip
        device = rng.choice(["ESP32_001", "ESP32_002"])
        reference.names = {**fields, "device_id": device}
        expected = tuple(bool(reference.eval("", previously_parsed=p)) for p in parsed)
        assert evaluate(Telemetry(**fields), {"device_id": device}) == expected


def test_a_missing_field_gives_no_value_and_topic_params_win() -> None:
    names = route_names(RelayStatus, ["device_id", "relay"], ["relay"])
    evaluate = compile_route([check("relay == 3 and state", names), check("triggered_by == 'manual'", names)], names)
    assert evaluate(RelayStatus(state=True, relay_index=None), {"device_id": "d", "relay": 3}) == (True, None)
    assert evaluate(RelayStatus(state=True, triggered_by="manual"), {"device_id": "d", "relay": 2}) == (False, True)


def run_service_module(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "RULES_", "DATABASE_"))}
    return subprocess.run([sys.executable, *args], env={**clean, **(env or {})}, capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parent)  # fmt: skip


def test_start_up_and_the_check_command_say_the_same_line(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text(one_rule(**{"if": '"temprature > 70"'}))
    expected = (f"rules file {str(bad)!r}: rule 'r1': unknown field 'temprature' "
                "(known: device_id, humidity, memory_free, temperature, voltage)")  # fmt: skip
    started = run_service_module("-c", "import service.main", env={"RULES_FILE": str(bad)})
    assert started.returncode == 1
    assert started.stderr.strip() == expected
    checked = run_service_module("-m", "service", "rules", "check", str(bad))
    assert (checked.returncode, checked.stderr.strip(), checked.stdout) == (1, expected, "")

    good = tmp_path / "good.yaml"
    good.write_text(EXAMPLE)
    ok = run_service_module("-m", "service", "rules", "check", str(good))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0] == f"{good}: 2 rules ok (by route: telemetry: 1, relay: 1)"
    missing = run_service_module("-m", "service", "rules", "check", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1
    assert "cannot be read" in missing.stderr


def test_the_fast_path_says_whether_any_rule_holds() -> None:
    """compile_any keeps only the loosest of the bounds on one expression: on many random rule sets
    and messages it answers as `any()` of the exact values does."""
    names = route_names(Telemetry, ["device_id"])
    shapes = ["temperature > {a}", "{a} < temperature", "temperature >= {a}", "humidity < {b}", "-{a} > -temperature",
              "(temperature - 32) * 5 / 9 > {c}", "humidity > {b} and temperature > {a}", "voltage <= 3.{d} or "
              "memory_free < {e}", "temperature == {a}", "not temperature > {a}"]  # fmt: skip
    rng = random.Random(1301)
    for _ in range(200):
        conditions = [rng.choice(shapes).format(a=rng.randrange(15, 40), b=rng.randrange(20, 90),
                                                c=rng.randrange(-5, 10), d=rng.randrange(0, 4),
                                                e=rng.randrange(38_000, 46_000))
                      for _ in range(rng.randrange(1, 8))]  # fmt: skip
        checked = [check(c, names) for c in conditions]
        evaluate, any_true = compile_route(checked, names), compile_any(checked, names)
        for _ in range(50):
            model = Telemetry(temperature=rng.randrange(100, 450) / 10, humidity=rng.randrange(0, 1000) / 10,
                              voltage=rng.randrange(28, 34) / 10,
                              memory_free=rng.randrange(38_000, 46_000))  # fmt: skip
            assert any_true(model, {"device_id": "d"}) == any(evaluate(model, {"device_id": "d"})), conditions
