"""structlog configuration: JSON lines when stderr is not a TTY, readable console output when it is.

Values of environment variables that hold secrets are redacted from every event.
"""
from __future__ import annotations

import logging
import os
import sys

import structlog

SECRET_HINTS = ("PASSWORD", "TOKEN", "SECRET", "KEY", "SESSION")


def _redact(_, __, event: dict) -> dict:
    secrets = [v for k, v in os.environ.items() if any(h in k.upper() for h in SECRET_HINTS) and len(v) >= 6]
    if not secrets:
        return event
    for k, v in event.items():
        if isinstance(v, str):
            for s in secrets:
                if s in v:
                    v = v.replace(s, "[redacted]")
            event[k] = v
    return event


def configure(level: str = "info", json_logs: bool | None = None, stream=None) -> None:
    """Set up structlog once per process; `run_id` is bound with structlog.contextvars."""
    stream = stream or sys.stderr
    if json_logs is None:
        json_logs = not stream.isatty()
    renderer = structlog.processors.JSONRenderer(sort_keys=True) if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True), _redact,
                    structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
