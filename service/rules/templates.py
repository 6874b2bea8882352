"""Text templates of actions ("{device_id} is at {temperature} °C"): checked at load, rendered at firing.

`str.format` syntax with plain names only (no attribute or index lookups, no conversions); a
format spec such as `{temperature:.1f}` is allowed and tried at load. In a publish payload, a
string that is exactly one placeholder ("{temperature}") becomes the value itself (a number
stays a number in the JSON).
"""

from __future__ import annotations

import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

_SAMPLES: tuple[Any, ...] = (0, 0.5, "x", True)


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class Template:
    text: str
    names: frozenset[str]
    whole: str | None  # the one name when the text is exactly "{name}"

    def render(self, context: Mapping[str, Any]) -> Any:
        if self.whole is not None:
            return context.get(self.whole)
        try:
            return self.text.format_map(_Missing(context))
        except (ValueError, TypeError):
            # A spec that does not fit this value (".1f" on text or on a missing reading): plain values.
            return _PLAIN.vformat(self.text, (), _Missing(context))


class _Missing(dict[str, Any]):
    def __init__(self, context: Mapping[str, Any]) -> None:
        super().__init__(context)

    def __missing__(self, key: str) -> str:
        return ""


class _PlainFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        return "" if value is None else str(value)


_PLAIN = _PlainFormatter()


def check_template(text: str, allowed: Collection[str]) -> Template:
    names: set[str] = set()
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise TemplateError(f"template {text!r}: {exc}") from None
    for _literal, field, spec, conversion in parts:
        if field is None:
            continue
        if not field.isidentifier():
            raise TemplateError(f"template {text!r}: placeholder {{{field}}} must be a plain field name")
        if conversion is not None:
            raise TemplateError(f"template {text!r}: conversions (!{conversion}) are not allowed")
        if spec and "{" in spec:
            raise TemplateError(f"template {text!r}: nested placeholders are not allowed")
        if field not in allowed:
            raise TemplateError(f"template {text!r}: unknown field {field!r} (known: {', '.join(sorted(allowed))})")
        if spec and not _fits_some(spec):
            raise TemplateError(f"template {text!r}: bad format spec {spec!r} for {field!r}")
        names.add(field)
    whole = parts[0][1] if len(parts) == 1 and not parts[0][0] and parts[0][1] and not parts[0][2] else None
    return Template(text, frozenset(names), whole)


def _fits_some(spec: str) -> bool:
    for sample in _SAMPLES:
        try:
            format(sample, spec)
        except (ValueError, TypeError):
            continue
        return True
    return False


def check_value(value: Any, allowed: Collection[str]) -> Any:
    """A JSON value with every string replaced by its checked Template."""
    if isinstance(value, str):
        return check_template(value, allowed)
    if isinstance(value, list):
        return [check_value(v, allowed) for v in value]
    if isinstance(value, dict):
        return {str(k): check_value(v, allowed) for k, v in value.items()}
    return value


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(value, Template):
        return value.render(context)
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, context) for k, v in value.items()}
    return value
