"""RULES_FILE -> a RuleSet compiled against the route table, or one line saying what is wrong.

A bad file stops start-up (RulesError, like config.SettingsError), is refused by POST /rules/reload
and SIGHUP (the old rules stay), and is what `python -m service rules check FILE` reports.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from service.routing.router import Route, Router
from service.routing.topics import CONVERTERS, Param
from service.rules.expressions import (
    Evaluate,
    ExpressionError,
    Names,
    check,
    compile_any,
    compile_one,
    compile_route,
    route_names,
)
from service.rules.schema import AlertAction, PublishAction, Rule, RulesFile, WebhookAction
from service.rules.templates import Template, TemplateError, check_template, check_value, render_value

# Names a template may use beyond the route's: the rule's own.
_RULE_NAMES = ("rule", "severity")

RULE_ALERT = "rule"  # the kind of the alerts rules open


def alert_key(rule: str, relay: int) -> str:
    """A rule's alert for a device is keyed by the rule's name; on a route with a relay, per relay
    (`pump-on/3`), so that each relay's alert resolves on its own."""
    return rule if relay < 0 else f"{rule}/{relay}"


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. In YAML 1.1 (PyYAML's default) the key `on:` is True."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class RulesError(SystemExit):
    """The rules file is refused: one line naming the rule and the problem."""


@dataclass(frozen=True, eq=False)
class CompiledRule:
    name: str
    route: str
    source: Rule
    hold: timedelta  # `for:`
    severity: str
    matches_device: Callable[[str], bool]
    actions: tuple[tuple[str, Any], ...]  # (kind, checked templates)
    index: int  # position among its route's rules

    @property
    def has_alert(self) -> bool:
        return any(kind == "alert" for kind, _ in self.actions)

    @property
    def publish_topics(self) -> list[Template]:
        return [spec["topic"] for kind, spec in self.actions if kind == "publish"]

    def render(self, context: Mapping[str, Any], relay: int = -1) -> list[dict[str, Any]]:
        """The firing's actions with every template filled in (what the outbox carries out)."""
        ctx = {**context, "rule": self.name, "severity": self.severity}
        out: list[dict[str, Any]] = []
        for kind, spec in self.actions:
            if kind == "alert":
                out.append({"alert": {"text": spec.render(ctx), "severity": self.severity,
                                      "key": alert_key(self.name, relay)}})  # fmt: skip
            elif kind == "publish":
                out.append({"publish": {"topic": spec["topic"].render(ctx),
                                        "payload": render_value(spec["payload"], ctx),
                                        "qos": spec["qos"], "retain": spec["retain"]}})  # fmt: skip
            else:
                out.append({"webhook": {"url": spec["url"]}})
        return out


@dataclass(frozen=True, eq=False)
class RouteRules:
    route: str
    rules: tuple[CompiledRule, ...]
    evaluate: Evaluate  # all of the route's conditions at once
    any_true: Callable[[Any, Any], bool]  # whether any holds (the fast path while all are false)
    each: tuple[Evaluate, ...]  # one per rule: used when `evaluate` raises (say, a division by zero)
    relay_param: str | None  # rule state is per (device, relay) on routes with a relay parameter


@dataclass(frozen=True, eq=False)
class RuleSet:
    rules: tuple[CompiledRule, ...] = ()
    by_route: Mapping[str, RouteRules] = field(default_factory=dict)
    source: str | None = None  # the file it came from
    loaded_at: float = field(default_factory=time.time)

    @property
    def publish_topics(self) -> list[str]:
        """The templates of every publish action's topic (the router's own topics, service/runtime.py)."""
        return [t.text for rule in self.rules for t in rule.publish_topics]

    def __getitem__(self, name: str) -> CompiledRule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)


def load_file(path: str | Path, router: Router) -> RuleSet:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"rules file {str(path)!r}: cannot be read ({exc.strerror or exc})") from None
    return load_text(text, router, source=str(path))


