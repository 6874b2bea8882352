from __future__ import annotations

import logging


def configure(level: str) -> None:
    """Our loggers at the configured level; uvicorn keeps its own handlers."""
    logger = logging.getLogger("service")
    logger.setLevel(level)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    # gmqtt logs every reconnect attempt at WARNING with its own wording; ours are enough.
    logging.getLogger("gmqtt").setLevel(max(logging.getLevelName(level), logging.ERROR))
