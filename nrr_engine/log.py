"""structlog configuration: JSON lines when stderr is not a TTY, readable console output when it is.

Values of environment variables that hold secrets are redacted from every event.
"""
from __future__ import annotations

import logging
import os
import sys

import structlog

SECRET_HINTS = ("PASSWORD", "TOKEN", "SECRET", "KEY", "SESSION")
BODY_KEYS = {"body", "content", "response", "response_body", "payload"}  # response bodies can hold customer data
_secret_vars: set[str] = set()
_secret_values: set[str] = set()


def register_secrets(env_vars=(), values=()) -> None:
    """Name more environment variables (config's *_env) and values (a session id) that must never be logged."""
    _secret_vars.update(env_vars)
    _secret_values.update(v for v in values if v and len(v) >= 6)


def _redact(_, __, event: dict) -> dict:
    secrets = [v for k, v in os.environ.items()
               if (k in _secret_vars or any(h in k.upper() for h in SECRET_HINTS)) and len(v) >= 6]
    secrets += _secret_values
    for k, v in event.items():
        if k in BODY_KEYS and v is not None:
            event[k] = f"[body redacted: {len(str(v))} chars]"
            continue
        if isinstance(v, str):
            for s in secrets:
                if s in v:
                    v = v.replace(s, "[redacted]")
            event[k] = v
    return event


def configure(level: str = "info", json_logs: bool | None = None, stream=None, secrets=()) -> None:
    """Set up structlog once per process; `run_id` is bound with structlog.contextvars."""
    register_secrets(secrets)
    stream = stream or sys.stderr
    if json_logs is None:
        json_logs = not stream.isatty()
    renderer = structlog.processors.JSONRenderer(sort_keys=True) if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, _redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