def load_text(text: str, router: Router, source: str = "<rules>") -> RuleSet:
    where = f"rules file {source!r}"
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RulesError(f"{where}: not YAML{at}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RulesError(f"{where}: expected a mapping with a 'rules:' list")
    try:
        parsed = RulesFile.model_validate(data)
    except ValidationError as exc:
        raise RulesError(f"{where}: {_describe(exc, data)}") from None
    compiled: list[CompiledRule] = []
    grouped: dict[str, list[tuple[CompiledRule, Any]]] = {}
    names_of: dict[str, Names] = {}
    for rule in parsed.rules:
        try:
            route = router[rule.on]
        except KeyError:
            known = ", ".join(r.name for r in router.routes)
            raise RulesError(f"{where}: rule {rule.name!r}: unknown route {rule.on!r} (routes: {known})") from None
        names = names_of.setdefault(route.name, _names(route))
        try:
            condition = check(rule.if_, names)
            actions = _actions(rule, names, router)
        except (ExpressionError, TemplateError) as exc:
            raise RulesError(f"{where}: rule {rule.name!r}: {exc}") from None
        index = len(grouped.get(route.name, []))
        item = CompiledRule(rule.name, route.name, rule, rule.for_, rule.severity, _globs(rule.devices),
                            actions, index)  # fmt: skip
        compiled.append(item)
        grouped.setdefault(route.name, []).append((item, condition))
    by_route: dict[str, RouteRules] = {}
    for route_name, items in grouped.items():
        names = names_of[route_name]
        route = router[route_name]
        relay = next((p for p in route.topic.param_names if p != "device_id" and _is_int(route, p)), None)
        by_route[route_name] = RouteRules(
            route_name,
            tuple(r for r, _ in items),
            compile_route([c for _, c in items], names),
            compile_any([c for _, c in items], names),
            tuple(compile_one(c, names) for _, c in items),
            relay,
        )
    return RuleSet(tuple(compiled), by_route, source)


def _names(route: Route) -> Names:
    params = route.topic.param_names
    return route_names(route.model, params, [p for p in params if _is_int(route, p)])


def _is_int(route: Route, param: str) -> bool:
    return any(isinstance(level, Param) and level.name == param and level.convert is CONVERTERS["int"]
               for level in route.topic.levels)  # fmt: skip


def _globs(patterns: Sequence[str]) -> Callable[[str], bool]:
    if "*" in patterns:
        return lambda _device: True
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return lambda device: regex.match(device) is not None


def _actions(rule: Rule, names: Names, router: Router) -> tuple[tuple[str, Any], ...]:
    allowed = {*names.fields, *names.params, *names.template_only, *_RULE_NAMES}
    out: list[tuple[str, Any]] = []
    for action in rule.then:
        if isinstance(action, AlertAction):
            out.append(("alert", check_template(action.alert, allowed)))
        elif isinstance(action, PublishAction):
            spec = action.publish
            topic = check_template(spec.topic, allowed)
            _refuse_loop(rule, topic, router)
            out.append(("publish", {"topic": topic, "payload": check_value(spec.payload, allowed),
                                    "qos": spec.qos, "retain": spec.retain}))  # fmt: skip
        elif isinstance(action, WebhookAction):
            out.append(("webhook", {"url": action.webhook.url}))
    return tuple(out)


def _refuse_loop(rule: Rule, topic: Template, router: Router) -> None:
    sample = topic.render(dict.fromkeys(topic.names, "x"))
    if any(ch in sample for ch in "+#") or not sample or "//" in sample:
        raise TemplateError(f"publish topic {topic.text!r} is not a topic name (no wildcards or empty levels)")
    levels = sample.split("/")
    for route in router.routes:
        if route.topic.match(levels) is not None and rule.loop != "allowed":
            raise TemplateError(
                f"publish topic {topic.text!r} is matched by route {route.name!r}: it would feed back into "
                "the rules (say `loop: allowed` if that is intended)"
            )


def _describe(exc: ValidationError, data: dict[str, Any]) -> str:
    err = exc.errors(include_url=False)[0]
    loc = list(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        raw = data.get("rules") or []
        item = raw[loc[1]] if loc[1] < len(raw) else None
        name = item.get("name") if isinstance(item, dict) else None
        who = f"rule {name!r}" if isinstance(name, str) else f"rule {loc[1] + 1}"
        rest = ".".join(str(p) for p in loc[2:] if p not in ("alert", "publish", "webhook"))
        return f"{who}: {rest + ': ' if rest else ''}{msg}"
    return f"{'.'.join(str(p) for p in loc)}: {msg}" if loc else msg
