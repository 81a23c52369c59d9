"""Salesforce as source and sink: the only module that imports simple_salesforce.

It fixes what the client leaves open: a timeout on every call, retries with backoff (5xx,
REQUEST_LIMIT_EXCEEDED, UNABLE_TO_LOCK_ROW), one session refresh, API calls counted by kind, typed values
(Decimal, never float), and error messages without response bodies or secrets. Records read are
streamed page by page into a SQLite mirror that the pipeline reads exactly as it reads a local org; after
the first read only what changed since (SystemModstamp, with queryAll for deletes and merges) is read into it.
"""
from __future__ import annotations

import csv
import datetime as dt
import html
import io
import itertools
import json
import os
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import requests
import structlog
import tenacity
from simple_salesforce import Salesforce, SalesforceLogin
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceError, SalesforceOperationError

from .. import log as log_config
from ..config import SalesforceSettings
from ..errors import ConfigError, DataError, Location, SourceUnavailable
from ..model import FieldNeed
from .grants import no_field_fix, no_object_fix
from .local_org import LocalOrg, WriteResult

log = structlog.get_logger("nrr_engine.salesforce")

NULL = "#N/A"                       # Bulk API 2.0: the cell value that sets a field to null
COLLECTION_SIZE = 200               # records per sObject Collections call
# Bytes of UTF-8 CSV per ingest job: Salesforce takes 150 MB of base64 per upload and asks for at most 100 MB
# before encoding (base64 adds about a third; Upload Job Data, Bulk API 2.0). MB read as 10^6, the smaller.
UPLOAD_LIMIT = 100_000_000
_LOCK = "UNABLE_TO_LOCK_ROW"
_GONE = "ENTITY_IS_DELETED"         # a delete replayed, or of a record already deleted: it is gone, as asked
_ENDED = ("JobComplete", "Failed", "Aborted")
_ORPHAN_PAGES = 20                  # pages of Get All Jobs read when looking for an orphan job (1,000 jobs each)
_PROVISIONAL = "zzzzzzzzz"          # marks Ids a plan names for records Salesforce has not created yet
_NUMBER_TYPES = ("double", "currency", "int", "percent", "long")
_TEXT_TYPES = ("string", "textarea", "picklist", "url", "email", "phone", "id", "reference")
_NUMBER_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")  # a valid JSON number
_STATE = "_nrr_sync"                # the mirror's record of each object's last read: fields, high-water mark, full read
_STAMP = "SystemModstamp"           # set by Salesforce on every insert, update and delete (indexed): what changed reads use


def call_kind(method: str, url: str) -> str:
    """The kind of an API call, for the per-run count (`record` is a per-record call: never made by a run)."""
    path = urlsplit(url).path
    if "/oauth2/token" in path or "/Soap/u/" in path:
        return "auth"
    if re.search(r"/limits/recordCount", path):
        return "record_count"
    if path.rstrip("/").endswith("/limits"):
        return "limits"
    if path.endswith("/describe") or path.endswith("/describe/"):
        return "describe"
    if "/jobs/query" in path:
        return "bulk_query"
    if "/jobs/ingest" in path:
        return "bulk_ingest"
    if "/composite/sobjects" in path:
        return "collections"
    if re.search(r"/(query|queryAll)(/|$)", path):
        return "rest_query"
    if re.search(r"/sobjects/[^/]+/[^/]+", path):
        return "record"
    return "other"


class _Transient(Exception):
    """A response worth retrying (5xx, REQUEST_LIMIT_EXCEEDED)."""

    def __init__(self, response: requests.Response):
        super().__init__(response.status_code)
        self.response = response


class _Unconfirmed(SourceUnavailable):
    """A call that is not safe to repeat failed without an answer (5xx, timeout, dropped connection):
    Salesforce may or may not have done it, so the caller checks (job state, orphan jobs) before going on."""


def _idempotent(method: str, url: str) -> bool:
    """Whether sending the call twice has the effect of sending it once, so a failure can simply be retried.

    Reads and logins are; sObject Collections updates and upserts set the same values again (an upsert
    finds the record the first attempt created by its key); a Collections delete replayed answers
    ENTITY_IS_DELETED, which counts as deleted. Creating a Bulk job, uploading its data, changing its
    state and inserting records are not: a replay leaves an orphan job, doubles the data or fails."""
    path = urlsplit(url).path
    if method in ("GET", "HEAD") or "/Soap/u/" in path or "/oauth2/token" in path:
        return True
    return "/composite/sobjects" in path and method in ("PATCH", "DELETE")


def _error_code(response: requests.Response) -> str | None:
    """Salesforce's errorCode of an error response (REST list, Bulk object, OAuth error), else None."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return body[0].get("errorCode")
    if isinstance(body, dict):
        return body.get("errorCode") or body.get("error")
    return None


class ApiSession(requests.Session):
    """A requests session that times out, retries, refreshes an expired session once and counts calls."""

    def __init__(self, s: SalesforceSettings, sleep: Callable[[float], None] = time.sleep):
        super().__init__()
        self.settings = s
        log_config.register_secrets(s.secret_vars())
        self.calls: Counter[str] = Counter()
        self.limit_info: str | None = None        # last Sforce-Limit-Info header, e.g. "api-usage=25/15000"
        self.server_time: dt.datetime | None = None   # Salesforce's clock, from the last answer's Date header
        self.token: str | None = None
        self.instance_host: str | None = None
        self.relogin: Callable[[], str] | None = None
        self._sleep = sleep

    def request(self, method, url, *args, **kwargs):  # noqa: D401 - requests' signature
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.settings.timeout_s
        refreshed = False
        while True:
            if self.token and urlsplit(url).hostname == self.instance_host:
                kwargs["headers"] = {**(kwargs.get("headers") or {}), "Authorization": f"Bearer {self.token}"}
            response = self._with_retries(method, url, args, kwargs)
            if (response.status_code == 401 and not refreshed and self.relogin is not None
                    and _error_code(response) == "INVALID_SESSION_ID"):
                log.warning("salesforce.session_refresh")
                self.token = self.relogin()
                log_config.register_secrets(values=[self.token])
                refreshed = True
                continue
            return response

    def _with_retries(self, method, url, args, kwargs) -> requests.Response:
        """Send, retrying with backoff what is safe to repeat: idempotent calls on 5xx, timeouts and dropped
        connections; any call on REQUEST_LIMIT_EXCEEDED or a connect timeout (refused, so never done).
        A call that is not idempotent and got no answer raises _Unconfirmed at once (see _idempotent)."""
        s = self.settings
        safe = _idempotent(method, url)

        def retry(state: tenacity.RetryCallState) -> bool:
            exc = state.outcome.exception()
            if isinstance(exc, requests.ConnectTimeout):
                return True
            if isinstance(exc, _Transient):
                return safe or exc.response.status_code == 403
            return safe and isinstance(exc, (requests.ConnectionError, requests.Timeout))

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(s.retries + 1),
            wait=tenacity.wait_exponential(multiplier=s.backoff_s, max=60) if s.backoff_s else tenacity.wait_none(),
            retry=retry, sleep=self._sleep, reraise=True,
            before_sleep=lambda st: log.warning("salesforce.retry", kind=call_kind(method, url),
                                                attempt=st.attempt_number, reason=_reason(st.outcome.exception())))
        try:
            return retrying(self._send_once, method, url, args, kwargs)
        except _Transient as exc:
            if safe or exc.response.status_code == 403:  # retries spent: the client raises on the last response
                return exc.response
            raise _Unconfirmed(f"Salesforce gave no answer to a {method} {call_kind(method, url)} call "
                               f"({_reason(exc)}); it may or may not have been done") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            if not safe and not isinstance(exc, requests.ConnectTimeout):
                raise _Unconfirmed(f"Salesforce gave no answer to a {method} {call_kind(method, url)} call "
                                   f"({type(exc).__name__}); it may or may not have been done") from None
            raise SourceUnavailable(f"Salesforce did not answer ({type(exc).__name__}) after {s.retries} retries: "
                                    f"{call_kind(method, url)} call to {urlsplit(url).hostname}") from None

    def _send_once(self, method, url, args, kwargs) -> requests.Response:
        self.calls[call_kind(method, url)] += 1
        response = super().request(method, url, *args, **kwargs)
        info = response.headers.get("Sforce-Limit-Info")
        if info:
            self.limit_info = info
        date = response.headers.get("Date")
        if date:
            try:
                self.server_time = parsedate_to_datetime(date).astimezone(dt.timezone.utc)
            except (TypeError, ValueError):
                pass
        soap_fault = b"Fault>" in response.content[:4096] if response.status_code == 500 else False
        if (response.status_code >= 500 and not soap_fault) or (
                response.status_code == 403 and _error_code(response) == "REQUEST_LIMIT_EXCEEDED"):
            raise _Transient(response)
        return response


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, _Transient):
        return f"HTTP {exc.response.status_code} {_error_code(exc.response) or ''}".strip()
    return type(exc).__name__


_CLIENT_ERRORS = (SalesforceError, SalesforceOperationError)


def describe_error(exc: Exception) -> str:
    """errorCode: message of a client exception, without the response body around it (bodies can hold data),
    and without any secret a server echoed in it (a Bearer token, a password)."""
    return log_config.redact_text(_describe_error(exc))


def _describe_error(exc: Exception) -> str:
    if isinstance(exc, SalesforceOperationError):  # Bulk job failures: the job's errorMessage, not a body
        return str(exc).replace("Job failure. Response content: ", "JOB_FAILED: ")[:240]
    content = getattr(exc, "content", None)
    items = content if isinstance(content, list) else [content] if isinstance(content, dict) else []
    for item in items:
        if isinstance(item, dict) and (item.get("errorCode") or item.get("message")):
            code = item.get("errorCode", "ERROR")
            text = f"{code}: {str(item.get('message', ''))[:200]}"
            return f"{text} ({_ERROR_HINTS[code]})" if code in _ERROR_HINTS else text
    return f"HTTP {getattr(exc, 'status', '?')} {type(exc).__name__}"


# The Account fields salesforce/ deploys (its metadata), which exist together or not at all
_SHIPPED = {"Account": ("Ultimate_Parent__c", "Hierarchy_Depth__c", "Hierarchy_ARR__c", "Child_Count__c",
                        "Hierarchy_Locked__c", "Family_Key__c")}

# What a 403 on /limits means for a least-privilege integration user: the resource is "available ... for API
# users with the View Setup and Configuration permission" (REST API Developer Guide: Limits), and without it an
# org answers API_DISABLED_FOR_ORG "The REST API is not enabled for this Organization." (forceworkbench#681), a
# text that says nothing true about a run whose REST calls all work.
LIMITS_REFUSED = ("/limits needs View Setup and Configuration, which the integration user does not need; using the "
                  "Sforce-Limit-Info header / SELECT COUNT() instead")


def _log_limits_refused(event: str, reason: str, error: str, fallback: str) -> None:
    """A refused /limits or /limits/recordCount: info when the refusal is the expected least-privilege one (no
    View Setup and Configuration: API_DISABLED_FOR_ORG or INSUFFICIENT_ACCESS*), a warning for any other 403;
    Salesforce's code and text in fields of their own, never in the reason."""
    code = error.split(":", 1)[0]
    expected = code == "API_DISABLED_FOR_ORG" or code.startswith("INSUFFICIENT_ACCESS")
    (log.info if expected else log.warning)(
        event, reason=reason, least_privilege=expected, salesforce_code=code, salesforce_error=error,
        fallback=fallback, fix="nothing to fix: grant View Setup and Configuration only if you want /limits read")

