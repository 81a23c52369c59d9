"""structlog configuration: JSON lines when stderr is not a TTY, readable console output when it is.

Secrets (the values of the environment variables the config names and of those whose names hint at one,
session ids, private key content) are redacted from every event, library log record, warning and traceback,
and from everything the CLI prints (stdout and stderr go through `redacting_stdio`); redact()/redact_text() and
a `Redactor` do the same for the engine's other outputs for people (error messages, the ledger's messages,
plan.json, report files). Rule: a secret of 6 characters or more is replaced wherever it appears, inside longer
words too; a shorter one wherever it stands as a whole token (not next to a letter or digit) or is a whole
value; case-insensitively. The forms the engine derives from a value that holds a secret (a name's normalised
key in a family key, a key field's casefold: derived_forms) are secrets too. Copies of the org's data (the
working copy, Data Loader change sets, full exports, the columnar store) are not outputs for people and are
never redacted: a change set must carry the exact value to the org.
"""
from __future__ import annotations

import datetime as dt
import functools
import io
import json
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
# "Authorization: Bearer <token>" / "OAuth <token>" as a server may echo it. A token is what access tokens look
# like: a Salesforce session id is the 15-character org Id, "!" and some 96 characters of letters, digits, "."
# and "_" (00Dx0000000BV7z!AR8AQ...); a JWT is base64url parts joined by "."; RFC 6750's b64token adds "~+/"
# and "=" padding. So: 20 or more such characters, then the rest of the word (up to a quote, bracket, comma,
# space ...) goes with them. Prose is left alone ("the JWT bearer flow signs", "OAuth 2.0"): hardly a word of
# prose is that long.
_TOKEN_MIN = 20
_BEARER = re.compile(r"(?i)\b(bearer|oauth)(\s+)(?!\[redacted\])(?=[A-Za-z0-9!._~+/=-]{%d})"
                     r"[^\s\"',;<>()\[\]{}\\]+" % _TOKEN_MIN)
# words that start an echoed token (_BEARER): a text without them and without any secret is left as it is
_BEARER_WORDS = ("bearer", "oauth")
_compiled: dict[frozenset, tuple] = {}
_registered = 0       # bumped by register_secrets: a Redactor made before knows it is out of date


# a PEM block's armour ("-----BEGIN RSA PRIVATE KEY-----"): the same in every key file, and quoted by the
# engine's own hints, so not a secret line of a key's content
_PEM_ARMOUR = re.compile(r"-----(BEGIN|END) [A-Z0-9 ]+-----")


def _lines(value: str):
    """The lines of a multi-line value that are secret on their own: not blank, not a PEM armour line."""
    for line in value.splitlines():
        line = line.strip()
        if line and not _PEM_ARMOUR.fullmatch(line):
            yield line


def register_secrets(env_vars=(), values=()) -> None:
    """Name more environment variables (config's *_env) and values (a session id, a private key's content)
    that must never be written anywhere; a multi-line value is also registered line by line (a PEM block's
    BEGIN/END lines aside)."""
    global _registered
    _secret_vars.update(env_vars)
    for v in values:
        if v:
            _secret_values.add(v)
            _secret_values.update(_lines(str(v)))
    _registered += 1


# The forms the engine derives from a value that holds a secret, and writes for people: a name's folded tokens
# ("Qq7-Planted-Secret US" -> "qq7 planted secret us") and its key (legal forms, a leading "The" dropped, "&" as
# "and") in family keys (`placeholder:name:<key>`), stems and evidence; a key field's case-folded value
# (`<field>:<value>`, ß -> ss); a non-printable character escaped for a terminal. A website's registrable domain
# is the site lower-cased and cut at its dots, so it holds the secret as it is (matched ignoring case) or a part.
# A derived form this short keeps too little of the secret to give it away, and would blank common words.
VARIANT_MIN = 4


@functools.lru_cache(maxsize=4096)
def derived_forms(value: str) -> tuple[str, ...]:
    """The derived forms of a secret (see VARIANT_MIN) that the patterns' IGNORECASE would not match as they are."""
    if value.isascii() and value.isalnum():
        return ()   # an ASCII word folds to itself in lower case: the secret as it is already matches
    from .hierarchy import normalise
    from .safe_output import terminal

    forms = {" ".join(normalise.fold(value)), " ".join(normalise.name_key(value)), value.strip().casefold(),
             terminal(value)}
    itself = re.compile(re.escape(value), re.IGNORECASE)
    return tuple(sorted(f for f in forms if len(f) >= VARIANT_MIN and not itself.fullmatch(f)))


_found: tuple[tuple, list[str]] = ((), [])


def secrets() -> list[str]:
    """Every value to redact: the registered variables' and values (any length), and those of other variables
    whose names hint at a secret (PASSWORD, TOKEN, ...; from ANYWHERE_MIN characters, since such a name also
    covers flags like FOO_TOKEN_ENABLED=1), and the derived forms of each from ANYWHERE_MIN characters.
    Gathered again only when the registry or the environment changed since the last call (every log event
    asks; scanning the environment each time cost ~4 ms an event)."""
    global _found
    environ = getattr(os.environ, "_data", None)   # the raw mapping: comparing it decodes nothing
    key = (_registered, frozenset(_secret_vars), frozenset(_secret_values),
           tuple(environ.items()) if isinstance(environ, dict) else tuple(os.environ.items()))
    if _found[0] == key:
        return list(_found[1])
    found = _gather()
    _found = (key, found)
    return list(found)


