"""Log set-up: our loggers at the configured level, as text (default) or one JSON object per line."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has: anything else on a record came in through `extra=` and is a field.
# (uvicorn adds `color_message`: the same text with terminal colours.)
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName", "color_message",
}  # fmt: skip

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: str, log_format: str = "text") -> None:
    """Our loggers at the configured level; uvicorn keeps its own handlers (in JSON too when asked)."""
    logger = logging.getLogger("service")
    logger.setLevel(level)
    if not logging.getLogger().handlers:
        handler = next((h for h in logger.handlers if getattr(h, "_autocore", False)), None)
        if handler is None:
            handler = logging.StreamHandler()
            handler._autocore = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        handler.setFormatter(formatter(log_format))
        logger.propagate = False
    if log_format == "json":
        # uvicorn's own lines (start-up, errors, access) in the same shape, for one log pipeline.
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            for h in logging.getLogger(name).handlers:
                h.setFormatter(JsonFormatter())
    # gmqtt logs every reconnect attempt at WARNING with its own wording; ours are enough.
    logging.getLogger("gmqtt").setLevel(max(logging.getLevelName(level), logging.ERROR))