# Salesforce's codes whose message does not say what to grant (its text for a user without API Enabled says
# "The REST API is not enabled for this Organization")
_ERROR_HINTS = {
    "API_DISABLED_FOR_ORG": "the integration user needs API Enabled; /limits also needs View Setup and Configuration",
    "INSUFFICIENT_ACCESS_OR_READONLY": "the integration user lacks the object permission for this operation",
    "INVALID_FIELD_FOR_INSERT_UPDATE": "field-level security: grant edit access to the field",
}


def _env(name: str, what: str, cfg: Path) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"source.auth needs {what} in the environment variable {name}, which is not set",
                          Location(str(cfg), field=name))
    return value


KEY_FILE_MAX = 64 * 1024   # a PEM RSA key of 16,384 bits is under 13 KB: anything larger is not one


def private_key(s: SalesforceSettings, config_file: Path) -> str:
    """The JWT signing key: the PEM text of source.private_key_file (or the file $SF_PRIVATE_KEY_FILE names), read
    once and checked to be an unencrypted RSA private key. Anything else is a ConfigError (exit 2) at the config
    line of source.private_key_file, or naming the variable, that says what the file is instead and never quotes
    it: the content is registered as a secret before it is parsed."""
    import stat

    env = os.environ.get(s.private_key_file_env)
    key_file = s.private_key_file or (Path(env) if env else None)
    if key_file is None:
        raise ConfigError(f"source.auth jwt needs the private key file: set source.private_key_file or "
                          f"${s.private_key_file_env} to a PEM file (unset)", Location(str(config_file), field="source.auth"))
    if s.private_key_file is not None:
        what, where = f"source.private_key_file: {str(key_file)!r}", s.private_key_file_at or Location(str(config_file))
    else:   # not quoted: a variable whose name holds KEY is redacted wherever its value shows (log.py's rule)
        what, where = f"the file ${s.private_key_file_env} names", Location()
    expected = ("expected the PEM file of the connected app's private key (it starts -----BEGIN PRIVATE KEY----- or "
                "-----BEGIN RSA PRIVATE KEY-----; the certificate uploaded to the app is made from it)")
    try:
        fd = os.open(key_file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist; {expected}", where) from None
    except OSError as exc:
        raise ConfigError(f"{what} cannot be read ({exc.strerror}); it must be readable by the user the engine "
                          "runs as (and by no one else: chmod 600)", where) from None
    mode = os.fstat(fd).st_mode   # before fdopen, which refuses a folder with a bare "Is a directory: <fd>"
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket")
        raise ConfigError(f"{what} is not a regular file (it is {kind}); {expected}", where)
    with os.fdopen(fd, "rb") as fh:   # opened once: what is checked is what is used
        try:
            data = fh.read(KEY_FILE_MAX + 1)
        except OSError as exc:
            raise ConfigError(f"{what} cannot be read ({exc.strerror})", where) from None
    text = data.decode("utf-8", errors="replace")
    log_config.register_secrets(values=[text])   # never in an output, whatever goes wrong next
    if len(data) > KEY_FILE_MAX:
        raise ConfigError(f"{what} is larger than {KEY_FILE_MAX // 1024} KB, so it is not a PEM private key; {expected}",
                          where)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:   # "Password was not given but private key is encrypted"
        raise ConfigError(f"{what} is an encrypted private key; the engine signs with it unattended, so it needs "
                          "the key unencrypted (openssl pkey -in ENCRYPTED.key -out server.key), kept chmod 600",
                          where) from None
    except Exception:   # ValueError, UnsupportedAlgorithm: whatever the file holds, it is not a key we can use
        # what it is instead, told by its PEM labels alone (never by quoting it)
        kind = ("it holds a certificate, which goes to the connected app; this setting names the private key"
                if b"-----BEGIN CERTIFICATE" in data else "it holds a public key" if b"PUBLIC KEY-----" in data
                else "it has no PEM block" if b"-----BEGIN " not in data
                else "its PEM block does not parse as a private key")
        raise ConfigError(f"{what} is not a PEM private key ({kind}); {expected}", where) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{what} is not an RSA private key; the JWT bearer flow signs with RS256, which needs one "
                          "(openssl genrsa -out server.key 2048)", where)
    return text


# what each auth reads from the environment besides the username and the key file (connect's _env calls)
_AUTH_SECRETS = {"jwt": (("consumer_key_env", "the connected app's consumer key"),),
                 "client_credentials": (("consumer_key_env", "the connected app's consumer key"),
                                        ("consumer_secret_env", "the connected app's consumer secret")),
                 "password": (("password_env", "the password"),),
                 "session": (("session_id_env", "the session id (access token)"),)}


def missing_credential(s: SalesforceSettings, config_file: Path) -> ConfigError | None:
    """What `validate` checks of a login without making one (no network call): the key file, when one is set, is
    read and checked as connect() checks it, so a bad one raises its ConfigError (exit 2 at its config line, as a
    run); then the first thing a login needs that is not set (the username, the key file, a variable of
    _AUTH_SECRETS) is returned as the error connect() would raise; None when a login can be tried."""
    if s.auth == "jwt" and (s.private_key_file is not None or os.environ.get(s.private_key_file_env)):
        private_key(s, config_file)
    try:
        if s.auth in ("jwt", "password") and not (s.username or os.environ.get(s.username_env)):
            raise ConfigError(f"source.auth {s.auth} needs a username: set source.username or ${s.username_env}",
                              Location(str(config_file), field="source.auth"))
        if s.auth == "jwt" and s.private_key_file is None and not os.environ.get(s.private_key_file_env):
            private_key(s, config_file)   # raises: no key file set
        for attr, what in _AUTH_SECRETS.get(s.auth, ()):
            _env(getattr(s, attr), what, config_file)
    except ConfigError as exc:
        return exc
    return None


def any_credential_set(s: SalesforceSettings) -> bool:
    """Whether one of the secrets the auth reads is set: a variable of _AUTH_SECRETS, or jwt's key file
    (validate's wording: credentials that are incomplete, or none at all)."""
    key_file = s.auth == "jwt" and (s.private_key_file is not None or bool(os.environ.get(s.private_key_file_env)))
    return key_file or any(os.environ.get(getattr(s, attr)) for attr, _ in _AUTH_SECRETS.get(s.auth, ()))


