"""Topic templates with named parameters, compiled once and matched many times.

    compile_topic("autocore/{device_id}/relay/{relay:int}/status")
    -> TopicTemplate(levels=("autocore", Param("device_id", str), "relay", Param("relay", int), "status"),
                     filter="autocore/+/relay/+/status")

A parameter takes exactly one topic level; `{name}` is a string, `{name:int}` a non-negative integer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_PARAM = re.compile(r"^\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<type>[a-z]+))?\}$")


def _to_int(value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"{value!r} is not a non-negative integer")
    return int(value)


def _to_str(value: str) -> str:
    if not value:
        raise ValueError("empty topic level")
    return value


CONVERTERS: dict[str, Callable[[str], Any]] = {"str": _to_str, "int": _to_int}


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    convert: Callable[[str], Any]


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    template: str
    levels: tuple[str | Param, ...]
    filter: str

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(level.name for level in self.levels if isinstance(level, Param))

    def match(self, levels: list[str]) -> dict[str, Any] | None:
        """Parameters of a topic already split on '/', or None when it does not fit."""
        if len(levels) != len(self.levels):
            return None
        params: dict[str, Any] = {}
        for want, got in zip(self.levels, levels, strict=True):
            if isinstance(want, Param):
                try:
                    params[want.name] = want.convert(got)
                except ValueError:
                    return None
            elif want != got:
                return None
        return params

    def format(self, **params: Any) -> str:
        """The concrete topic for these parameters (the reverse of match)."""
        missing = set(self.param_names) - params.keys()
        if missing:
            raise KeyError(f"topic {self.template!r} needs {sorted(missing)}")
        return "/".join(str(params[level.name]) if isinstance(level, Param) else level for level in self.levels)


def compile_topic(template: str) -> TopicTemplate:
    if not template or template.startswith("/") or template.endswith("/"):
        raise ValueError(f"topic template {template!r} must not be empty or start/end with '/'")
    levels: list[str | Param] = []
    seen: set[str] = set()
    for raw in template.split("/"):
        found = _PARAM.match(raw)
        if found:
            name, kind = found["name"], found["type"] or "str"
            if kind not in CONVERTERS:
                raise ValueError(f"unknown parameter type {kind!r} in topic template {template!r}")
            if name in seen:
                raise ValueError(f"duplicated parameter {name!r} in topic template {template!r}")
            seen.add(name)
            levels.append(Param(name, CONVERTERS[kind]))
        elif any(ch in raw for ch in "{}+#") or not raw:
            raise ValueError(f"invalid topic level {raw!r} in topic template {template!r}")
        else:
            levels.append(raw)
    mqtt_filter = "/".join("+" if isinstance(level, Param) else level for level in levels)
    return TopicTemplate(template, tuple(levels), mqtt_filter)
