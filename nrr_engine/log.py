"""structlog configuration: JSON lines when stderr is not a TTY, readable console output when it is.

Secrets (the values of the environment variables the config names and of those whose names hint at one,
session ids, private key content) are redacted from every event, library log record, warning and traceback;
redact()/redact_text() do the same for the engine's other sinks (error messages, the ledger's error columns).
Rule: a secret of 6 characters or more is replaced wherever it appears, inside longer words too; a shorter one
wherever it stands as a whole token (not next to a letter or digit) or is a whole value; case-insensitively.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import warnings

import structlog

SECRET_HINTS = ("PASSWORD", "TOKEN", "SECRET", "KEY", "SESSION")
BODY_KEYS = {"body", "content", "response", "response_body", "payload"}  # response bodies can hold customer data
ANYWHERE_MIN = 6      # a secret this long is redacted wherever it appears, even inside a longer word
REDACTED = "[redacted]"
_secret_vars: set[str] = set()
_secret_values: set[str] = set()
# "Authorization: Bearer <token>" / "OAuth <token>" as a server may echo it: the token goes whatever it is
_BEARER = re.compile(r"(?i)\b(bearer|oauth)(\s+)(?!\[redacted\])[^\s\"',;<>()\[\]{}\\]+")
_compiled: dict[frozenset, tuple] = {}


def register_secrets(env_vars=(), values=()) -> None:
    """Name more environment variables (config's *_env) and values (a session id, a private key's content)
    that must never be written anywhere; a multi-line value is also registered line by line."""
    _secret_vars.update(env_vars)
    for v in values:
        if v:
            _secret_values.add(v)
            _secret_values.update(line.strip() for line in str(v).splitlines() if line.strip())


def secrets() -> list[str]:
    """Every value to redact: the registered variables' and values (any length), and those of other variables
    whose names hint at a secret (PASSWORD, TOKEN, ...; from ANYWHERE_MIN characters, since such a name also
    covers flags like FOO_TOKEN_ENABLED=1)."""
    found = set(_secret_values)
    for k, v in os.environ.items():
        if not v:
            continue
        if k in _secret_vars:
            found.add(v)
            found.update(line.strip() for line in v.splitlines() if line.strip())
        elif len(v) >= ANYWHERE_MIN and any(h in k.upper() for h in SECRET_HINTS):
            found.add(v)
    return sorted(found, key=lambda v: (-len(v), v))


def _patterns(found: list[str]) -> tuple[re.Pattern | None, re.Pattern | None]:
    key = frozenset(found)
    if key not in _compiled:
        if len(_compiled) > 64:
            _compiled.clear()
        # long secrets anywhere; short ones (1..5 characters) only as a whole token, so that a 1-character
        # secret does not blank every letter of the output. Matched case-insensitively, longest first; the
        # short ones after the long ones are out (a password and token sent joined: the token then stands alone).
        long = [re.escape(v) for v in found if len(v) >= ANYWHERE_MIN]
        short = [re.escape(v) for v in found if len(v) < ANYWHERE_MIN]
        _compiled[key] = (re.compile("|".join(long), re.IGNORECASE) if long else None,
                          re.compile(rf"(?<![A-Za-z0-9])(?:{'|'.join(short)})(?![A-Za-z0-9])", re.IGNORECASE)
                          if short else None)
    return _compiled[key]


def redact_text(text: str) -> str:
    """`text` with every secret (see secrets()) and every echoed Bearer/OAuth token replaced by [redacted]."""
    if not isinstance(text, str) or not text:
        return text
    found = secrets()
    if text.strip().casefold() in {v.casefold() for v in found}:   # a whole value is a secret, whatever its length
        return REDACTED
    for pattern in _patterns(found):
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
    return _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


def redact(value):
    """`value` with secrets redacted in every string it holds (dicts, lists and tuples, nested; keys too)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, BaseException):
        return redact_text(str(value))
    return value


def _redact(_, __, event: dict) -> dict:
    for k, v in event.items():
        if k in BODY_KEYS and v is not None:
            event[k] = f"[body redacted: {len(str(v))} chars]"
            continue
        event[k] = redact(v)
    return event


def _redacting(renderer):
    """The renderer, then the rendered line redacted again (a secret split by JSON escaping is caught whole)."""
    def render(logger, name, event):
        return redact_text(renderer(logger, name, event))
    return render


class _RedactingFormatter(logging.Formatter):
    """Library log records and Python warnings, redacted like the engine's own events."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


_handler: logging.Handler | None = None


def _route_library_output(stream) -> None:
    """Send the standard library's logging (simple-salesforce, urllib3, ...) and `warnings` through the redactor
    to `stream`, and keep a traceback (uncaught exceptions) redacted too."""
    global _handler
    import traceback

    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream)
    _handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    _handler.setLevel(logging.WARNING)
    root.addHandler(_handler)

    def showwarning(message, category, filename, lineno, file=None, line=None):
        # warnings.warn(...) -> logger "py.warnings" -> the handler above (what logging.captureWarnings does,
        # installed on every configure so nothing set since can bypass it)
        logging.getLogger("py.warnings").warning("%s", warnings.formatwarning(message, category, filename, lineno, line))
    warnings.showwarning = showwarning

    def excepthook(kind, exc, tb):
        sys.stderr.write(redact_text("".join(traceback.format_exception(kind, exc, tb))))
    sys.excepthook = excepthook


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
                    structlog.processors.format_exc_info, _redact, _redacting(renderer)],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _route_library_output(stream)