def connect(s: SalesforceSettings, session: ApiSession, config_file: Path) -> Salesforce:
    """Log in through `session`: the OAuth 2.0 JWT bearer or client credentials flow, SOAP login()
    (auth: password; retired by Salesforce in Summer '27), or an instance URL + session id."""
    username = s.username or os.environ.get(s.username_env)
    where = Location(str(config_file), field="source.auth")
    if s.auth in ("jwt", "password") and not username:
        raise ConfigError(f"source.auth {s.auth} needs a username: set source.username or ${s.username_env}", where)
    secrets: list[str] = []
    if s.auth == "jwt":
        key = private_key(s, config_file)
        consumer_key = _env(s.consumer_key_env, "the connected app's consumer key", config_file)
        secrets += [consumer_key]
        # The assertion's audience is the authorization server, https://login.salesforce.com (or
        # https://test.salesforce.com for a sandbox), never the My Domain; the My Domain is where it is posted
        # (Salesforce Help: OAuth 2.0 JWT Bearer Flow for Server-to-Server Integration). simple-salesforce
        # builds the audience from `domain` and the token URL from `instance_url`.
        mine = s.my_domain()
        audience = "test" if s.domain == "test" or ".sandbox." in f".{mine or ''}." else "login"
        login = lambda: SalesforceLogin(session=session, username=username, consumer_key=consumer_key,  # noqa: E731
                                        privatekey=key, domain=audience, instance_url=mine)
    elif s.auth == "client_credentials":
        mine = s.my_domain()
        if mine is None:
            raise ConfigError("source.auth client_credentials needs the org's My Domain: set source.domain: "
                              "<mydomain>.my (or source.instance_url: https://<mydomain>.my.salesforce.com)", where)
        consumer_key = _env(s.consumer_key_env, "the connected app's consumer key", config_file)
        secret = _env(s.consumer_secret_env, "the connected app's consumer secret", config_file)
        secrets += [consumer_key, secret]
        # the token is requested from the My Domain with the key and secret (Salesforce Help: OAuth 2.0 Client
        # Credentials Flow for Server-to-Server Integration); it runs as the connected app's Run As user
        login = lambda: SalesforceLogin(session=session, consumer_key=consumer_key,  # noqa: E731
                                        consumer_secret=secret, domain=mine)
    elif s.auth == "password":
        password = _env(s.password_env, "the password", config_file)
        token = os.environ.get(s.security_token_env, "")
        secrets += [password, token]
        # SOAP login() is not available from API version 65.0 and is retired for every version in Summer '27
        # (Salesforce Help 005132110): log in at 64.0 at most (the session serves any REST version) and say so.
        login_version = s.api_version if _version(s.api_version) < (65, 0) else "64.0"
        log.warning("salesforce.soap_login_retiring", login_api_version=login_version,
                    note="auth: password uses SOAP API login(), which Salesforce retires in Summer '27 (unavailable "
                         "from API version 65.0, disabled in new orgs); move to auth: client_credentials or jwt")
        login = lambda: SalesforceLogin(session=session, username=username, password=password,  # noqa: E731
                                        security_token=token, domain=s.domain, sf_version=login_version)
    else:
        login = None
    try:
        if login is None:
            session_id = _env(s.session_id_env, "the session id (access token)", config_file)
            instance = urlsplit(s.instance_url).netloc.rpartition("@")[2]   # host[:port] (a test endpoint's)
        else:
            session_id, instance = login()
        log_config.register_secrets(values=[session_id])
        host = urlsplit(f"https://{instance}").hostname
        if not s.host_allowed(host):   # the session id would go there: Salesforce's hosts only, unless opted out
            raise SourceUnavailable(f"Salesforce login ({s.auth}): the instance {host!r} is not a Salesforce host "
                                    "(*.salesforce.com, *.force.com); the session id is not sent there (for a "
                                    "private test endpoint set source.allow_any_host: true)", where)
    except SalesforceAuthenticationFailed as exc:
        raise SourceUnavailable(f"Salesforce login ({s.auth}) failed: {login_failure(exc, s, secrets)}", where) from None
    except SalesforceError as exc:
        raise SourceUnavailable(f"Salesforce login ({s.auth}) failed: {describe_error(exc)}", where) from None
    session.token, session.instance_host = session_id, instance.split(":")[0]
    if login is not None:
        session.relogin = lambda: login()[0]
    return Salesforce(instance_url=f"https://{instance}", session_id=session_id, session=session,
                      version=s.api_version, parse_float=Decimal)


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return (int(major), int(minor or 0)) if major.isdigit() and (minor or "0").isdigit() else (0, 0)


# what to do about a login failure, by Salesforce's error code or description (OAuth 2.0 Authorization Errors)
_LOGIN_FIXES = (
    ("audience is invalid", "the JWT audience must be https://login.salesforce.com (or https://test.salesforce.com "
                            "for a sandbox): set source.domain: login (or test) and the My Domain in source.instance_url"),
    ("request not supported on this domain", "request the token from the My Domain: set source.domain: <mydomain>.my"),
    ("no client credentials user enabled", "set a Run As user for the client credentials flow on the connected app"),
    ("hasn't approved this consumer", "pre-authorise the connected app for the integration user (Admin approved users "
                                      "are pre-authorized, and a permission set or profile that grants the app)"),
    ("invalid_client_id", "check the connected app's consumer key in the environment"),
    ("invalid_client", "check the connected app's consumer key and secret in the environment"),
    ("INVALID_OPERATION", "SOAP API login() (auth: password) is not available from API version 65.0, is disabled "
                          "in new orgs and is retired in Summer '27: use auth: client_credentials or jwt"),
    ("API_CURRENTLY_DISABLED", "the integration user needs API Enabled (the NRR_Engine_Integration permission set "
                               "grants it)"),
    ("INVALID_LOGIN", "check the username, the password and security token in the environment, and source.domain "
                      "(login for production, test for a sandbox, or the My Domain)"),
)


def login_failure(exc: SalesforceAuthenticationFailed, s: SalesforceSettings, secrets: Sequence[str] = ()) -> str:
    """Why a login failed, as "CODE: Salesforce's message; what to do", never "None": a SOAP fault without its
    detail, or a body that is not the JSON an OAuth error is, still gives its faultcode/faultstring or status."""
    code, message = exc.code, str(getattr(exc, "auth_message", "") or "")
    fault = re.search(r"<faultcode>(?:\w+:)?([^<]*)</faultcode>.*?<faultstring>([^<]*)</faultstring>", message, re.S)
    if fault:
        code = code or fault.group(1)
        message = html.unescape(fault.group(2)).removeprefix(f"{fault.group(1)}: ")
    elif message.lstrip().startswith("<"):   # an HTML or XML page: nothing to quote from it
        message = "the login endpoint answered with a page, not an error; check source.domain and source.instance_url"
    if isinstance(code, int) or (isinstance(code, str) and code.isdigit()):
        code = f"HTTP {code}"
    message = re.sub(r"[\x00-\x1f\x7f]+", " ", message).strip()[:200]
    log_config.register_secrets(values=secrets)   # an endpoint that echoes what it was sent must not make
    message = log_config.redact_text(message)      # the message a leak (any case, any length: log.py's rule)
    text = f"{code or 'no error code'}: {message or 'no message'}"
    fix = next((f for key, f in _LOGIN_FIXES if key in text), None)
    return f"{text}; {fix}" if fix else f"{text}; check the credentials in the environment and source.domain ({s.domain})"


# ---- values ----------------------------------------------------------------------------------------

