"""The rules file (RULES_FILE, YAML) as Pydantic models: shape and literal values only.

What needs the route table (route names, field names, templates, feedback loops) is checked when
the file is compiled against it (service/rules/loader.py).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:ms|s|m|h|d))+")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> timedelta:
    """'0s', '30s', '5m', '1h30m', '250ms' (a bare number is seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return timedelta(seconds=value)
    text = str(value).replace(" ", "")
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"{value!r} is not a duration (use e.g. 0s, 30s, 5m, 1h, 1h30m)")
    return timedelta(seconds=sum(int(n) * _UNIT[u] for n, u in _DURATION.findall(text)))


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
RuleName = Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,64}$")]
Severity = Literal["info", "warning", "critical"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AlertAction(_Strict):
    alert: Annotated[str, Field(min_length=1, max_length=1000)]  # text template


class PublishSpec(_Strict):
    topic: Annotated[str, Field(min_length=1, max_length=1024)]  # template
    payload: Any = None  # JSON value; strings in it are templates
    qos: Literal[0, 1] = 1  # what MqttTransport.publish carries out (QoS 2 is not offered)
    retain: bool = False


class PublishAction(_Strict):
    publish: PublishSpec


class WebhookSpec(_Strict):
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)]


class WebhookAction(_Strict):
    webhook: WebhookSpec




def _action_kind(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        return str(next(iter(value)))
    for kind, model in (("alert", AlertAction), ("publish", PublishAction), ("webhook", WebhookAction)):
        if isinstance(value, model):
            return kind
    return None


Action = Annotated[
    Annotated[AlertAction, Tag("alert")] | Annotated[PublishAction, Tag("publish")]
    | Annotated[WebhookAction, Tag("webhook")],
    Discriminator(_action_kind),
]


class Rule(_Strict):
    name: RuleName
    on: Annotated[str, Field(min_length=1)]  # a route name (GET /routes)
    devices: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=lambda: ["*"])  # globs on device_id
    if_: Annotated[str, Field(alias="if", min_length=1, max_length=2000)]
    for_: Annotated[Duration, Field(alias="for")] = timedelta(0)
    severity: Severity = "warning"
    then: Annotated[list[Action], Field(min_length=1)]
    # A publish whose topic one of our routes matches would feed back into the rules: refused
    # unless the rule says so.
    loop: Literal["refused", "allowed"] = "refused"

    @field_validator("then", mode="before")
    @classmethod
    def _one_key_each(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, dict) or len(item) != 1:
                    raise ValueError(f"action {i + 1}: expected one of alert:, publish:, webhook:")
                (key,) = item
                if key not in ("alert", "publish", "webhook"):
                    raise ValueError(f"action {i + 1}: unknown action {key!r} (use alert, publish or webhook)")
        return value


class RulesFile(_Strict):
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> RulesFile:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule {rule.name!r}: the name is used twice")
            seen.add(rule.name)
        return self
