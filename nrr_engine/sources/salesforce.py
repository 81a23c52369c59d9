"""Salesforce as source and sink: the only module that imports simple_salesforce.

It fixes what the client leaves open: a timeout on every call, retries with backoff (5xx,
REQUEST_LIMIT_EXCEEDED, UNABLE_TO_LOCK_ROW), one session refresh, API calls counted by kind, typed values
(Decimal, never float), and error messages without response bodies or secrets. Records read are
streamed page by page into a SQLite mirror that the pipeline reads exactly as it reads a local org.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
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
from .local_org import LocalOrg, WriteResult

log = structlog.get_logger("nrr_engine.salesforce")

NULL = "#N/A"                       # Bulk API 2.0: the cell value that sets a field to null
COLLECTION_SIZE = 200               # records per sObject Collections call
_UPLOAD_MAX = 90 * 1024 * 1024      # bytes of CSV per ingest job (Salesforce accepts 100 MB after encoding)
_LOCK = "UNABLE_TO_LOCK_ROW"
_PROVISIONAL = "zzzzzzzzz"          # marks Ids a plan names for records Salesforce has not created yet
_NUMBER_TYPES = ("double", "currency", "int", "percent", "long")
_TEXT_TYPES = ("string", "textarea", "picklist", "url", "email", "phone", "id", "reference")
_NUMBER_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")  # a valid JSON number


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
        s = self.settings
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(s.retries + 1),
            wait=tenacity.wait_exponential(multiplier=s.backoff_s, max=60) if s.backoff_s else tenacity.wait_none(),
            retry=tenacity.retry_if_exception_type((_Transient, requests.ConnectionError, requests.Timeout)),
            sleep=self._sleep, reraise=True,
            before_sleep=lambda st: log.warning("salesforce.retry", kind=call_kind(method, url),
                                                attempt=st.attempt_number, reason=_reason(st.outcome.exception())))
        try:
            return retrying(self._send_once, method, url, args, kwargs)
        except _Transient as exc:  # retries spent: hand the last response to the client, which raises
            return exc.response
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise SourceUnavailable(f"Salesforce did not answer ({type(exc).__name__}) after {s.retries} retries: "
                                    f"{call_kind(method, url)} call to {urlsplit(url).hostname}") from None

    def _send_once(self, method, url, args, kwargs) -> requests.Response:
        self.calls[call_kind(method, url)] += 1
        response = super().request(method, url, *args, **kwargs)
        info = response.headers.get("Sforce-Limit-Info")
        if info:
            self.limit_info = info
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
    """errorCode: message of a client exception, without the response body around it (bodies can hold data)."""
    if isinstance(exc, SalesforceOperationError):  # Bulk job failures: the job's errorMessage, not a body
        return str(exc).replace("Job failure. Response content: ", "JOB_FAILED: ")[:240]
    content = getattr(exc, "content", None)
    items = content if isinstance(content, list) else [content] if isinstance(content, dict) else []
    for item in items:
        if isinstance(item, dict) and (item.get("errorCode") or item.get("message")):
            return f"{item.get('errorCode', 'ERROR')}: {str(item.get('message', ''))[:200]}"
    return f"HTTP {getattr(exc, 'status', '?')} {type(exc).__name__}"


def _env(name: str, what: str, cfg: Path) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"source.auth needs {what} in the environment variable {name}, which is not set",
                          Location(str(cfg), field=name))
    return value


def connect(s: SalesforceSettings, session: ApiSession, config_file: Path) -> Salesforce:
    """Log in (JWT bearer, username + password + token, or instance URL + session id) through `session`."""
    username = s.username or os.environ.get(s.username_env)
    where = Location(str(config_file), field="source.auth")
    if s.auth in ("jwt", "password") and not username:
        raise ConfigError(f"source.auth {s.auth} needs a username: set source.username or ${s.username_env}", where)
    if s.auth == "jwt":
        key_file = s.private_key_file or (Path(os.environ[s.private_key_file_env])
                                          if os.environ.get(s.private_key_file_env) else None)
        if key_file is None or not Path(key_file).is_file():
            raise ConfigError(f"source.auth jwt needs the private key file: set source.private_key_file or "
                              f"${s.private_key_file_env} to a PEM file ({'not found: ' + str(key_file) if key_file else 'unset'})",
                              where)
        consumer_key = _env(s.consumer_key_env, "the connected app's consumer key", config_file)
        token_host = urlsplit(s.instance_url).hostname.removesuffix(".salesforce.com") if s.instance_url else None
        login = lambda: SalesforceLogin(session=session, username=username, consumer_key=consumer_key,  # noqa: E731
                                        privatekey_file=str(key_file), domain=s.domain, instance_url=token_host)
    elif s.auth == "password":
        password = _env(s.password_env, "the password", config_file)
        token = os.environ.get(s.security_token_env, "")
        login = lambda: SalesforceLogin(session=session, username=username, password=password,  # noqa: E731
                                        security_token=token, domain=s.domain, sf_version=s.api_version)
    else:
        login = None
    try:
        if login is None:
            session_id = _env(s.session_id_env, "the session id (access token)", config_file)
            instance = urlsplit(s.instance_url).hostname
        else:
            session_id, instance = login()
    except SalesforceAuthenticationFailed as exc:
        raise SourceUnavailable(f"Salesforce login ({s.auth}) failed: {exc.code}; check the credentials in "
                                f"the environment and source.domain ({s.domain})", where) from None
    except SalesforceError as exc:
        raise SourceUnavailable(f"Salesforce login ({s.auth}) failed: {describe_error(exc)}", where) from None
    session.token, session.instance_host = session_id, instance.split(":")[0]
    log_config.register_secrets(values=[session_id])
    if login is not None:
        session.relogin = lambda: login()[0]
    return Salesforce(instance_url=f"https://{instance}", session_id=session_id, session=session,
                      version=s.api_version, parse_float=Decimal)


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

    def get(self, name: str) -> dict | None:
        return self.fields.get(name.lower())


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
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(Path("."), mirror)
        self.settings, self.config_file, self._sleep = s, config_file, sleep
        self.session = ApiSession(s, sleep)
        self._sf: Salesforce | None = None
        self._described: dict[str, _Described | None] = {}
        self._wanted: dict[str, dict[str, None]] = {}
        self._fetched: set[str] = set()
        self._counts: dict[str, int] = {}
        self.limits: dict | None = None

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

    def check_budget(self) -> dict:
        """Read /limits; refuse to start (exit 3) when fewer daily API requests remain than the reserve."""
        self.limits = self._call("limits", self.sf.limits)
        daily = self.limits.get("DailyApiRequests", {})
        remaining, maximum = int(daily.get("Remaining", 0)), int(daily.get("Max", 0))
        log.info("salesforce.limits", remaining=remaining, max=maximum, reserve=self.settings.api_reserve)
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
            self._described[obj] = _Described({f["name"].lower(): f for f in d["fields"]}, d.get("label", obj))
        return self._described[obj]

    def prepare(self, needs: Sequence[FieldNeed]) -> None:
        """Check the API budget and every field the run reads or writes against describe (exit 2 naming the fix)."""
        self.check_budget()
        problems: list[str] = []
        for need in needs:
            d = self.describe(need.object)
            if d is None:
                if not need.optional:
                    problems.append(f"{need.why}: object {need.object} does not exist in the org (or the integration "
                                    f"user cannot see it); deploy salesforce/ or fix the object name")
                continue
            f = d.get(need.field)
            if f is None:
                if not need.optional:
                    problems.append(f"{need.why}: {need.object}.{need.field} does not exist (or field-level security "
                                    f"hides it from the integration user); deploy salesforce/ or fix the field name")
                continue
            self.want(need.object, [f["name"]])
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
        if problems:
            raise ConfigError("the Salesforce org does not match the config:\n  " + "\n  ".join(problems),
                              Location(str(self.config_file), field="source"))

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
    def sync(self, objects: Iterable[str], background: Iterable[str] = ()) -> list[str]:
        """Read each object's wanted fields from Salesforce into the mirror (every call reads afresh)."""
        objects = [o for o in dict.fromkeys(objects) if self.describe(o) is not None]
        if not objects:
            return []
        to_count = [o for o in objects if o not in self._counts]
        if to_count:
            counts = self._call("record count", self.sf.restful, "limits/recordCount",
                                params={"sObjects": ",".join(to_count)})
            self._counts.update({c["name"]: int(c["count"]) for c in counts.get("sObjects", [])})
        for obj in objects:
            self._fetch(obj)
        return objects

    def _fetch(self, obj: str) -> None:
        d = self.describe(obj)
        fields = [d.get(f)["name"] for f in self._wanted.get(obj, {"Id": None}) if d.get(f)]
        merged = obj == "Account" and d.get("MasterRecordId") is not None and d.get("IsDeleted") is not None
        if merged:  # queryAll: merged-away accounts carry their history to the survivor
            fields += [f for f in ("IsDeleted", "MasterRecordId") if f not in fields]
        soql = _soql(obj, fields)
        bulk = self._counts.get(obj, 0) >= self.settings.bulk_query_min
        t0 = time.perf_counter()
        tmp = f"_nrr_loading_{obj}"
        db = self.db
        db.execute("BEGIN")
        try:
            self._create_loading(tmp, fields, 0)
            insert = f"INSERT INTO \"{tmp}\" VALUES ({', '.join(['NULLIF(?, %s)' % repr('')] * len(fields))})"
            pages = self._bulk_pages(obj, soql, merged) if bulk else self._rest_pages(soql, fields, merged)
            n = 0
            for header, rows in pages:
                if [h.lower() for h in header] != [f.lower() for f in fields]:
                    raise SourceUnavailable(f"Salesforce returned columns {header[:6]} for {obj}; expected {fields[:6]}",
                                            Location(self.where(obj)))
                cur = db.executemany(insert, rows)
                n += cur.rowcount
            if merged:
                db.execute("DROP TABLE IF EXISTS \"_nrr_merged\"")
                db.execute(f"CREATE TABLE \"_nrr_merged\" AS SELECT Id, MasterRecordId FROM \"{tmp}\" "
                           "WHERE IsDeleted = 'true' AND MasterRecordId IS NOT NULL")
                db.execute(f"DELETE FROM \"{tmp}\" WHERE IsDeleted = 'true'")
            db.execute(f"DROP TABLE IF EXISTS \"{obj}\"")
            db.execute(f"ALTER TABLE \"{tmp}\" RENAME TO \"{obj}\"")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._fetched.add(obj)
        log.info("salesforce.read", object=obj, records=n, api="bulk" if bulk else "rest",
                 seconds=round(time.perf_counter() - t0, 2))

    def _bulk_pages(self, obj: str, soql: str, all_rows: bool):
        """Bulk API 2.0 query results, page by page (maxRecords), as (header, row iterator)."""
        bulk = getattr(self.sf.bulk2, obj)
        query = bulk.query_all if all_rows else bulk.query
        pages = query(soql, max_records=self.settings.page_size, wait=self.settings.poll_s)
        while True:
            try:
                page = next(pages)
            except StopIteration:
                return
            except _CLIENT_ERRORS as exc:
                raise SourceUnavailable(f"Salesforce Bulk query of {obj} failed: {describe_error(exc)}",
                                        Location(self.where(obj))) from None
            reader = csv.reader(io.StringIO(page))
            header = next(reader, None)
            if header is None:
                continue
            yield header, reader
            del page, reader

    def _rest_pages(self, soql: str, fields: list[str], all_rows: bool):
        """REST query (2,000 records a call), typed values turned to CSV-like text."""
        result = self._call("query", self.sf.query, soql, include_deleted=all_rows)
        while True:
            yield fields, [tuple(_text(r.get(f)) for f in fields) for r in result["records"]]
            if result.get("done", True):
                return
            result = self._call("query", self.sf.query_more, result["nextRecordsUrl"], True)

    def merged(self) -> dict[str, str]:
        """{merged-away account Id: surviving account Id} seen by the last read (queryAll)."""
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

        Bulk API 2.0 ingest from bulk_write_min rows, sObject Collections below; rows that fail with
        UNABLE_TO_LOCK_ROW are retried with backoff; every other failure is returned, never raised."""
        errors: list[str | None] = [None] * len(rows)
        created: list[str | None] = [None] * len(rows)
        todo = list(range(len(rows)))
        for attempt in range(self.settings.retries + 1):
            if not todo:
                break
            if attempt:
                self._sleep(min(60.0, self.settings.backoff_s * 2 ** (attempt - 1)))
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

    def _bulk_write(self, obj, operation, fields, rows, external_id) -> Job:
        errors: list[str | None] = []
        created: list[str | None] = []
        for chunk in _csv_chunks(fields, rows):
            job = self._bulk_job(obj, operation, fields, chunk, external_id)
            errors.extend(job.errors)
            created.extend(job.created_ids)
        return Job(errors, created)

    def _bulk_job(self, obj, operation, fields, chunk: tuple[str, list], external_id) -> Job:
        data, keys = chunk
        client = getattr(self.sf.bulk2, obj)._client
        what = f"Bulk {operation} of {obj}"
        job = self._call(what, client.create_job, operation, external_id_field=external_id)
        job_id = job["id"]
        try:
            self._call(what, client.upload_job_data, job_id, data)
            self._call(what, client.close_job, job_id)
        except SourceUnavailable:
            self._try(client.abort_job, job_id, False)
            raise
        info = self._wait(client, job_id, what)
        failed_count = int(info.get("numberRecordsFailed") or 0)
        processed = int(info.get("numberRecordsProcessed") or 0)
        outcome: dict[str, str | None] = {}
        ids: dict[str, str] = {}
        if failed_count:
            for row in csv.DictReader(io.StringIO(self._call(what, client.get_ingest_results, job_id, "failedResults"))):
                outcome[row[fields[0]]] = row.get("sf__Error") or "UNKNOWN_ERROR: no error text"
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

    def _wait(self, client, job_id: str, what: str) -> dict:
        deadline = time.monotonic() + self.settings.job_timeout_s
        delay = self.settings.poll_s
        while True:
            self._sleep(delay)
            info = self._call(what, client.get_job, job_id, False)
            if info["state"] in ("JobComplete", "Failed", "Aborted"):
                return info
            if time.monotonic() > deadline:
                self._try(client.abort_job, job_id, False)
                raise SourceUnavailable(f"{what}: job {job_id} still {info['state']} after "
                                        f"{self.settings.job_timeout_s:.0f} s (source.job_timeout_s); aborted")
            delay = min(10.0, delay * 1.5)

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
                if r.get("success"):
                    errors.append(None)
                    created.append(r.get("id"))
                else:
                    e = (r.get("errors") or [{}])[0]
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
        """Calls this process made, by kind, and the org's usage header as last seen."""
        calls = dict(sorted(self.session.calls.items()))
        return {"calls": calls, "total": sum(calls.values()), "limit_info": self.session.limit_info,
                "daily_remaining_at_start": (self.limits or {}).get("DailyApiRequests", {}).get("Remaining")}


def _cell(value) -> str | None:
    return None if value is None else str(value)


def _csv_chunks(fields: Sequence[str], rows: Sequence[Sequence[str | None]]):
    """CSV upload bodies of at most _UPLOAD_MAX bytes, each with the keys (first column) of its rows.

    None becomes #N/A (set to null); an empty string would leave the field unchanged."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    keys: list[str] = []
    for row in rows:
        w.writerow([NULL if v is None else v for v in row])
        keys.append(row[0])
        if buf.tell() >= _UPLOAD_MAX:
            yield buf.getvalue(), keys
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(fields)
            keys = []
    if keys:
        yield buf.getvalue(), keys