def _text(value) -> str | None:
    """A REST JSON value as the text a Data Loader CSV (and the mirror) holds."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)):
        return str(value)
    if isinstance(value, float):  # parse_float=Decimal makes this rare; repr round-trips the JSON number
        return repr(value)
    return str(value)


def _soql(obj: str, fields: Sequence[str]) -> str:
    return f"SELECT {', '.join(fields)} FROM {obj}"


@dataclass
class _Described:
    fields: dict[str, dict]         # lower-case name -> describe entry
    label: str
    may: dict[str, bool] = field(default_factory=dict)   # the user's createable/updateable/deletable on the object

    def get(self, name: str) -> dict | None:
        return self.fields.get(name.lower())


@dataclass(frozen=True)
class _Read:
    """How one object is read this time: `fields` (the wanted ones and the system fields a later changed read
    needs) in full (since None: every record, replacing the mirror's table), or only the records whose
    SystemModstamp is later than `since`, through queryAll, upserted into it by Id; `why` says which and why."""

    object: str
    fields: list[str]
    since: dt.datetime | None
    why: str
    merged: bool            # Account with MasterRecordId: merged-away accounts are recorded (_nrr_merged)
    mark: dt.datetime | None = None      # the mirror's high-water mark before this read (changed reads)

    @property
    def full(self) -> bool:
        return self.since is None


def _soql_datetime(when: dt.datetime) -> str:
    """A SOQL dateTime literal, unquoted and in UTC to the second ("YYYY-MM-DDThh:mm:ssZ", SOQL and SOSL Reference:
    Date Formats and Date Literals): cut to the second, so it never lies after the time it stands for."""
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _state_time(text) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


@dataclass
class Job:
    """The outcome of one write: per input row, None (done) or Salesforce's 'CODE: message'."""

    errors: list[str | None]
    created_ids: list[str | None] = field(default_factory=list)


class SalesforceOrg(LocalOrg):
    """Reads Salesforce into a SQLite mirror (the pipeline reads it like a local org) and writes back to Salesforce."""

    kind = "salesforce"
    remote = True

    def __init__(self, s: SalesforceSettings, mirror: Path, config_file: Path,
                 sleep: Callable[[float], None] = time.sleep, currency: str | None = None,
                 upload_limit: int = UPLOAD_LIMIT):
        self._open_mirror(Path(mirror))
        self.settings, self.config_file, self._sleep = s, config_file, sleep
        self.currency = currency            # the corporate currency: amounts are written in it
        self.upload_limit = upload_limit    # bytes of CSV per Bulk upload
        self.session = ApiSession(s, sleep)
        self._sf: Salesforce | None = None
        self._described: dict[str, _Described | None] = {}
        self._wanted: dict[str, dict[str, None]] = {}
        self._fetched: set[str] = set()
        self._full_done: set[str] = set()   # objects read in full by this process (--full-read: once each)
        self.reads: dict[str, dict] = {}    # how each object was read by this process (api_usage: reads)
        self._counts: dict[str, int] = {}
        self.limits: dict | None = None
        self.limits_refused: str | None = None    # why /limits was refused (no View Setup), if it was
        self.header_budget: dict | None = None    # the budget read from Sforce-Limit-Info instead

    def _open_mirror(self, mirror: Path) -> None:
        """Open the mirror. It holds only what was read from Salesforce (writes go to Salesforce), so one that
        cannot be read (not a database, damaged) is moved aside to <mirror>.unreadable, with a warning, and a new
        one is started: every object is then read in full."""
        try:
            super().__init__(Path("."), mirror)
            self.db.execute(f"CREATE TABLE IF NOT EXISTS {_STATE} (object TEXT PRIMARY KEY, fields TEXT NOT NULL, "
                            "mark TEXT, full_at TEXT)")
            self.db.execute(f"SELECT count(*) FROM {_STATE}").fetchone()
            return
        except (SourceUnavailable, sqlite3.DatabaseError) as exc:
            if getattr(self, "db", None) is not None:
                self.db.close()
            if not mirror.is_file():
                raise
            aside = mirror.with_name(mirror.name + ".unreadable")
            try:
                for suffix in ("", "-wal", "-shm"):
                    part = Path(f"{mirror}{suffix}")
                    if part.exists():
                        os.replace(part, Path(f"{aside}{suffix}"))
            except OSError:
                raise exc from None
            log.warning("salesforce.mirror_unreadable", mirror=str(mirror), moved_to=str(aside),
                        reason=str(exc)[:200], consequence="every object is read in full")
        super().__init__(Path("."), mirror)
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {_STATE} (object TEXT PRIMARY KEY, fields TEXT NOT NULL, "
                        "mark TEXT, full_at TEXT)")

    # ---- connection, limits, describe ------------------------------------------------------------
    @property
    def sf(self) -> Salesforce:
        if self._sf is None:
            self._sf = connect(self.settings, self.session, self.config_file)
        return self._sf

    def where(self, obj: str) -> str:
        return f"salesforce:{obj}"

    def _call(self, what: str, fn, *args, **kwargs):
        """Call the client; its exceptions become SourceUnavailable naming the call, never its response body."""
        try:
            return fn(*args, **kwargs)
        except _CLIENT_ERRORS as exc:
            raise SourceUnavailable(f"Salesforce {what} failed: {describe_error(exc)}",
                                    Location(self.where(what.split()[-1]))) from None

    def check_budget(self) -> dict | None:
        """Read /limits; refuse to start (exit 3) when fewer daily API requests remain than the reserve.

        /limits (and /limits/recordCount) need View Setup and Configuration (REST API: Limits), which a
        least-privilege integration user lacks; the org then refuses them (403). The run still starts: the budget
        comes from the Sforce-Limit-Info header every REST response carries (None here when none was seen yet:
        `prepare` checks it after describe) and record counts from SELECT COUNT(); the log and the run's summary
        (api_calls.limits_note) say so."""
        try:
            self.limits = self.sf.limits()
        except SalesforceError as exc:
            if getattr(exc, "status", None) != 403 or describe_error(exc).startswith("REQUEST_LIMIT_EXCEEDED"):
                raise SourceUnavailable(f"Salesforce limits failed: {describe_error(exc)}",
                                        Location(self.where("limits"))) from None
            self.limits, self.limits_refused = None, describe_error(exc).split(" (", 1)[0]
            _log_limits_refused("salesforce.limits_unavailable", LIMITS_REFUSED, self.limits_refused,
                                "API budget from the Sforce-Limit-Info header, record counts from SELECT COUNT()")
            return self._budget_from_header()
        daily = self.limits.get("DailyApiRequests", {})
        return self._check_reserve(int(daily.get("Remaining", 0)), int(daily.get("Max", 0)), "/limits")

    def _budget_from_header(self) -> dict | None:
        """The budget from the last Sforce-Limit-Info header ("api-usage=25/15000"); None if none was seen."""
        m = re.search(r"api-usage=(\d+)/(\d+)", self.session.limit_info or "")
        if not m:
            return None
        used, maximum = int(m.group(1)), int(m.group(2))
        self.header_budget = {"Remaining": maximum - used, "Max": maximum}
        return self._check_reserve(maximum - used, maximum, "Sforce-Limit-Info")

    def _check_reserve(self, remaining: int, maximum: int, source: str) -> dict:
        log.info("salesforce.limits", remaining=remaining, max=maximum, reserve=self.settings.api_reserve, source=source)
        if remaining < self.settings.api_reserve:
            raise SourceUnavailable(f"only {remaining} of {maximum} daily API requests remain, below the reserve of "
                                    f"{self.settings.api_reserve} (source.api_reserve); the run did not start",
                                    Location(str(self.config_file), field="source.api_reserve"))
        return {"remaining": remaining, "max": maximum}

    def describe(self, obj: str) -> _Described | None:
        """The object's fields (None if the org has no such object or the user cannot see it)."""
        if obj not in self._described:
            try:
                d = getattr(self.sf, obj).describe()
            except SalesforceError as exc:
                if getattr(exc, "status", None) == 404:
                    self._described[obj] = None
                    return None
                raise SourceUnavailable(f"Salesforce describe of {obj} failed: {describe_error(exc)}",
                                        Location(self.where(obj))) from None
            self._described[obj] = _Described({f["name"].lower(): f for f in d["fields"]}, d.get("label", obj),
                                              {k: d[k] for k in ("createable", "updateable", "deletable") if k in d})
        return self._described[obj]

    def prepare(self, needs: Sequence[FieldNeed]) -> None:
        """Check the API budget and every field the run reads or writes, and the object permissions its writes
        need, against describe (exit 2, every problem at once, each naming the grant or fix)."""
        budget = self.check_budget()
        problems: list[str] = []
        ops: dict[str, dict[str, str]] = {}   # object -> {createable|updateable|deletable: why}
        missing: dict[str, list[FieldNeed]] = {}   # objects describe does not show: one problem each
        for need in needs:
            d = self.describe(need.object)
            if d is None:
                if not need.optional:
                    missing.setdefault(need.object, []).append(need)
                continue
            f = d.get(need.field)
            if f is None:
                shipped = _SHIPPED.get(need.object, ())
                if not need.optional:
                    fix = ("deploy salesforce/ (the engine's own fields) and assign its NRR_Engine_Integration "
                           "permission set, or fix the field name") if need.write or need.create \
                        else no_field_fix(need.object, need.field)
                    problems.append(f"{need.why}: {need.object}.{need.field} does not exist or field-level security "
                                    f"hides it from the integration user; {fix}")
                elif need.field in shipped and any(d.get(g) for g in shipped):
                    # salesforce/ deploys its fields together: one the org has while this one is not visible is
                    # hidden by field-level security (a hidden lock field would let the run re-parent locked accounts)
                    problems.append(f"{need.why}: {need.object}.{need.field} is not visible to the integration user, "
                                    f"though salesforce/ deploys it with {', '.join(g for g in shipped if d.get(g))}; "
                                    f"grant read access (field-level security; the NRR_Engine_Integration permission "
                                    f"set does)")
                else:
                    log.info("salesforce.optional_field_absent", object=need.object, field=need.field, why=need.why)
                continue
            self.want(need.object, [f["name"]])
            wanted = ops.setdefault(need.object, {})
            for flag, on in (("updateable", need.write), ("createable", need.create),
                             ("deletable", getattr(need, "delete", False))):
                if on:
                    wanted.setdefault(flag, need.why)
            if need.types and f["type"] not in need.types:
                problems.append(f"{need.why}: {need.object}.{need.field} is of type {f['type']}; expected "
                                f"{' or '.join(need.types)}")
            if need.write and not f.get("updateable"):
                problems.append(f"{need.why}: {need.object}.{need.field} is not updateable by the integration user; "
                                f"grant edit access (field-level security) or pick another field")
            if need.create and not f.get("createable"):
                problems.append(f"{need.why}: {need.object}.{need.field} is not createable by the integration user; "
                                f"grant edit access (field-level security)")
            if need.external_id and not (f.get("externalId") or f.get("idLookup")):
                problems.append(f"{need.why}: {need.object}.{need.field} is not an External ID field; mark it "
                                f"External ID (as salesforce/ does) so snapshots can be upserted")
        for obj, wanting in missing.items():
            own = any(n.write or n.create or n.delete for n in wanting)
            parts = [n.why.split(".") for n in wanting]   # arr.subscriptions.account, .start, ... -> arr.subscriptions
            where = ".".join(c[0] for c in itertools.takewhile(lambda c: len(set(c)) == 1, zip(*parts))) \
                or wanting[0].why
            problems.insert(0, f"{where}: {no_object_fix(obj, [n.field for n in wanting], own)}")
        verbs = {"createable": ("create", "Create"), "updateable": ("edit", "Edit"), "deletable": ("delete", "Delete")}
        for obj, wanted in ops.items():
            d = self.describe(obj)
            for flag, why in wanted.items():
                if d is not None and d.may.get(flag) is False:   # object permissions (describe: createable, ...)
                    verb, grant = verbs[flag]
                    problems.append(f"{why}: the integration user cannot {verb} {obj} records; grant {grant} on {obj} "
                                    f"(object permissions; the NRR_Engine_Integration permission set grants what the "
                                    f"engine needs)")
        if problems:
            raise ConfigError("the Salesforce org does not match the config:\n  " + "\n  ".join(problems),
                              Location(str(self.config_file), field="source"))
        if budget is None:   # /limits refused and no header seen before describe: the header describe carried
            if self._budget_from_header() is None:
                log.warning("salesforce.budget_unknown", reason="no Sforce-Limit-Info header in the answers so far")

    # ---- schema questions the pipeline asks -------------------------------------------------------
    def want(self, obj: str, fields: Iterable[str]) -> None:
        """Fields to read of `obj` on the next sync (those the org lacks are skipped)."""
        wanted = self._wanted.setdefault(obj, {"Id": None})
        for f in fields:
            wanted.setdefault(f, None)

    def has_table(self, obj: str) -> bool:
        return self.describe(obj) is not None

    def has_field(self, obj: str, field: str) -> bool:
        d = self.describe(obj)
        return d is not None and d.get(field) is not None

    def columns(self, obj: str) -> list[str]:
        if obj in self._fetched or super().has_table(obj):
            return [r[1] for r in self.db.execute(f"PRAGMA table_info(\"{obj}\")")]
        d = self.describe(obj)
        return [f["name"] for f in d.fields.values()] if d else []

    def csv_objects(self) -> list[str]:
        return self.objects()

    # ---- reading ----------------------------------------------------------------------------------
    def worth_loading_aside(self, obj: str) -> bool:
        """Nothing loads aside: the mirror is filled from Salesforce's answers as they come."""
        return False

    def sync(self, objects: Iterable[str], background: Iterable[str] = ()) -> list[str]:
        """Read each object's wanted fields from Salesforce into the mirror: in full the first time, when the
        fields read change, every source.full_read_days (Salesforce's clock: the Date header of its answers) and
        on --full-read; otherwise only the records changed since the mirror's high-water mark (see _mark), less
        source.read_overlap_s, deleted and merged ones included (queryAll).

        One transaction for all of them: a read that fails leaves the mirror, and every mark, as they were."""
        objects = [o for o in dict.fromkeys(objects) if self.describe(o) is not None]
        if not objects:
            return []
        reads = [self._plan(o) for o in objects]
        to_count = [r.object for r in reads if r.full and r.object not in self._counts]
        for obj in list(to_count):   # the records the mirror holds tell Bulk from REST as well as a count would
            if super().has_table(obj):
                self._counts[obj] = self.db.execute(f'SELECT count(*) FROM "{obj}"').fetchone()[0]
                to_count.remove(obj)
        if to_count:
            self._counts.update(self._record_counts(to_count))
        with self.transaction():
            outcomes = [self._read_full(r) if r.full else self._read_changes(r) for r in reads]
        for r, outcome in zip(reads, outcomes):
            self._fetched.add(r.object)
            if r.full:
                self._full_done.add(r.object)
            self.reads[r.object] = {"read": "full" if r.full else "changes", "why": r.why, **outcome}
            log.info("salesforce.read", object=r.object, read="full" if r.full else "changes", why=r.why, **outcome)
        return objects

    def _plan(self, obj: str) -> _Read:
        """Whether to read `obj` in full or only its changes, and which fields."""
        d = self.describe(obj)
        fields = [d.get(f)["name"] for f in self._wanted.get(obj, {"Id": None}) if d.get(f)]
        iso = d.get("CurrencyIsoCode")
        if iso is not None and iso["name"] not in fields:  # the write path checks each record's currency
            fields.append(iso["name"])
        merged = obj == "Account" and d.get("MasterRecordId") is not None and d.get("IsDeleted") is not None
        system = [d.get("IsDeleted"), d.get("MasterRecordId") if merged else None, d.get(_STAMP)]
        fields += [f["name"] for f in system if f is not None and f["name"] not in fields]

        def full(why: str) -> _Read:
            return _Read(obj, fields, None, why, merged)

        if d.get(_STAMP) is None or d.get("IsDeleted") is None:
            return full(f"{obj} has no SystemModstamp and IsDeleted to read its changes by")
        if self.settings.full_read and obj not in self._full_done:
            return full("--full-read")
        state = self._state(obj)
        if state is None or not super().has_table(obj):
            return full("first read" if state is None else "the mirror holds no records of it")
        stored, mark, full_at = state
        if not {f.lower() for f in fields} <= {f.lower() for f in stored} or any(d.get(f) is None for f in stored):
            return full("the fields read changed")
        days, now = self.settings.full_read_days, self.session.server_time
        if days == 0:
            return full("source.full_read_days: 0")
        if now is None:
            return full("Salesforce's answers carry no Date header, so the age of the last full read is unknown")
        if now - full_at >= dt.timedelta(days=days):
            return full(f"the last full read was {(now - full_at).days} days ago (source.full_read_days: {days})")
        if mark is None:
            return full("no read yet gave a SystemModstamp to read changes from")
        since = mark - dt.timedelta(seconds=self.settings.read_overlap_s)
        return _Read(obj, [d.get(f)["name"] for f in stored], since,
                     f"changes since {_soql_datetime(mark)} less {self.settings.read_overlap_s:g} s "
                     "(source.read_overlap_s)", merged, mark)

    def _state(self, obj: str) -> tuple[list[str], dt.datetime | None, dt.datetime] | None:
        """(fields, high-water mark, time of the last full read) of the mirror's last read of `obj`; None if there
        was none, or its record does not read back (then the object is read in full)."""
        row = self.db.execute(f"SELECT fields, mark, full_at FROM {_STATE} WHERE object = ?", (obj,)).fetchone()
        if row is None:
            return None
        try:
            fields = json.loads(row[0])
        except ValueError:
            fields = None
        full_at = _state_time(row[2])
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields) or full_at is None:
            log.warning("salesforce.mirror_state_unreadable", object=obj, consequence="read in full")
            return None
        return fields, (_state_time(row[1]) if row[1] else None), full_at

    def _save_state(self, obj: str, fields: list[str], mark: dt.datetime | None, full_at: dt.datetime | None) -> None:
        if full_at is None:   # Salesforce sent no Date header: no age to go by, so the next read is in full too
            self.db.execute(f"DELETE FROM {_STATE} WHERE object = ?", (obj,))
            return
        self.db.execute(f"INSERT OR REPLACE INTO {_STATE} VALUES (?, ?, ?, ?)",
                        (obj, json.dumps(fields), mark.isoformat() if mark else None, full_at.isoformat()))

    def _record_counts(self, objects: list[str]) -> dict[str, int]:
        """Records per object, to pick Bulk or REST for a full read: /limits/recordCount, or, for a user without
        View Setup and Configuration, one SELECT COUNT() each ("To get an accurate count, use the SOQL query SELECT
        count() FROM sObject", REST API: Record Count)."""
        if self.limits_refused is None:
            try:
                counts = self.sf.restful("limits/recordCount", params={"sObjects": ",".join(objects)})
                return {c["name"]: int(c["count"]) for c in counts.get("sObjects", [])}
            except SalesforceError as exc:
                if getattr(exc, "status", None) != 403:
                    raise SourceUnavailable(f"Salesforce record count failed: {describe_error(exc)}",
                                            Location(self.where("count"))) from None
                self.limits_refused = describe_error(exc).split(" (", 1)[0]
                _log_limits_refused("salesforce.record_count_unavailable",
                                    "/limits/recordCount needs View Setup and Configuration, which the integration "
                                    "user does not need; using SELECT COUNT() instead", self.limits_refused,
                                    "SELECT COUNT()")
        return {obj: int(self._call(f"count of {obj}", self.sf.query, f"SELECT COUNT() FROM {obj}")["totalSize"])
                for obj in objects}

    def _read_full(self, r: _Read) -> dict:
        """Every record of the object into a fresh table that replaces the mirror's (inside sync's transaction)."""
        obj, fields = r.object, r.fields
        read_at = self.session.server_time   # Salesforce's time before the read: the age of this full read
        bulk = self._counts.get(obj, 0) >= self.settings.bulk_query_min
        soql = _soql(obj, fields)
        t0 = time.perf_counter()
        tmp = f"_nrr_loading_{obj}"
        db = self.db
        self._create_loading(tmp, fields, 0)
        if bulk:
            pages = self._bulk_pages(obj, soql, r.merged)
        else:   # queryAll for Account: merged-away accounts carry their history to the survivor
            pages = self._rest_pages(obj, self._call(f"query of {obj}", self.sf.query, soql, include_deleted=r.merged),
                                     fields)
        n = self._load_pages(obj, tmp, fields, pages)
        mark = self._mark(tmp, fields, read_at, None)
        deleted = 0
        if r.merged:
            db.execute("DROP TABLE IF EXISTS _nrr_merged")
            db.execute("CREATE TABLE _nrr_merged (Id TEXT NOT NULL PRIMARY KEY, MasterRecordId TEXT NOT NULL)")
            db.execute(f'INSERT INTO _nrr_merged SELECT Id, MasterRecordId FROM "{tmp}" '
                       "WHERE IsDeleted = 'true' AND MasterRecordId IS NOT NULL")
            deleted = db.execute(f"DELETE FROM \"{tmp}\" WHERE IsDeleted = 'true'").rowcount
        db.execute(f'DROP TABLE IF EXISTS "{obj}"')
        db.execute(f'ALTER TABLE "{tmp}" RENAME TO "{obj}"')
        self._save_state(obj, fields, mark, read_at)
        return {"records": n - deleted, "api": "bulk" if bulk else "rest", "seconds": round(time.perf_counter() - t0, 2)}

    def _read_changes(self, r: _Read) -> dict:
        """The records changed since `r.since` (queryAll: deleted and merged-away ones too), upserted into the
        mirror by Id, the deleted ones removed from it (inside sync's transaction). The first REST page says how
        many there are (totalSize): a small delta is read there, a large one (bulk_query_min or more) through a
        Bulk API 2.0 queryAll job instead, at the cost of that one call."""
        obj, fields = r.object, r.fields
        stamp = next(f for f in fields if f.lower() == _STAMP.lower())
        soql = f"{_soql(obj, fields)} WHERE {stamp} > {_soql_datetime(r.since)}"
        read_at = self.session.server_time
        t0 = time.perf_counter()
        first = self._call(f"query of {obj}", self.sf.query, soql, include_deleted=True)
        bulk = not first.get("done", True) and int(first.get("totalSize") or 0) >= self.settings.bulk_query_min
        if bulk:
            del first
            pages = self._bulk_pages(obj, soql, True)
        else:
            pages = self._rest_pages(obj, first, fields)
        tmp = f"_nrr_changes_{obj}"
        db = self.db
        self._create_loading(tmp, fields, 0)
        n = self._load_pages(obj, tmp, fields, pages)
        mark = self._mark(tmp, fields, read_at, r.mark)
        gone = f"SELECT Id FROM \"{tmp}\" WHERE IsDeleted = 'true'"
        if r.merged:
            db.execute("CREATE TABLE IF NOT EXISTS _nrr_merged (Id TEXT NOT NULL PRIMARY KEY, MasterRecordId TEXT NOT NULL)")
            db.execute(f"INSERT OR REPLACE INTO _nrr_merged SELECT Id, MasterRecordId FROM \"{tmp}\" "
                       "WHERE IsDeleted = 'true' AND MasterRecordId IS NOT NULL")
            db.execute(f"DELETE FROM _nrr_merged WHERE Id IN (SELECT Id FROM \"{tmp}\" WHERE IsDeleted IS NOT 'true')")
        deleted = db.execute(f'DELETE FROM "{obj}" WHERE Id IN ({gone})').rowcount
        cols = ", ".join(f'"{f}"' for f in fields)
        upserted = db.execute(f'INSERT OR REPLACE INTO "{obj}" ({cols}) SELECT {cols} FROM "{tmp}" '
                              "WHERE IsDeleted IS NOT 'true'").rowcount
        db.execute(f'DROP TABLE "{tmp}"')
        stored = self._state(obj)
        self._save_state(obj, fields, mark, stored[2] if stored else None)
        return {"records": upserted, "deleted": deleted, "returned": n, "api": "bulk" if bulk else "rest",
                "seconds": round(time.perf_counter() - t0, 2)}

    def _load_pages(self, obj: str, table: str, fields: list[str], pages) -> int:
        """Insert the pages of a read into `table`; returns the rows inserted."""
        insert = f"INSERT INTO \"{table}\" VALUES ({', '.join(['NULLIF(?, %s)' % repr('')] * len(fields))})"
        n = 0
        for header, rows in pages:
            if [h.lower() for h in header] != [f.lower() for f in fields]:
                raise SourceUnavailable(f"Salesforce returned columns {header[:6]} for {obj}; expected {fields[:6]}",
                                        Location(self.where(obj)))
            n += self.db.executemany(insert, rows).rowcount
        return n

    def _mark(self, table: str, fields: list[str], read_at: dt.datetime | None,
              before: dt.datetime | None) -> dt.datetime | None:
        """The high-water mark after a read into `table`: the latest of the largest SystemModstamp it returned (to
        the second; Salesforce gives dateTimes in UTC), Salesforce's time before the read began (the Date header of
        the answer before it: every change made since is stamped later, but for transactions that commit late,
        which the overlap is for) and the mark before. Without the read's own time, an object whose last change was
        a batch of many records would read that batch again on every run, all of it lying within the overlap."""
        stamp = next((f for f in fields if f.lower() == _STAMP.lower()), None)
        newest = None
        if stamp is not None:
            text = self.db.execute(f'SELECT max(substr("{stamp}", 1, 19)) FROM "{table}"').fetchone()[0]
            try:
                newest = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc) if text else None
            except ValueError:
                newest = None
        return max(filter(None, (newest, read_at, before)), default=None)

    def _bulk_pages(self, obj: str, soql: str, all_rows: bool):
        """Bulk API 2.0 query results, page by page (maxRecords), as (header, row iterator).

        The job is waited on for at most source.job_timeout_s, then aborted (the client alone waits 24 hours),
        and its create is not blindly repeated (see _create_job)."""
        client = getattr(self.sf.bulk2, obj)._client
        what = f"Bulk query of {obj}"
        job_id = self._create_job(client, what, "queryAll" if all_rows else "query", query=soql)["id"]
        info = self._wait(client, job_id, what, is_query=True)
        if info["state"] != "JobComplete":
            raise SourceUnavailable(f"Salesforce {what} failed: JOB_{info['state'].upper()}: "
                                    f"{str(info.get('errorMessage') or 'no result')[:200]}", Location(self.where(obj)))
        locator = ""
        while True:
            result = self._call(what, client.get_query_results, job_id, locator, self.settings.page_size)
            locator = result["locator"]
            reader = csv.reader(io.StringIO(result.pop("records")))
            header = next(reader, None)
            if header is not None:
                yield header, reader
            del result, reader
            if not locator:
                return

    def _rest_pages(self, obj: str, result: dict, fields: list[str]):
        """REST query results (2,000 records a call) from the first page on, typed values turned to CSV-like text."""
        while True:
            yield fields, [tuple(_text(r.get(f)) for f in fields) for r in result["records"]]
            if result.get("done", True):
                return
            result = self._call(f"query of {obj}", self.sf.query_more, result["nextRecordsUrl"], True)

    def merged(self) -> dict[str, str]:
        """{merged-away account Id: surviving account Id}: those in the recycle bin at the last full read, and every
        merge a read of changes saw since (kept until the next full read, so a merge seen once is not forgotten
        when later reads no longer return it)."""
        if not super().has_table("_nrr_merged"):
            return {}
        return dict(self.db.execute("SELECT Id, MasterRecordId FROM _nrr_merged"))

    def _ensure_read(self, obj: str) -> None:
        if obj not in self._fetched and not super().has_table(obj):
            self.sync([obj])

    def read(self, obj: str, fields: Sequence[str], order_by: str = "Id"):
        self._ensure_read(obj)
        return super().read(obj, fields, order_by)

    def read_packed(self, obj, columns, order_by, like=None):
        self._ensure_read(obj)
        return super().read_packed(obj, columns, order_by, like)

    def get(self, obj: str, ids: Sequence[str], fields: Sequence[str]) -> dict[str, tuple]:
        if not super().has_table(obj):
            return {}
        return super().get(obj, ids, fields)

    def free_ids(self, obj: str, prefix: str, count: int) -> list[str]:
        """Provisional Ids for records the plan will create; Salesforce assigns the real ones on insert."""
        return [prefix + _PROVISIONAL + str(k).rjust(6, "0") for k in range(1, count + 1)]

    # ---- writing ----------------------------------------------------------------------------------
    def write(self, obj: str, operation: str, fields: Sequence[str], rows: Sequence[Sequence[str | None]],
              external_id: str | None = None) -> Job:
        """Write rows (values in `fields` order; the first field is Id, or the external id for upserts).

        Every value is checked first against its field as describe gives it (length, precision, scale,
        restricted picklist), and amounts against the record's currency: a row that cannot be written as it
        is fails with the reason and is never sent (Salesforce would reject it, or round or misread it).
        Bulk API 2.0 ingest from bulk_write_min rows, sObject Collections below; rows that fail with
        UNABLE_TO_LOCK_ROW are retried with backoff; every other failure is returned, never raised."""
        errors: list[str | None] = [None] * len(rows)
        created: list[str | None] = [None] * len(rows)
        fields, rows = self._own_currency(obj, operation, fields, rows)
        todo = self._sendable(obj, operation, fields, rows, errors)
        for attempt in range(self.settings.retries + 1):
            if not todo:
                break
            if attempt:
                self._backoff(attempt)
                log.warning("salesforce.lock_retry", object=obj, records=len(todo), attempt=attempt)
            part = rows if len(todo) == len(rows) else [rows[i] for i in todo]  # retries: the locked rows
            if len(part) >= self.settings.bulk_write_min:
                job = self._bulk_write(obj, operation, fields, part, external_id)
            else:
                job = self._collections_write(obj, operation, fields, part, external_id)
            locked = []
            for i, err, rid in zip(todo, job.errors, job.created_ids or [None] * len(todo)):
                errors[i], created[i] = err, rid
                if err is not None and err.startswith(_LOCK):
                    locked.append(i)
            todo = locked
        return Job(errors, created)

    def _backoff(self, attempt: int) -> None:
        self._sleep(min(60.0, self.settings.backoff_s * 2 ** (attempt - 1)))

    def _own_currency(self, obj, operation, fields, rows):
        """Records the engine owns are written by upsert on its own key (KPI snapshots, placeholder parents); in a
        multi-currency org they are put in the corporate currency, so their amounts mean what was computed."""
        d = self.describe(obj) if operation == "upsert" and self.currency else None
        iso = d.get("CurrencyIsoCode") if d else None
        if iso is None or any(f.lower() == "currencyisocode" for f in fields):
            return fields, rows
        return [*fields, iso["name"]], [(*r, self.currency) for r in rows]

    def _sendable(self, obj, operation, fields, rows, errors: list) -> list[int]:
        """Positions of the rows that can be sent; each other row gets its reason in `errors`.

        A value that does not fit its field is a failure of its record (recorded in the ledger, exit 1), not
        of the run: the other records are written, and a rerun reports it again until config or metadata
        are fixed. One warning per field says how many records it stopped. Checked column by column: a
        quick pass picks the values worth a closer look (a million rows cost about a second)."""
        d = self.describe(obj)
        if d is None or operation == "delete":
            return list(range(len(rows)))
        checks = [(k, d.get(f)["name"], c) for k, f in enumerate(fields) if (c := _fit_check(d.get(f))) is not None]
        money, currencies = self._record_currencies(obj, operation, fields, rows)
        if not checks and not money:
            return list(range(len(rows)))
        columns = _Columns(rows)
        keys = columns[0]
        problems: dict[int, str] = {}
        stopped: Counter[str] = Counter()
        for k, name, check in checks:
            column = columns[k]
            for i in check.suspects(column):
                why = None if i in problems else check.problem(column[i])
                if why:
                    stopped[name] += 1
                    problems[i] = (f"VALUE_DOES_NOT_FIT: {obj}.{name} of record {keys[i]}: {_shown(column[i])} {why}; "
                                   "not sent")
        for i, rid in enumerate(keys if money else ()):
            have = currencies.get(rid)
            if have and have != self.currency and i not in problems:
                written = [n for k, n in money if columns[k][i] not in (None, "")]
                if written:
                    stopped[f"{written[0]} (currency)"] += 1
                    problems[i] = (f"CURRENCY_MISMATCH: {obj} record {rid} is in {have}, but {written[0]} is computed "
                                   f"in {self.currency} (the corporate currency) and nrr-engine has no exchange-rate "
                                   f"setting to convert it; not sent")
        for name, n in stopped.items():
            log.warning("salesforce.not_sent", object=obj, field=name, records=n)
        for i, problem in problems.items():
            errors[i] = problem
        return [i for i in range(len(rows)) if i not in problems]

    def _record_currencies(self, obj, operation, fields, rows) -> tuple[list[tuple[int, str]], dict[str, str]]:
        """The money fields an update writes and each record's CurrencyIsoCode (from the last read), when the
        object has one. A record not in the mirror was created by this run's upsert, in the corporate currency."""
        d = self.describe(obj) if operation == "update" and self.currency else None
        if d is None or d.get("CurrencyIsoCode") is None:
            return [], {}
        money = [(k, d.get(f)["name"]) for k, f in enumerate(fields) if (d.get(f) or {}).get("type") == "currency"]
        if not money:
            return [], {}
        self._ensure_read(obj)
        ids = [row[0] for row in rows]
        return money, {rid: v[0] for rid, v in self.get(obj, ids, ["CurrencyIsoCode"]).items() if v[0]}

    def _bulk_write(self, obj, operation, fields, rows, external_id) -> Job:
        errors: list[str | None] = []
        created: list[str | None] = []
        for chunk in _csv_chunks(fields, rows, self.upload_limit):
            job = self._bulk_job(obj, operation, fields, chunk, external_id)
            errors.extend(job.errors)
            created.extend(job.created_ids)
        return Job(errors, created)

    def _bulk_job(self, obj, operation, fields, chunk: tuple[str, list], external_id) -> Job:
        """One ingest job: create, upload, close, wait, read the results.

        Nothing that writes is sent twice blindly (see _idempotent): a create left unanswered is followed by
        a search for the job it may have made (aborted); an upload left unanswered abandons the job (never
        closed, so never processed; aborted) for a new one, since a second upload would double the data; a
        close left unanswered is settled by reading the job's state."""
        data, keys = chunk
        client = getattr(self.sf.bulk2, obj)._client
        what = f"Bulk {operation} of {obj}"
        for attempt in range(self.settings.retries + 1):
            if attempt:
                self._backoff(attempt)
            job_id = self._create_job(client, what, operation, external_id=external_id)["id"]
            try:
                self._call(what, client.upload_job_data, job_id, data)
            except _Unconfirmed:
                log.warning("salesforce.upload_unconfirmed", job=job_id, object=obj, attempt=attempt + 1)
                self._try(self._set_state, client, job_id, "Aborted", what)
                continue
            except SourceUnavailable:
                self._try(client.abort_job, job_id, False)
                raise
            try:
                state = self._set_state(client, job_id, "UploadComplete", what)
            except SourceUnavailable:
                self._try(client.abort_job, job_id, False)
                raise
            if state != "Aborted":
                break
        else:
            raise SourceUnavailable(f"{what}: Salesforce confirmed no upload in {self.settings.retries + 1} attempts "
                                    "(each job left unconfirmed was aborted, never processed)",
                                    Location(self.where(obj)))
        info = self._wait(client, job_id, what)
        failed_count = int(info.get("numberRecordsFailed") or 0)
        processed = int(info.get("numberRecordsProcessed") or 0)
        outcome: dict[str, str | None] = {}
        ids: dict[str, str] = {}
        if failed_count:
            for row in csv.DictReader(io.StringIO(self._call(what, client.get_ingest_results, job_id, "failedResults"))):
                err = row.get("sf__Error") or "UNKNOWN_ERROR: no error text"
                outcome[row[fields[0]]] = None if operation == "delete" and err.startswith(_GONE) else err
        if processed < len(keys):  # a failed or aborted job: what it did not reach is reported, not lost
            reason = f"JOB_{info['state'].upper()}: {str(info.get('errorMessage') or 'not processed')[:200]}"
            for row in csv.DictReader(io.StringIO(self._call(what, client.get_ingest_results, job_id, "unprocessedrecords"))):
                outcome[row[fields[0]]] = reason
        if operation in ("insert", "upsert"):
            for row in csv.DictReader(io.StringIO(self._call(what, client.get_ingest_results, job_id, "successfulResults"))):
                ids[row[fields[0]]] = row["sf__Id"]
        log.info("salesforce.job", job=job_id, object=obj, operation=operation, records=len(keys),
                 failed=failed_count, state=info["state"])
        return Job([outcome.get(k) for k in keys], [ids.get(k) for k in keys])

    def _create_job(self, client, what: str, operation: str, query: str | None = None,
                    external_id: str | None = None) -> dict:
        """Create a Bulk job. A create left unanswered may still have made one: once a create is answered,
        the jobs it may have left (same user, object and operation, made since the first try, still waiting)
        are looked for and aborted, so no orphan job stays open or runs a second query."""
        first_try = None
        for attempt in range(self.settings.retries + 1):
            if attempt:
                self._backoff(attempt)
            try:
                job = self._call(what, client.create_job, operation, query, external_id_field=external_id)
            except _Unconfirmed:
                log.warning("salesforce.create_unconfirmed", what=what, attempt=attempt + 1)
                first_try = first_try if first_try is not None else time.monotonic()
                continue
            if first_try is not None:
                self._abort_orphans(client, job, operation in ("query", "queryAll"), time.monotonic() - first_try, what)
            return job
        raise SourceUnavailable(f"{what}: Salesforce confirmed no job in {self.settings.retries + 1} attempts; "
                                "nothing was uploaded to any job it may have made")

    def _abort_orphans(self, client, job: dict, is_query: bool, since_s: float, what: str) -> list[str]:
        """Abort the jobs an unanswered create may have made: the same user (the new job's creator), object and
        operation, created between the first try and the new job (five minutes' leeway for server clocks),
        still Open (ingest: never closed, so they hold no data) or queued (query). The run holds the run lock,
        so no other job of this user's nrr-engine matches."""
        created, user = _when(job.get("createdDate")), job.get("createdById")
        if created is None or not user:
            log.warning("salesforce.orphan_not_checked", what=what, reason="the job shows no creator or creation time")
            return []
        earliest = created - dt.timedelta(seconds=since_s + 300)
        waiting = ("UploadComplete", "InProgress") if is_query else ("Open",)
        path, found = "jobs/query" if is_query else "jobs/ingest", []
        try:
            for _ in range(_ORPHAN_PAGES):  # 1,000 jobs a page, in no order
                listing = self._call(what, self.sf.restful, path)
                for j in listing.get("records") or []:
                    when = _when(j.get("createdDate"))
                    if (j.get("id") != job["id"] and j.get("createdById") == user and j.get("state") in waiting
                            and j.get("object") == job.get("object") and j.get("operation") == job.get("operation")
                            and when is not None and earliest <= when <= created):
                        found.append(j["id"])
                if listing.get("done", True) or not listing.get("nextRecordsUrl"):
                    break
                path = listing["nextRecordsUrl"].split(f"/v{self.settings.api_version}/", 1)[-1]
        except SourceUnavailable as exc:
            log.warning("salesforce.orphan_not_checked", what=what, reason=str(exc)[:200])
        for orphan in found:
            log.warning("salesforce.orphan_aborted", job=orphan, what=what)
            self._try(self._set_state, client, orphan, "Aborted", what, is_query)
        return found

    def _set_state(self, client, job_id: str, state: str, what: str, is_query: bool = False) -> str:
        """Move a job to UploadComplete or Aborted; returns the state it is in. A change left unanswered is not
        simply sent again: the job's state (a GET) says whether it took, and only if not is it sent again."""
        for attempt in range(self.settings.retries + 1):
            if attempt:
                self._backoff(attempt)
            try:
                if state == "UploadComplete":
                    return self._call(what, client.close_job, job_id)["state"]
                return self._call(what, client.abort_job, job_id, is_query)["state"]
            except _Unconfirmed:
                now = self._call(what, client.get_job, job_id, is_query)["state"]
                if now == state or now in _ENDED or (state == "UploadComplete" and now == "InProgress"):
                    return now
        raise SourceUnavailable(f"{what}: Salesforce confirmed no change of job {job_id} to {state} in "
                                f"{self.settings.retries + 1} attempts")

    def _wait(self, client, job_id: str, what: str, is_query: bool = False) -> dict:
        """Poll a Bulk job (ingest or query) until it ends, at most source.job_timeout_s; then abort it and stop."""
        timeout = self.settings.job_timeout_s
        start, waited, delay = time.monotonic(), 0.0, self.settings.poll_s
        while True:
            self._sleep(delay)
            waited += delay
            info = self._call(what, client.get_job, job_id, is_query)
            if info["state"] in _ENDED:
                return info
            elapsed = max(waited, time.monotonic() - start)
            if elapsed >= timeout:
                self._try(self._set_state, client, job_id, "Aborted", what, is_query)
                raise SourceUnavailable(f"{what}: job {job_id} still {info['state']} after {elapsed:.1f} s "
                                        f"(source.job_timeout_s: {timeout:g}); aborted")
            delay = min(10.0, delay * 1.5, timeout - elapsed)  # never sleeps past the deadline

    @staticmethod
    def _try(fn, *args) -> None:
        try:
            fn(*args)
        except (*_CLIENT_ERRORS, SourceUnavailable):
            pass

    def _collections_write(self, obj, operation, fields, rows, external_id) -> Job:
        errors: list[str | None] = []
        created: list[str | None] = []
        for i in range(0, len(rows), COLLECTION_SIZE):
            part = rows[i:i + COLLECTION_SIZE]
            if operation == "delete":
                result = self._call(f"delete of {obj}", self.sf.restful, "composite/sobjects", method="DELETE",
                                    params={"ids": ",".join(r[0] for r in part), "allOrNone": "false"})
            else:
                # an empty cell means "leave as is" (as in Bulk CSV): the field is left out of the record
                records = [{f: v for f, v in zip(fields, r) if v != ""} for r in part]
                if operation == "insert":
                    path, method = "composite/sobjects", "POST"
                elif operation == "upsert":
                    path, method = f"composite/sobjects/{obj}/{external_id}", "PATCH"
                else:
                    path, method = "composite/sobjects", "PATCH"
                result = self._call(f"{operation} of {obj}", self.sf.restful, path, method=method,
                                    data=self._collection_body(obj, records))
            for r in result:
                e = (r.get("errors") or [{}])[0]
                if r.get("success") or (operation == "delete" and e.get("statusCode") == _GONE):
                    errors.append(None)
                    created.append(r.get("id"))
                else:
                    errors.append(f"{e.get('statusCode', 'UNKNOWN_ERROR')}: {str(e.get('message', ''))[:300]}")
                    created.append(None)
        return Job(errors, created)

    def _collection_body(self, obj: str, records: list[dict]) -> str:
        """The JSON of a Collections request, each value typed as describe says: numbers as exact JSON numbers
        (the engine's Decimal text, never through float), checkboxes as booleans, the rest as strings."""
        spec = self.describe(obj)

        def value(field: str, v) -> str:
            kind = (spec.get(field) or {}).get("type") if spec else None
            if v is None:
                return "null"
            if kind in _NUMBER_TYPES and _NUMBER_TEXT.fullmatch(str(v)):
                return str(v)
            if kind == "boolean" and str(v).lower() in ("true", "false"):
                return str(v).lower()
            return json.dumps(str(v))

        body = ",".join("{" + ",".join([f'"attributes":{{"type":{json.dumps(obj)}}}',
                                        *(f"{json.dumps(k)}:{value(k, v)}" for k, v in rec.items())]) + "}"
                        for rec in records)
        return '{"allOrNone":false,"records":[' + body + "]}"

    # ---- the local-org write interface, for rollback and recovery ----------------------------------
    def update_fields(self, obj, fields, ids, columns):
        if len(ids) == 0:
            return []
        rows = [(rid, *values) for rid, *values in zip(ids, *columns)]
        job = self.write(obj, "update", ["Id", *fields], rows)
        return [(rid, err) for rid, err in zip(ids, job.errors) if err]

    def upsert_json(self, obj, key_field, fields, records, prefix, chunk=50_000):
        docs = [json.loads(r) for r in records]
        rows = [tuple(_cell(d.get(f)) for f in (key_field, *fields)) for d in docs]
        job = self.write(obj, "upsert", [key_field, *fields], rows, external_id=key_field)
        return [(i, err) for i, err in enumerate(job.errors) if err]

    def delete(self, obj, ids):
        if not ids:
            return []
        job = self.write(obj, "delete", ["Id"], [(rid,) for rid in ids])
        return [WriteResult(rid, err is None, err) for rid, err in zip(ids, job.errors)]

    def insert(self, obj, records):
        raise DataError("records are created in Salesforce by upsert on their key, not by Id (see create_placeholders)")

    def api_usage(self) -> dict:
        """Calls this process made, by kind, the org's usage header as last seen, and how each object was read
        (reads: full or changes, why, records)."""
        calls = dict(sorted(self.session.calls.items()))
        usage = {"calls": calls, "total": sum(calls.values()), "limit_info": self.session.limit_info,
                 "daily_remaining_at_start": (self.limits or {}).get("DailyApiRequests", {}).get("Remaining")}
        if self.reads:
            usage["reads"] = dict(sorted(self.reads.items()))
        if self.limits_refused is not None:
            usage["daily_remaining_at_start"] = (self.header_budget or {}).get("Remaining")
            usage["limits_source"] = "Sforce-Limit-Info"
            usage["limits_note"] = f"{LIMITS_REFUSED} (Salesforce answered {self.limits_refused})"
        return usage


