"""A test double of the Salesforce APIs nrr-engine uses, served behind HTTP to the real simple-salesforce client.

It answers SOAP and JWT logins, /limits and /limits/recordCount, describe, REST query/queryAll with
paging, single-record and sObject Collections writes, Bulk API 2.0 query (locator paging with
Sforce-Locator and Sforce-NumberOfRecords) and ingest (create, upload, close, poll, successfulResults,
failedResults, unprocessedrecords). Records live in SQLite (seeded from a folder of Data Loader CSVs);
custom fields come from the SFDX metadata in salesforce/. Faults are injected on demand: lock errors,
5xx, REQUEST_LIMIT_EXCEEDED, an expired session, per-record failures, a failed job.

    with SalesforceDouble(store, metadata=ROOT / "salesforce").serve():   # routes *.salesforce.com here
        ...  # run the engine with source.kind: salesforce
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import secrets
import sqlite3
import xml.etree.ElementTree as ET
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ..ids import sf_id
from ..sources.local_org import LocalOrg

HOST = "acme.my.salesforce.com"
PREFIXES = {"Account": "001", "User": "005", "KPI_Snapshot__c": "a0K", "Subscription__c": "a0S"}
_META_TYPES = {"Lookup": "reference", "MasterDetail": "reference", "Number": "double", "Currency": "currency",
               "Checkbox": "boolean", "Text": "string", "Date": "date", "DateTime": "datetime", "Percent": "percent",
               "Url": "url", "Picklist": "picklist", "LongTextArea": "textarea", "TextArea": "textarea"}
_NUMBERS = {"double", "currency", "int", "percent", "long"}


def _f(name, type_, updateable=True, reference_to=(), external_id=False, createable=None):
    return {"name": name, "type": type_, "updateable": updateable, "createable": updateable if createable is None else createable,
            "externalId": external_id, "idLookup": name == "Id" or external_id, "referenceTo": list(reference_to),
            "nillable": name != "Id", "label": name}


STANDARD = {
    "Account": [_f("Id", "id", False), _f("Name", "string"), _f("ParentId", "reference", reference_to=["Account"]),
                _f("Website", "url"), _f("BillingCountry", "string"), _f("Industry", "picklist"),
                _f("OwnerId", "reference", reference_to=["User"]), _f("DunsNumber", "string"),
                _f("CreatedDate", "datetime", False), _f("IsDeleted", "boolean", False),
                _f("MasterRecordId", "reference", False, ["Account"])],
    "Subscription__c": [_f("Id", "id", False), _f("Account__c", "reference", reference_to=["Account"]),
                        _f("Product__c", "string"), _f("Start_Date__c", "date"), _f("End_Date__c", "date"),
                        _f("Amount__c", "currency"), _f("CurrencyIsoCode", "picklist"), _f("IsDeleted", "boolean", False)],
    "User": [_f("Id", "id", False), _f("Name", "string"), _f("Email", "email")],
}


@dataclass
class Fault:
    """One injected fault: `kind` on calls whose path matches, `times` times (record faults: per record)."""

    kind: str                     # http_500 | limit_exceeded | expire_session | lock | record_error | job_failed
    path: str = ""                # regex searched in the request path ("" = every call)
    method: str | None = None
    times: int = 1
    records: set[str] | None = None
    code: str = "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    message: str = "rejected by a validation rule"
    after: int = 0                # job_failed: records processed before the job fails
    hits: Counter = field(default_factory=Counter)


class SalesforceDouble:
    """The org behind the fake *.salesforce.com: SQLite records, describe metadata, jobs, faults, counters."""

    def __init__(self, store: Path, metadata: Path | None = None, *, username: str = "integration@acme.example",
                 password: str = "s3cret-password", security_token: str = "T0KEN-abc123", consumer_key: str = "CONSUMER-KEY",
                 public_key: bytes | None = None, api_max: int = 100_000, api_version: str = "59.0"):
        self.store = Path(store)
        self.db = sqlite3.connect(self.store, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        self.username, self.password, self.security_token = username, password, security_token
        self.consumer_key, self.public_key = consumer_key, public_key
        self.api_max, self.api_used, self.api_remaining_override = api_max, 0, None
        self.version = api_version
        self.tokens: set[str] = set()
        self.faults: list[Fault] = []
        self.calls: list[tuple[str, str]] = []     # (method, path) of every request
        self.timeouts: list[object] = []           # the timeout each request was sent with
        # (method, path, body) of the last requests; Bulk uploads (up to 100 MB each) are kept without their body
        self.bodies: deque[tuple[str, str, bytes]] = deque(maxlen=200)
        self.jobs: dict[str, dict] = {}
        self.queries: list[str] = []               # the SOQL of every REST and Bulk query
        self.cursors: dict[str, tuple[list[dict], int]] = {}
        self.schema: dict[str, dict[str, dict]] = {}
        self._next_id: dict[str, int] = {}
        self._load_schema(metadata)

    # ---- setup ----------------------------------------------------------------------------------------
    @classmethod
    def seed(cls, store: Path, folder: Path) -> None:
        """Load a folder of Data Loader CSVs into a store (the org the double serves)."""
        org = LocalOrg(folder, store)
        org.sync(org.csv_objects())
        org.close()

    def _tables(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _columns(self, obj: str) -> list[str]:
        return [r[1] for r in self.db.execute(f'PRAGMA table_info("{obj}")')]

    def _load_schema(self, metadata: Path | None) -> None:
        for obj, fields in STANDARD.items():
            self.schema[obj] = {f["name"].lower(): dict(f) for f in fields}
        if metadata is not None:
            for obj_dir in sorted(Path(metadata).glob("**/objects/*")):
                obj = obj_dir.name
                spec = self.schema.setdefault(obj, {"id": _f("Id", "id", False), "name": _f("Name", "string")})
                for meta in sorted(obj_dir.glob("fields/*.field-meta.xml")):
                    root = ET.parse(meta).getroot()
                    ns = {"m": "http://soap.sforce.com/2006/04/metadata"}
                    name = root.findtext("m:fullName", namespaces=ns)
                    mtype = root.findtext("m:type", namespaces=ns)
                    ext = root.findtext("m:externalId", default="false", namespaces=ns) == "true"
                    ref = root.findtext("m:referenceTo", namespaces=ns)
                    spec[name.lower()] = _f(name, _META_TYPES.get(mtype, "string"), reference_to=[ref] if ref else [],
                                            external_id=ext)
        tables = self._tables()
        for obj in tables:
            if obj.startswith("_") or obj.startswith("sqlite"):
                continue
            spec = self.schema.setdefault(obj, {"id": _f("Id", "id", False)})
            for col in self._columns(obj):
                spec.setdefault(col.lower(), _f(col, "string"))  # a column of the CSV: a custom text field
        for obj, spec in self.schema.items():  # every described field is a column, so writes can land
            if obj not in tables:
                self.db.execute(f'CREATE TABLE "{obj}" (Id TEXT NOT NULL PRIMARY KEY)')
            have = {c.lower() for c in self._columns(obj)}
            for f in spec.values():
                if f["name"].lower() not in have:
                    self.db.execute(f'ALTER TABLE "{obj}" ADD COLUMN "{f["name"]}" TEXT')
            if "isdeleted" in spec:
                self.db.execute(f'UPDATE "{obj}" SET IsDeleted = \'false\' WHERE IsDeleted IS NULL')
            for f in spec.values():  # Salesforce indexes External ID fields; an upsert must not scan the table
                if f["externalId"]:
                    self.db.execute(f'CREATE INDEX IF NOT EXISTS "_ext_{obj}_{f["name"]}" ON "{obj}" ("{f["name"]}")')

    def define(self, obj: str, name: str, type_: str, **kw) -> None:
        """Describe a field as the org's admin would have created it (e.g. a currency ARR field)."""
        self.schema.setdefault(obj, {"id": _f("Id", "id", False)})[name.lower()] = _f(name, type_, **kw)
        if name.lower() not in {c.lower() for c in self._columns(obj)}:
            self.db.execute(f'ALTER TABLE "{obj}" ADD COLUMN "{name}" TEXT')

    def fault(self, kind: str, **kw) -> Fault:
        f = Fault(kind, **kw)
        self.faults.append(f)
        return f

    def issue_token(self) -> str:
        token = "00D" + secrets.token_hex(12) + "!" + secrets.token_urlsafe(24)
        self.tokens.add(token)
        return token

    def records(self, obj: str, fields: list[str]) -> dict[str, tuple]:
        """{Id: values} of live records (for tests comparing end states)."""
        deleted = " WHERE IsDeleted IS NOT 'true'" if "isdeleted" in self.schema.get(obj, {}) else ""
        cols = ", ".join(f'"{f}"' for f in fields)
        return {r[0]: r[1:] for r in self.db.execute(f'SELECT Id, {cols} FROM "{obj}"{deleted}')}

    def count(self, kind: str) -> int:
        return sum(1 for _, path in self.calls if kind in path)

    # ---- serving ----------------------------------------------------------------------------------------
    @contextmanager
    def serve(self):
        """Answer every https://*.salesforce.com request of this process (responses intercepts requests' adapter)."""
        def answer(method, url, headers, body, timeout):
            self.timeouts.append(timeout)
            return self.handle(method, url, headers, body)

        with intercept(answer):
            yield self

    def serve_socket(self, address: str) -> None:
        """Answer requests that `connect` forwards from another process, one client after another, until killed.

        The double then runs beside the engine, so the engine's process holds only its own memory."""
        from multiprocessing.connection import Listener

        Path(address).unlink(missing_ok=True)  # left by a double that was killed
        with Listener(address, family="AF_UNIX") as listener:
            while True:
                with listener.accept() as conn:
                    conn.send((self.username, self.password, self.security_token))
                    while True:
                        try:
                            method, url, headers, body, timeout = conn.recv()
                        except EOFError:
                            break
                        self.timeouts.append(timeout)
                        conn.send(self.handle(method, url, headers, body))

    def handle(self, method: str, url: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        parts = urlsplit(url)
        path, query = unquote(parts.path), parse_qs(parts.query)
        self.calls.append((method, path))
        self.bodies.append((method, path, body if "/jobs/" not in path else b""))
        for f in self.faults:
            if f.kind in ("http_500", "limit_exceeded", "expire_session") and f.times > 0 and re.search(f.path, path) \
                    and (f.method is None or f.method == method) and "/services/data/" in path:
                f.times -= 1
                if f.kind == "http_500":
                    return 500, {}, b'[{"errorCode":"UNKNOWN_EXCEPTION","message":"An unexpected error occurred"}]'
                if f.kind == "limit_exceeded":
                    return _json(403, [{"errorCode": "REQUEST_LIMIT_EXCEEDED",
                                        "message": "TotalRequests Limit exceeded."}])
                self.tokens.clear()
        if path.startswith("/services/Soap/u/"):
            return self._soap_login(body)
        if path == "/services/oauth2/token":
            return self._oauth(body)
        if not path.startswith("/services/data/"):
            return _json(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return _json(401, [{"errorCode": "INVALID_SESSION_ID", "message": "Session expired or invalid"}])
        self.api_used += 1
        status, hdrs, payload = self._route(method, path.split("/services/data/v", 1)[1].split("/", 1)[1], query, body)
        hdrs["Sforce-Limit-Info"] = f"api-usage={self.api_used}/{self.api_max}"
        return status, hdrs, payload

    # ---- auth -----------------------------------------------------------------------------------------
    def _soap_login(self, body: bytes) -> tuple[int, dict, bytes]:
        text = body.decode("utf-8")
        user = re.search(r"<(?:\w+:)?username>(.*?)</(?:\w+:)?username>", text, re.S)
        pw = re.search(r"<(?:\w+:)?password>(.*?)</(?:\w+:)?password>", text, re.S)
        if not user or not pw or html.unescape(user.group(1)) != self.username or \
                html.unescape(pw.group(1)) != self.password + self.security_token:
            fault = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/'
                     'soap/envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com"><soapenv:Body><soapenv:Fault>'
                     '<faultcode>INVALID_LOGIN</faultcode><faultstring>INVALID_LOGIN: Invalid username, password, '
                     'security token; or user locked out.</faultstring><detail><sf:LoginFault><sf:exceptionCode>'
                     'INVALID_LOGIN</sf:exceptionCode><sf:exceptionMessage>Invalid username, password, security token;'
                     ' or user locked out.</sf:exceptionMessage></sf:LoginFault></detail></soapenv:Fault></soapenv:Body>'
                     '</soapenv:Envelope>')
            return 500, {"Content-Type": "text/xml"}, fault.encode()
        token = self.issue_token()
        ok = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/'
              'envelope/" xmlns="urn:partner.soap.sforce.com"><soapenv:Body><loginResponse><result>'
              f'<serverUrl>https://{HOST}/services/Soap/u/{self.version}/00D000000000001</serverUrl>'
              f'<sessionId>{token}</sessionId><userId>005000000000001AAA</userId></result></loginResponse>'
              '</soapenv:Body></soapenv:Envelope>')
        return 200, {"Content-Type": "text/xml"}, ok.encode()

    def _oauth(self, body: bytes) -> tuple[int, dict, bytes]:
        import jwt

        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return _json(400, {"error": "unsupported_grant_type", "error_description": "grant type not supported"})
        try:
            if self.public_key is not None:
                claims = jwt.decode(form.get("assertion", ""), self.public_key, algorithms=["RS256"],
                                    options={"verify_aud": False})
            else:
                claims = jwt.decode(form.get("assertion", ""), options={"verify_signature": False})
        except jwt.PyJWTError:
            return _json(400, {"error": "invalid_grant", "error_description": "invalid assertion"})
        if claims.get("iss") != self.consumer_key or claims.get("sub") != self.username:
            return _json(400, {"error": "invalid_client_id", "error_description": "client identifier invalid"})
        return _json(200, {"access_token": self.issue_token(), "instance_url": f"https://{HOST}",
                           "token_type": "Bearer", "id": "https://login.salesforce.com/id/00D/005"})

    # ---- REST -------------------------------------------------------------------------------------------
    def _route(self, method: str, rest: str, query: dict, body: bytes) -> tuple[int, dict, bytes]:
        rest = rest.rstrip("/")
        if rest == "limits" and method == "GET":
            remaining = self.api_max - self.api_used if self.api_remaining_override is None else self.api_remaining_override
            return _json(200, {"DailyApiRequests": {"Max": self.api_max, "Remaining": remaining},
                               "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000}})
        if rest == "limits/recordCount":
            names = query.get("sObjects", [""])[0].split(",")
            return _json(200, {"sObjects": [{"name": n, "count": self._count(n)} for n in names if n in self.schema]})
        m = re.fullmatch(r"sobjects/(\w+)/describe", rest)
        if m:
            spec = self.schema.get(m.group(1))
            if spec is None:
                return _json(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
            return _json(200, {"name": m.group(1), "label": m.group(1), "fields": list(spec.values())})
        if rest in ("query", "queryAll"):
            return self._rest_query(query.get("q", [""])[0], all_rows=rest == "queryAll")
        m = re.fullmatch(r"(query|queryAll)/(\w+)-(\d+)", rest)
        if m:
            return self._rest_page(m.group(2), int(m.group(3)))
        if rest.startswith("composite/sobjects"):
            return self._collections(method, rest, query, body)
        m = re.fullmatch(r"sobjects/(\w+)/(\w+)(?:/(.+))?", rest)
        if m and method == "PATCH":  # one record per call: what the naive approach does
            obj, a, b = m.groups()
            rec = json.loads(body or b"{}", parse_float=Decimal)
            if b is None:
                rid, created, err = self._apply(obj, "update", [{**rec, "Id": a}], None)[0]
            else:
                rid, created, err = self._apply(obj, "upsert", [{**rec, a: b}], a)[0]
            if err:
                code, _, msg = err.partition(":")
                return _json(400, [{"errorCode": code, "message": msg}])
            return (201, {"Content-Type": "application/json"}, json.dumps({"id": rid, "success": True}).encode()) \
                if created else (204, {}, b"")
        if rest.startswith("jobs/query"):
            return self._bulk_query(method, rest, query, body)
        if rest.startswith("jobs/ingest"):
            return self._bulk_ingest(method, rest, body)
        return _json(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])

    def _count(self, obj: str) -> int:
        deleted = " WHERE IsDeleted IS NOT 'true'" if "isdeleted" in self.schema[obj] else ""
        return self.db.execute(f'SELECT count(*) FROM "{obj}"{deleted}').fetchone()[0]

    def _select(self, soql: str, all_rows: bool):
        """(object, fields, SQL) for the SOQL subset the engine emits: SELECT f, ... FROM Obj [WHERE a = 'v' [AND ...]]."""
        self.queries.append(soql)
        m = re.fullmatch(r"\s*SELECT\s+(.+?)\s+FROM\s+(\w+)(?:\s+WHERE\s+(.+?))?(?:\s+LIMIT\s+(\d+))?\s*", soql, re.I | re.S)
        if not m:
            raise _SoqlError("MALFORMED_QUERY", "unexpected token in query")
        obj = m.group(2)
        spec = self.schema.get(obj)
        if spec is None:
            raise _SoqlError("INVALID_TYPE", f"sObject type '{obj}' is not supported.")
        fields = [f.strip() for f in m.group(1).split(",")]
        for f in fields:
            if f.lower() not in spec:
                raise _SoqlError("INVALID_FIELD", f"No such column '{f}' on entity '{obj}'.")
        where, args = [], []
        if not all_rows and "isdeleted" in spec:
            where.append("IsDeleted IS NOT 'true'")
        for cond in re.split(r"\s+AND\s+", m.group(3) or "", flags=re.I) if m.group(3) else []:
            c = re.fullmatch(r"(\w+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(true|false|null))", cond.strip(), re.I)
            if not c or c.group(1).lower() not in spec:
                raise _SoqlError("MALFORMED_QUERY", f"unsupported condition {cond.strip()!r}")
            if c.group(3) and c.group(3).lower() == "null":
                where.append(f'"{c.group(1)}" IS NULL')
            else:
                where.append(f'"{c.group(1)}" = ?')
                args.append(c.group(2) if c.group(2) is not None else c.group(3).lower())
        sql = f'SELECT {", ".join(chr(34) + f + chr(34) for f in fields)} FROM "{obj}"'
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY rowid"
        if m.group(4):
            sql += f" LIMIT {int(m.group(4))}"
        return obj, fields, sql, args

    def _rest_query(self, soql: str, all_rows: bool) -> tuple[int, dict, bytes]:
        try:
            obj, fields, sql, args = self._select(soql, all_rows)
        except _SoqlError as exc:
            return _json(400, [{"errorCode": exc.code, "message": exc.message}])
        spec = self.schema[obj]
        rows = [{"attributes": {"type": obj, "url": f"/services/data/v{self.version}/sobjects/{obj}/{r[0]}"},
                 **{f: _typed(spec[f.lower()]["type"], v) for f, v in zip(fields, r)}}
                for r in self.db.execute(sql, args)]
        cursor = "01g" + secrets.token_hex(6)
        self.cursors[cursor] = (rows, 0)
        return self._rest_page(cursor, 0, all_rows)

    def _rest_page(self, cursor: str, offset: int, all_rows: bool = False) -> tuple[int, dict, bytes]:
        if cursor not in self.cursors:
            return _json(400, [{"errorCode": "INVALID_QUERY_LOCATOR", "message": "invalid query locator"}])
        rows, _ = self.cursors[cursor]
        page = rows[offset:offset + 2000]
        done = offset + 2000 >= len(rows)
        out = {"totalSize": len(rows), "done": done, "records": page}
        if not done:
            out["nextRecordsUrl"] = f"/services/data/v{self.version}/{'queryAll' if all_rows else 'query'}/{cursor}-{offset + 2000}"
        return 200, {"Content-Type": "application/json"}, json.dumps(out, default=_json_default).encode()

    def _collections(self, method: str, rest: str, query: dict, body: bytes) -> tuple[int, dict, bytes]:
        if method == "DELETE":
            ids = query.get("ids", [""])[0].split(",")
            if len(ids) > 200:
                return _json(400, [{"errorCode": "EXCEEDED_ID_LIMIT", "message": "record limit reached. cannot submit more than 200 records into this call"}])
            obj = self._object_of(ids[0]) if ids and ids[0] else "Account"
            results = self._apply(obj, "delete", [{"Id": i} for i in ids], None)
        else:
            doc = json.loads(body or b"{}", parse_float=Decimal)
            records = doc.get("records", [])
            if len(records) > 200:
                return _json(400, [{"errorCode": "EXCEEDED_ID_LIMIT", "message": "record limit reached. cannot submit more than 200 records into this call"}])
            m = re.fullmatch(r"composite/sobjects/(\w+)/(\w+)", rest)
            obj = m.group(1) if m else (records[0]["attributes"]["type"] if records else "Account")
            op = "upsert" if m else ("insert" if method == "POST" else "update")
            results = self._apply(obj, op, [{k: v for k, v in r.items() if k != "attributes"} for r in records],
                                  m.group(2) if m else None)
        out = []
        for rid, created, err in results:
            if err:
                code, _, msg = err.partition(":")
                out.append({"id": rid, "success": False, "errors": [{"statusCode": code, "message": msg.strip(), "fields": []}]})
            else:
                out.append({"id": rid, "success": True, "errors": [], **({"created": created} if method != "DELETE" else {})})
        return _json(200, out)

    def _object_of(self, rid: str) -> str:
        for obj, prefix in PREFIXES.items():
            if rid.startswith(prefix):
                return obj
        return "Account"

    # ---- writes (shared by collections, single records and Bulk ingest) --------------------------------
    def _apply(self, obj: str, op: str, records: list[dict], external_id: str | None) -> list[tuple[str | None, bool, str | None]]:
        """Apply records one by one (partial success, as allOrNone=false and Bulk do)."""
        spec = self.schema[obj]
        out = []
        for rec in records:
            key = rec.get("Id") or (rec.get(external_id) if external_id else None)
            err = self._record_fault(str(key))
            if err:
                out.append((rec.get("Id"), False, err))
                continue
            try:
                out.append(self._apply_one(obj, spec, op, rec, external_id))
            except _RecordError as exc:
                out.append((rec.get("Id"), False, f"{exc.code}:{exc.message}"))
        return out

    def _record_fault(self, key: str) -> str | None:
        for f in self.faults:
            if f.kind in ("lock", "record_error") and (f.records is None or key in f.records) and f.hits[key] < f.times:
                f.hits[key] += 1
                if f.kind == "lock":
                    return "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record or 1 records"
                return f"{f.code}:{f.message}"
        return None

    def _apply_one(self, obj, spec, op, rec, external_id):
        values = {}
        for k, v in rec.items():
            if k == "Id" or (op == "upsert" and k == external_id):
                continue
            f = spec.get(k.lower())
            if f is None:
                raise _RecordError("INVALID_FIELD", f"No such column '{k}' on sobject of type {obj}")
            if not f["updateable"] and not (op == "insert" and f["createable"]):
                raise _RecordError("INVALID_FIELD_FOR_INSERT_UPDATE", f"Unable to create/update fields: {k}")
            values[f["name"]] = self._check_value(obj, f, v)
        if op in ("update", "delete"):
            rid = rec.get("Id")
            if not rid or not re.fullmatch(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?", str(rid)):
                raise _RecordError("MALFORMED_ID", f"malformed id {rid}")
            if self.db.execute(f'SELECT 1 FROM "{obj}" WHERE Id = ?', (rid,)).fetchone() is None:
                raise _RecordError("ENTITY_IS_DELETED", "entity is deleted")
            if op == "delete":
                self.db.execute(f'DELETE FROM "{obj}" WHERE Id = ?', (rid,))
            elif values:
                self.db.execute(f'UPDATE "{obj}" SET {", ".join(chr(34) + k + chr(34) + " = ?" for k in values)} '
                                "WHERE Id = ?", [*values.values(), rid])
            return rid, False, None
        rid = None
        if op == "upsert":
            key = rec.get(external_id)
            f = spec.get(external_id.lower())
            if f is None or not f["externalId"]:
                raise _RecordError("INVALID_FIELD", f"{external_id} is not an External ID field of {obj}")
            values[f["name"]] = str(key)
            row = self.db.execute(f'SELECT Id FROM "{obj}" WHERE "{f["name"]}" = ?', (str(key),)).fetchone()
            if row:
                rid = row[0]
                self.db.execute(f'UPDATE "{obj}" SET {", ".join(chr(34) + k + chr(34) + " = ?" for k in values)} '
                                "WHERE Id = ?", [*values.values(), rid])
                return rid, False, None
        prefix = PREFIXES.get(obj, "a0X")
        if obj not in self._next_id:  # counted once per object, not per insert (count(*) scans the table)
            self._next_id[obj] = self.db.execute(f'SELECT count(*) FROM "{obj}"').fetchone()[0] + 1
        while rid is None or self.db.execute(f'SELECT 1 FROM "{obj}" WHERE Id = ?', (rid,)).fetchone():
            rid = sf_id(prefix, 10_000_000 + self._next_id[obj])
            self._next_id[obj] += 1
        cols = ["Id", *values]
        self.db.execute(f'INSERT INTO "{obj}" ({", ".join(chr(34) + c + chr(34) for c in cols)}) VALUES '
                        f'({", ".join("?" * len(cols))})', [rid, *values.values()])
        return rid, True, None

    def _check_value(self, obj, f, v):
        if v is None:
            return None
        t = f["type"]
        text = v if isinstance(v, str) else ("true" if v is True else "false" if v is False else str(v))
        if t in _NUMBERS:
            try:
                Decimal(text)
            except InvalidOperation:
                raise _RecordError("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{f['name']}: value not of required type: {text[:40]}") from None
        if t == "reference" and f["referenceTo"] == ["Account"] and self.db.execute(
                'SELECT 1 FROM "Account" WHERE Id = ?', (text,)).fetchone() is None:
            raise _RecordError("INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {f['name']}")
        return text

    # ---- Bulk API 2.0 -----------------------------------------------------------------------------------
    def _bulk_query(self, method, rest, query, body) -> tuple[int, dict, bytes]:
        if rest == "jobs/query" and method == "POST":
            spec = json.loads(body)
            try:
                obj, fields, sql, args = self._select(spec.get("query", ""), spec.get("operation") == "queryAll")
            except _SoqlError as exc:
                return _json(400, [{"errorCode": exc.code, "message": exc.message}])
            job_id = "750" + secrets.token_hex(6)
            table = f"_bulkq_{job_id}"
            self.db.execute(f'CREATE TABLE "{table}" AS {sql}', args)
            self.jobs[job_id] = {"id": job_id, "operation": spec.get("operation"), "object": obj, "state": "UploadComplete",
                                 "table": table, "fields": fields, "polls": 0}
            return _json(200, {k: v for k, v in self.jobs[job_id].items() if k not in ("table", "fields", "polls")})
        m = re.fullmatch(r"jobs/query/(\w+)(/results)?", rest)
        job = self.jobs.get(m.group(1)) if m else None
        if job is None:
            return _json(404, [{"errorCode": "NOT_FOUND", "message": "job not found"}])
        if not m.group(2):
            job["polls"] += 1
            job["state"] = "InProgress" if job["polls"] == 1 else "JobComplete"   # one poll sees it still running
            total = self.db.execute(f'SELECT count(*) FROM "{job["table"]}"').fetchone()[0]
            return _json(200, {"id": job["id"], "state": job["state"], "numberRecordsProcessed": total})
        if job["state"] != "JobComplete":
            return _json(400, [{"errorCode": "INVALIDJOBSTATE", "message": "job is not complete"}])
        limit = int(query.get("maxRecords", ["50000"])[0])
        offset = int(base64.b64decode(query["locator"][0]).decode()) if query.get("locator") else 0
        rows = self.db.execute(f'SELECT * FROM "{job["table"]}" WHERE rowid > ? ORDER BY rowid LIMIT ?',
                               (offset, limit)).fetchall()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
        w.writerow(job["fields"])
        w.writerows(["" if v is None else v for v in r] for r in rows)
        more = self.db.execute(f'SELECT 1 FROM "{job["table"]}" WHERE rowid > ? LIMIT 1', (offset + len(rows),)).fetchone()
        locator = base64.b64encode(str(offset + len(rows)).encode()).decode() if more else "null"
        return 200, {"Content-Type": "text/csv", "Sforce-Locator": locator, "Sforce-NumberOfRecords": str(len(rows))}, \
            buf.getvalue().encode("utf-8")

    def _bulk_ingest(self, method, rest, body) -> tuple[int, dict, bytes]:
        if rest == "jobs/ingest" and method == "POST":
            spec = json.loads(body)
            obj, op = spec.get("object"), spec.get("operation")
            if obj not in self.schema:
                return _json(400, [{"errorCode": "INVALIDJOB", "message": f"InvalidJob : Invalid object type : {obj}"}])
            if op not in ("insert", "update", "upsert", "delete", "hardDelete"):
                return _json(400, [{"errorCode": "INVALIDJOB", "message": f"InvalidJob : Invalid operation : {op}"}])
            job_id = "750" + secrets.token_hex(6)
            self.jobs[job_id] = {"id": job_id, "object": obj, "operation": op, "state": "Open",
                                 "externalIdFieldName": spec.get("externalIdFieldName"), "data": None,
                                 "numberRecordsProcessed": 0, "numberRecordsFailed": 0, "results": None}
            return _json(200, self._job_info(job_id))
        m = re.fullmatch(r"jobs/ingest/(\w+)(?:/(batches|successfulResults|failedResults|unprocessedrecords))?", rest)
        job = self.jobs.get(m.group(1)) if m else None
        if job is None:
            return _json(404, [{"errorCode": "NOT_FOUND", "message": "job not found"}])
        sub = m.group(2)
        if sub == "batches" and method == "PUT":
            if job["state"] != "Open" or job["data"] is not None:
                return _json(400, [{"errorCode": "INVALIDJOBSTATE", "message": "Job is not open for upload"}])
            job["data"] = body.decode("utf-8")
            return 201, {}, b""
        if sub is None and method == "PATCH":
            state = json.loads(body).get("state")
            if state == "UploadComplete":
                self._process(job)
            elif state == "Aborted":
                job["state"] = "Aborted"
            return _json(200, self._job_info(job["id"]))
        if sub is None and method == "GET":
            return _json(200, self._job_info(job["id"]))
        if sub is None and method == "DELETE":
            del self.jobs[job["id"]]
            return 204, {}, b""
        if job["results"] is None:
            return _json(400, [{"errorCode": "INVALIDJOBSTATE", "message": "job has no results yet"}])
        header, ok, failed, unprocessed = job["results"]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
        if sub == "successfulResults":
            w.writerow(["sf__Id", "sf__Created", *header])
            w.writerows([rid, "true" if created else "false", *row] for rid, created, row in ok)
        elif sub == "failedResults":
            w.writerow(["sf__Id", "sf__Error", *header])
            w.writerows([rid or "", err, *row] for rid, err, row in failed)
        else:
            w.writerow(header)
            w.writerows(unprocessed)
        return 200, {"Content-Type": "text/csv"}, buf.getvalue().encode("utf-8")

    def _job_info(self, job_id: str) -> dict:
        j = self.jobs[job_id]
        info = {k: j[k] for k in ("id", "object", "operation", "state", "numberRecordsProcessed", "numberRecordsFailed")}
        info.update({"contentType": "CSV", "lineEnding": "LF", "columnDelimiter": "COMMA", "apiVersion": float(self.version)})
        if j.get("externalIdFieldName"):
            info["externalIdFieldName"] = j["externalIdFieldName"]
        if j.get("errorMessage"):
            info["errorMessage"] = j["errorMessage"]
        return info

    def _process(self, job: dict) -> None:
        obj, op, spec = job["object"], job["operation"], self.schema[job["object"]]
        reader = csv.reader(io.StringIO(job["data"] or ""))
        header = next(reader, [])
        rows = list(reader)
        for h in header:
            if h.lower() not in spec:
                job.update(state="Failed", errorMessage=f"InvalidBatch : Field name not found : {h}", results=(header, [], [], rows))
                return
        fail = next((f for f in self.faults if f.kind == "job_failed" and f.times > 0), None)
        limit = len(rows)
        if fail is not None:
            fail.times -= 1
            limit = min(fail.after, len(rows))
        ok, failed = [], []
        self.db.execute("BEGIN")
        for row in rows[:limit]:
            rec = {h: (None if v == "#N/A" else v) for h, v in zip(header, row) if v != ""}
            rid, created, err = self._apply(obj, "delete" if op == "hardDelete" else op, [rec], job["externalIdFieldName"])[0]
            if err:
                failed.append((rec.get("Id"), err, row))
            else:
                ok.append((rid, created, row))
        self.db.execute("COMMIT")
        job.update(numberRecordsProcessed=limit, numberRecordsFailed=len(failed), results=(header, ok, failed, rows[limit:]),
                   state="JobComplete" if fail is None else "Failed")
        if fail is not None:
            job["errorMessage"] = "InternalServerError : the job failed while processing records"


@contextmanager
def intercept(answer):
    """Route every https://*.salesforce.com request of this process to answer(method, url, headers, body, timeout)."""
    import responses

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        registered = []

        def callback(request):
            # responses keeps every request and response, with bodies, in its own list and in each registered
            # response's: gigabytes at 1M records. Only the previous call is kept.
            rsps.calls.reset()
            for r in registered:
                r.calls.reset()
            body = request.body
            if isinstance(body, str):
                body = body.encode("utf-8")
            timeout = getattr(request, "req_kwargs", {}).get("timeout")
            return answer(request.method, request.url, dict(request.headers), body or b"", timeout)

        pattern = re.compile(r"https://[A-Za-z0-9.-]+\.salesforce\.com/.*")
        registered += [rsps.add_callback(method, pattern, callback=callback)
                       for method in ("GET", "POST", "PATCH", "PUT", "DELETE")]
        yield


@contextmanager
def connect(address: str):
    """Forward this process's Salesforce requests to a double serving on `address`; yields its credentials."""
    from multiprocessing.connection import Client

    with Client(address, family="AF_UNIX") as conn:
        credentials = conn.recv()

        def answer(*request):
            conn.send(request)
            return conn.recv()

        with intercept(answer):
            yield credentials


class _SoqlError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class _RecordError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _typed(sf_type: str, value: str | None):
    """A stored text value as REST JSON types it."""
    if value is None:
        return None
    if sf_type in _NUMBERS:
        return Decimal(value)
    if sf_type == "boolean":
        return value == "true"
    return value


def _json_default(v):
    if isinstance(v, Decimal):
        return float(v)
    raise TypeError(type(v).__name__)


def _json(status: int, payload) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(payload, default=_json_default).encode()


def main(argv: list[str] | None = None) -> int:
    """python -m nrr_engine.testing.salesforce_double seed STORE ORG_FOLDER
       python -m nrr_engine.testing.salesforce_double STORE METADATA -- <nrr-engine arguments>
       python -m nrr_engine.testing.salesforce_double serve STORE METADATA SOCKET
       python -m nrr_engine.testing.salesforce_double connect SOCKET -- <nrr-engine arguments>

    `seed` loads a folder of Data Loader CSVs into STORE (the org the double serves; METADATA is an SFDX
    folder such as salesforce/). The second runs nrr-engine in this process with every *.salesforce.com
    call answered by the double over STORE. `serve` runs the double alone on a Unix socket until killed; `connect` runs nrr-engine with its
    calls forwarded there, so the engine's process holds only its own memory. The credentials are put in
    SF_USERNAME / SF_PASSWORD / SF_SECURITY_TOKEN. Used by bench/run.py."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "seed":
        SalesforceDouble.seed(Path(args[1]), Path(args[2]))
        return 0
    if len(args) == 4 and args[0] == "serve":
        SalesforceDouble(Path(args[1]), metadata=Path(args[2])).serve_socket(args[3])
        return 0
    if len(args) >= 3 and args[0] == "connect" and args[2] == "--":
        with connect(args[1]) as credentials:
            return _run_cli(credentials, args[3:])
    if len(args) >= 3 and args[2] == "--":
        double = SalesforceDouble(Path(args[0]), metadata=Path(args[1]))
        with double.serve():
            return _run_cli((double.username, double.password, double.security_token), args[3:])
    print(main.__doc__, file=sys.stderr)
    return 2


def _run_cli(credentials: tuple[str, str, str], args: list[str]) -> int:
    """Run the installed program's entry point (`python -m nrr_engine ARGS`) in this process, as any caller
    would: the double depends on no module of the engine beyond the Id helpers."""
    import os
    import runpy
    import sys

    os.environ.update(zip(("SF_USERNAME", "SF_PASSWORD", "SF_SECURITY_TOKEN"), credentials))
    saved = sys.argv
    sys.argv = ["nrr-engine", *args]
    try:
        runpy.run_module("nrr_engine", run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    raise SystemExit(main())