def _gather() -> list[str]:
    found = set(_secret_values)
    for k, v in os.environ.items():
        if not v:
            continue
        if k in _secret_vars:
            found.add(v)
            found.update(_lines(v))
        elif len(v) >= ANYWHERE_MIN and any(h in k.upper() for h in SECRET_HINTS):
            found.add(v)
    for v in [v for v in found if len(v) >= ANYWHERE_MIN and len(v.splitlines()) == 1]:   # (lines: registered)
        found.update(derived_forms(v))
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


def _fold(text: str) -> str:
    """`text` case-folded as far as the patterns' IGNORECASE matches (which also takes a dotless ı for an i)."""
    return text.casefold().replace("ı", "i")


class Redactor:
    """The redaction rule for the secrets known when it was made, set up once: for an output that writes many
    texts (a plan of a million changes, a long CSV), where gathering the secrets for each would cost more than
    the write. A text that holds no secret and no Bearer/OAuth word (one case-folded substring search per
    secret) is returned as it is; only the others go through the patterns."""

    def __init__(self, found: list[str] | None = None):
        self.found = secrets() if found is None else list(found)
        self.registered = _registered
        self._folded = frozenset(v.casefold() for v in self.found)
        self._patterns = _patterns(self.found)
        # a multi-line value is found by its lines (each registered too); JSON escapes ('"', '\\', controls)
        # are searched for in their escaped form as well, so a dumped line can be checked without walking it
        single = [v for v in self.found if len(v.splitlines()) == 1]
        needles = {_fold(v) for v in single} | {_fold(json.dumps(v, ensure_ascii=False)[1:-1]) for v in single}
        self._needles = tuple(sorted(needles | set(_BEARER_WORDS), key=len, reverse=True))
        # a non-ASCII secret: json.dumps(ensure_ascii=True) writes it as \u escapes, where a case variant hides
        self._ascii = all(v.isascii() for v in single)

    def __bool__(self) -> bool:
        """Whether there is a secret to redact (a text can still hold an echoed Bearer token)."""
        return bool(self.found)

    @property
    def stale(self) -> bool:
        """Whether secrets were registered since (a session id after the login)."""
        return self.registered != _registered

    def hits(self, text: str) -> bool:
        """Whether `text` may hold a secret or a Bearer/OAuth token (never False when it does)."""
        low = _fold(text)
        for needle in self._needles:
            if needle in low:
                return True
        return False

    def text(self, text: str) -> str:
        """`text` with every secret and every echoed Bearer/OAuth token replaced by [redacted]; a text that is
        a secret as a whole (whatever its length) keeps only the white space around it."""
        if not isinstance(text, str) or not text or not self.hits(text):
            return text
        core = text.strip()
        if core.casefold() in self._folded:
            start = len(text) - len(text.lstrip())
            return text[:start] + REDACTED + text[start + len(core):]
        for pattern in self._patterns:
            if pattern is not None:
                text = pattern.sub(REDACTED, text)
        return _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)

    def value(self, value):
        """`value` with secrets redacted in every string it holds (dicts, lists and tuples, nested; keys too)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return type(value)(self.value(v) for v in value)
        if isinstance(value, BaseException):
            return self.text(str(value))
        return value

    def json(self, value, **kwargs) -> str:
        """json.dumps(value, **kwargs) with every string in it redacted. The dumped text is searched once; only
        when it may hold a secret is the value walked and dumped again, so valid JSON stays valid (a number
        that equals a short secret is left alone: only strings are redacted)."""
        text = json.dumps(value, **kwargs)
        probe = text if self._ascii or not kwargs.get("ensure_ascii", True) else \
            json.dumps(value, **{**kwargs, "ensure_ascii": False})
        return json.dumps(self.value(value), **kwargs) if self.hits(probe) else text


_redactors: dict[tuple, Redactor] = {}


def redactor() -> Redactor:
    """A Redactor for the secrets known now (cached by them)."""
    found = tuple(secrets())
    r = _redactors.get(found)
    if r is None or r.stale:
        if len(_redactors) > 64:
            _redactors.clear()
        r = _redactors[found] = Redactor(list(found))
    return r


def redact_text(text: str) -> str:
    """`text` with every secret (see secrets()) and every echoed Bearer/OAuth token replaced by [redacted]."""
    if not isinstance(text, str) or not text:
        return text
    return redactor().text(text)


def redact(value):
    """`value` with secrets redacted in every string it holds (dicts, lists and tuples, nested; keys too)."""
    return redactor().value(value)


def _redact(_, __, event: dict) -> dict:
    r = redactor()
    for k, v in event.items():
        if k in BODY_KEYS and v is not None:
            event[k] = f"[body redacted: {len(str(v))} chars]"
            continue
        event[k] = r.value(v)
    return event


def _redacting(renderer):
    """The renderer, then the rendered line redacted again (a secret split by JSON escaping is caught whole)."""
    def render(logger, name, event):
        return redact_text(renderer(logger, name, event))
    return render


class _RedactingFormatter(logging.Formatter):
    """Library log records and Python warnings, redacted like the engine's own events: as one JSON object per
    record when the engine's events are JSON lines (stderr not a terminal), else as a line of text."""

    def __init__(self, json_lines: bool = False):
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        if not self.json_lines:
            return redact_text(super().format(record))
        warning = getattr(record, "python_warning", None)
        event = {**structlog.contextvars.get_contextvars(), "level": record.levelname.lower(), "logger": record.name,
                 "timestamp": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        if warning is not None:   # warnings.warn(...): its category and where it was raised, the text in one field
            event.update(event="python.warning", **warning)
        else:
            event.update(event="library.log", message=record.getMessage())
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return redact_text(json.dumps(redact(event), sort_keys=True, default=str))


_handler: logging.Handler | None = None


def _route_library_output(stream, json_lines: bool = False) -> None:
    """Send the standard library's logging (simple-salesforce, urllib3, ...) and `warnings` through the redactor
    to `stream` (JSON lines like the engine's events when `json_lines`), and keep a traceback (uncaught
    exceptions) redacted too."""
    global _handler
    import traceback

    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream)
    _handler.setFormatter(_RedactingFormatter(json_lines))
    _handler.setLevel(logging.WARNING)
    root.addHandler(_handler)

    def showwarning(message, category, filename, lineno, file=None, line=None):
        # warnings.warn(...) -> logger "py.warnings" -> the handler above (what logging.captureWarnings does,
        # installed on every configure so nothing set since can bypass it)
        logging.getLogger("py.warnings").warning(
            "%s", warnings.formatwarning(message, category, filename, lineno, line),
            extra={"python_warning": {"category": category.__name__, "message": str(message),
                                      "source": f"{filename}:{lineno}"}})
    warnings.showwarning = showwarning

    def excepthook(kind, exc, tb):
        sys.stderr.write(redact_text("".join(traceback.format_exception(kind, exc, tb))))
    sys.excepthook = excepthook