def _cell(value) -> str | None:
    return None if value is None else str(value)


def _csv_chunks(fields: Sequence[str], rows: Sequence[Sequence[str | None]], limit: int = UPLOAD_LIMIT):
    """CSV upload bodies of at most `limit` bytes of UTF-8 each (Salesforce's limits are in bytes, and a
    character can take four), with the keys (first column) of their rows.

    None becomes #N/A (set to null); an empty string would leave the field unchanged."""
    lines: list[str] = []
    w = csv.writer(_Lines(lines), lineterminator="\n")
    w.writerow(fields)
    header = lines.pop()
    head_size = size = _utf8_len(header)
    body: list[str] = [header]
    keys: list[str] = []
    for row in rows:
        w.writerow([NULL if v is None else v for v in row])
        line = lines.pop()
        n = _utf8_len(line)
        if keys and size + n > limit:
            yield "".join(body), keys
            body, keys, size = [header], [], head_size
        body.append(line)
        keys.append(row[0])
        size += n
    if keys:
        yield "".join(body), keys


class _Lines:
    """A file that keeps what csv.writer writes as a list of lines."""

    def __init__(self, lines: list[str]):
        self.write = lines.append


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _when(text) -> dt.datetime | None:
    """A Salesforce dateTime ("2026-11-15T02:00:00.000+0000"), or None."""
    try:
        return dt.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return None