class _RedactingStream(io.TextIOBase):
    """A text stream (stdout, stderr) that writes through the redactor: whole lines as they complete, the rest
    of a line on flush (click.echo flushes after each message), so a secret is never cut in two between writes.
    It takes text only (click then sees a text stream and never reaches round it for a binary buffer)."""

    def __init__(self, raw):
        super().__init__()
        self.raw = raw
        self._pending = ""
        self._redactor: Redactor | None = None

    @property
    def encoding(self):
        return getattr(self.raw, "encoding", None) or "utf-8"

    @property
    def errors(self):
        return getattr(self.raw, "errors", None) or "strict"

    @property
    def name(self):
        return getattr(self.raw, "name", "<redacted stream>")

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.raw.isatty()

    def fileno(self) -> int:
        return self.raw.fileno()

    def refresh(self) -> None:
        """Gather the secrets again (the environment may have changed since the stream was made)."""
        self._redactor = None

    def _redact(self, text: str) -> str:
        if self._redactor is None or self._redactor.stale:
            self._redactor = Redactor()
        return self._redactor.text(text)

    def write(self, text) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        whole = self._pending + text
        # a line ends at \n, or at \r for a progress bar redrawing its line (tqdm on a terminal): shown as it goes
        cut = max(whole.rfind("\n"), whole.rfind("\r")) + 1
        self._pending = whole[cut:]
        if cut:
            self.raw.write(self._redact(whole[:cut]))
        return len(text)

    def flush(self) -> None:
        if getattr(self.raw, "closed", False):   # a stream swapped back and closed (click's test runner)
            self._pending = ""
            return
        if self._pending:
            pending, self._pending = self._pending, ""
            self.raw.write(self._redact(pending))
        self.raw.flush()

    def close(self) -> None:
        """Flush; the stream written to is not this one's to close."""
        try:
            self.flush()
        except (OSError, ValueError):
            pass
        self._pending = ""
        super().close()


def redacting_stdio() -> None:
    """Make sys.stdout and sys.stderr write through the redactor: every summary, finding, table, CSV or JSON
    document and message the CLI prints is redacted as the logs and the ledger are (a secret that occurs in the
    data, a password pasted into a CRM field, is printed [redacted]); idempotent."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, _RedactingStream):
            stream.refresh()
        elif stream is not None:
            setattr(sys, name, _RedactingStream(stream))


def configure(level: str = "info", json_logs: bool | None = None, stream=None, secrets=()) -> None:
    """Set up structlog once per process; `run_id` is bound with structlog.contextvars. Without a `stream` (the
    CLI), stdout and stderr are made to write through the redactor too (`redacting_stdio`)."""
    register_secrets(secrets)
    if stream is None:
        redacting_stdio()
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
    _route_library_output(stream, json_logs)