def _shown(value) -> str:
    text = value if isinstance(value, str) else str(value)
    return repr(text if len(text) <= 80 else text[:77] + "...")


_WIDE = Context(prec=1000)   # digits of any value written, counted without rounding


class _Columns:
    """The columns of rows, each made once when asked for, as text (None stays None). Rows that keep their
    columns (writeback's lazy rows: `column(k)`) hand them over without a tuple per row."""

    def __init__(self, rows):
        self.rows, self.made = rows, {}

    def __getitem__(self, k: int) -> list:
        if k not in self.made:
            rows = self.rows
            col = rows.column(k) if hasattr(rows, "column") else [r[k] for r in rows]
            if any(type(v) is not str for v in col if v is not None):
                col = [v if v is None or isinstance(v, str) else str(v) for v in col]
            self.made[k] = col
        return self.made[k]


@dataclass(frozen=True)
class _Fit:
    """What a value must be to fit a described field: `problem(value)` says why it does not (None: it fits);
    `suspects(column)` picks, at C speed, the positions of a column's values worth that closer look."""

    problem: Callable[[str], str | None]
    suspects: Callable[[Sequence], list[int]]


def _fit_check(spec: dict | None) -> _Fit | None:
    """The check of values against a field as describe gives it (None: describe says nothing to check).
    Lengths count UTF-16 code units, as Salesforce's Java strings do (a character outside the BMP counts
    two): never fewer than the characters a user sees."""
    if not spec:
        return None
    kind = spec.get("type")
    if kind in _NUMBER_TYPES:
        if kind in ("int", "long"):
            precision, scale = spec.get("digits") or spec.get("precision") or 0, 0
        else:
            precision, scale = spec.get("precision") or 0, spec.get("scale") or 0
        whole = precision - scale
        # surely fits: digits after an optional sign and point, at most `whole` before and `scale` after the point
        fits = re.compile(rf"(?=-?\.?[0-9])-?0*[0-9]{{0,{whole}}}(?:\.[0-9]{{0,{scale}}}0*)?" if precision else
                          r"(?=-?\.?[0-9])-?[0-9]*(?:\.[0-9]*)?").fullmatch

        def number(v: str) -> str | None:
            try:
                d = Decimal(v)
            except InvalidOperation:
                return f"is not a number ({kind} field)"
            if not d.is_finite():
                return "is not a finite number"
            if not precision:
                return None
            d = d.normalize(_WIDE)
            digits = max(d.adjusted() + 1, 0)
            if digits > whole:
                return (f"has {digits} digits before the decimal point; the field ({kind}, precision {precision}, "
                        f"scale {scale}) holds {whole}")
            # More decimal places than the scale are not a misfit: through the API Salesforce stores and returns
            # them as sent and only the UI rounds for display (Help 000387302, 000212661).
            return None
        return _Fit(number, lambda col: [i for i, v in enumerate(col) if v and not fits(v)])
    if kind == "boolean":
        return _Fit(lambda v: None if v.lower() in ("true", "false") else "is not true or false (checkbox)",
                    lambda col: [i for i, v in enumerate(col) if v and v not in ("true", "false")])
    length = spec.get("length") or 0
    allowed = None
    if kind in ("picklist", "multipicklist") and spec.get("restrictedPicklist"):
        allowed = {p.get("value") for p in spec.get("picklistValues") or [] if p.get("active", True)}
    if not length and allowed is None:
        return None

    def text(v: str) -> str | None:
        if length:
            n = len(v) if v.isascii() or len(v) > length else len(v.encode("utf-16-le")) // 2
            if n > length:
                return f"is {n} characters long; the field ({kind}) holds {length}"
        if allowed is not None:
            values = v.split(";") if kind == "multipicklist" else [v]
            bad = [x for x in values if x not in allowed]
            if bad:
                return f"is not an active value of the restricted picklist (values: {', '.join(sorted(allowed))[:200]})"
        return None

    if allowed is not None:
        return _Fit(text, lambda col: [i for i, v in enumerate(col) if v and (len(v) > length or v not in allowed)]
                    if length and kind == "picklist" else [i for i, v in enumerate(col) if v])
    def suspects(col) -> list[int]:
        longest = max(map(len, filter(None, col)), default=0)
        if longest * 2 <= length or (longest <= length and "".join(filter(None, col)).isascii()):
            return []  # (a column at a time, in C) none is past the length, nor may count past it
        # past the length, or past half of it with characters that may count two
        return [i for i, v in enumerate(col) if v and (len(v) > length or (2 * len(v) > length and not v.isascii()))]
    return _Fit(text, suspects)
