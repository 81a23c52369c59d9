"""A test double of the Salesforce APIs nrr-engine uses, served behind HTTP to the real simple-salesforce client.

It answers SOAP login, the OAuth 2.0 JWT bearer and client credentials flows, /limits and
/limits/recordCount, describe, REST query/queryAll with paging (and SELECT COUNT()), single-record and
sObject Collections writes, Bulk API 2.0 query (locator paging with Sforce-Locator and
Sforce-NumberOfRecords) and ingest (create, upload, close, poll, successfulResults, failedResults,
unprocessedrecords). Records live in SQLite, seeded from a folder of Data Loader CSVs as an org's import takes
them (`seed`: a value its field cannot hold is refused); custom fields come from the SFDX metadata in
salesforce/ (shipped in the package), standard fields carry their documented sizes, fields neither describes
are typed by `seed --types` or, conservatively, from their values.

It is as strict as an org, each rule from Salesforce's documentation (cited where it is enforced): text
length (STRING_TOO_LONG), the integer digits of number/currency/percent fields (NUMBER_OUTSIDE_VALID_RANGE),
restricted picklists, required fields, references, field-level security and object permissions from a
permission model loaded from permission set files (invisible fields vanish from describe and queries,
read-only ones cannot be written, an object without Delete cannot be deleted from), the JWT audience,
/limits only with View Setup and Configuration, API Enabled, soft delete (IsDeleted, queryAll), merge
(MasterRecordId, related records reparented), SystemModstamp set by the server on every insert, update and
delete (read-only through the API) from the org's clock, which every answer's Date header gives too, SOQL
comparisons with unquoted date and dateTime literals (`WHERE SystemModstamp > 2026-12-01T02:00:00Z`) in REST
and Bulk API 2.0 queries, query results in no particular order (unless ORDER BY) and numbers as an org prints
its doubles (1.2345678E7). Not modelled: record sharing (a user who can read an object sees all its records),
validation rules and triggers (inject them as faults), LastModifiedDate, and uniqueness beyond upsert matching.

Faults are injected on demand: lock errors, 5xx, REQUEST_LIMIT_EXCEEDED, an expired session, per-record
failures, a failed ingest or query job, errors that echo the Bearer token or the login's password/client secret.

    with SalesforceDouble(store, metadata=ROOT / "salesforce").serve():   # routes *.salesforce.com here
        ...  # run the engine with source.kind: salesforce
"""
from __future__ import annotations

import base64
import copy
import csv
import datetime as dt
import html
import io
import json
import math
import re
import secrets
import sqlite3
import xml.etree.ElementTree as ET
from collections import Counter, deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import DataError, Location
from ..ids import sf_id
from ..sources.local_org import LocalOrg

HOST = "acme.my.salesforce.com"
PREFIXES = {"Account": "001", "User": "005", "KPI_Snapshot__c": "a0K", "Subscription__c": "a0S"}
PREFIXES_BY_KEY = {v: k for k, v in PREFIXES.items()}
_MD = {"m": "http://soap.sforce.com/2006/04/metadata"}
_META_TYPES = {"Lookup": "reference", "MasterDetail": "reference", "Number": "double", "Currency": "currency",
               "Checkbox": "boolean", "Text": "string", "Date": "date", "DateTime": "datetime", "Percent": "percent",
               "Url": "url", "Picklist": "picklist", "LongTextArea": "textarea", "TextArea": "textarea",
               "Email": "email", "Phone": "phone", "Html": "textarea"}
_NUMBERS = {"double", "currency", "int", "percent", "long"}
_TEXTS = {"string", "textarea", "url", "email", "phone", "picklist", "multipicklist", "combobox", "encryptedstring"}
_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_DEFAULT_LENGTH = {"reference": 18, "id": 18, "textarea": 32768}
# The integration user's Id (what the login answers); records it creates are owned by it.
USER_ID = "005000000000001AAA"


def _f(name, type_, updateable=True, reference_to=(), external_id=False, createable=None, *, length=None,
       precision=None, scale=None, picklist=(), restricted=False, label=None, fls=None, nillable=None,
       unique=False, auto_number=False, defaulted=False):
    """A describe field entry (the keys the REST describe returns); `_fls` names the field-level security entry
    that governs it ("" = none: system, required and name fields are not permissionable)."""
    text_like = type_ in _TEXTS or type_ in ("reference", "id")
    if type_ in ("double", "percent"):
        precision, scale = (18 if precision is None else precision), (0 if scale is None else scale)
    elif type_ == "currency":
        precision, scale = (18 if precision is None else precision), (2 if scale is None else scale)
    return {"name": name, "label": label or name, "type": type_, "updateable": updateable,
            "createable": updateable if createable is None else createable,
            "externalId": external_id, "idLookup": name == "Id" or external_id, "unique": unique,
            "referenceTo": list(reference_to), "nillable": (name != "Id") if nillable is None else nillable,
            "length": (length or _DEFAULT_LENGTH.get(type_, 255)) if text_like else 0,
            "precision": precision or 0, "scale": scale or 0, "digits": 9 if type_ == "int" else 0,
            "picklistValues": [{"value": v, "label": v, "active": True, "defaultValue": False} for v in picklist],
            "restrictedPicklist": restricted, "autoNumber": auto_number, "calculated": False,
            "defaultedOnCreate": defaulted or type_ == "boolean" or auto_number,
            "_fls": (name if name.endswith("__c") else "") if fls is None else fls}


def _system(name, type_, **kw):
    return _f(name, type_, False, fls="", **kw)


def _stamp_field() -> dict:
    """SystemModstamp: "Date and time when a user or automated process (such as a trigger) last modified this
    record" (Object Reference: System Fields), set by the server on every insert, update and delete, read-only
    through the API (not createable or updateable, so a write of it is INVALID_FIELD_FOR_INSERT_UPDATE)."""
    return _system("SystemModstamp", "datetime", defaulted=True, label="System Modstamp")


# Standard fields with the sizes Salesforce documents for them (Object Reference: Account, User).
STANDARD = {
    "Account": [_system("Id", "id"), _f("Name", "string", length=255, nillable=False, fls="", label="Account Name"),
                _f("ParentId", "reference", reference_to=["Account"], fls="ParentId", label="Parent Account ID"),
                _f("Website", "url", length=255, fls="Website"),
                _f("BillingCountry", "string", length=80, fls="BillingAddress", label="Billing Country"),
                _f("Industry", "picklist", length=255, fls="Industry"),
                _f("OwnerId", "reference", reference_to=["User"], fls="", defaulted=True, label="Owner ID"),
                _f("DunsNumber", "string", length=9, fls="DunsNumber", label="D-U-N-S Number"),
                _system("CreatedDate", "datetime", defaulted=True), _system("IsDeleted", "boolean"),
                _system("MasterRecordId", "reference", reference_to=["Account"]), _stamp_field()],
    # the demo's subscription object: in a real org the org's own (e.g. SBQQ__Subscription__c), not shipped
    "Subscription__c": [_system("Id", "id"), _f("Account__c", "reference", reference_to=["Account"], label="Account"),
                        _f("Product__c", "string", length=255, label="Product"),
                        _f("Start_Date__c", "date", label="Start Date"), _f("End_Date__c", "date", label="End Date"),
                        _f("Amount__c", "currency", precision=18, scale=2, label="Amount"),
                        _f("CurrencyIsoCode", "picklist", length=3, fls="", label="Currency ISO Code"),
                        _system("IsDeleted", "boolean"), _stamp_field()],
    "User": [_system("Id", "id"), _f("Name", "string", length=121, fls="", nillable=False),
             _f("Email", "email", length=128, fls=""), _stamp_field()],
}


def _new_object() -> dict[str, dict]:
    """The fields every object has, before its own: Id, IsDeleted (soft delete) and SystemModstamp."""
    return {"id": _system("Id", "id"), "isdeleted": _system("IsDeleted", "boolean"), "systemmodstamp": _stamp_field()}


def packaged_metadata() -> Path:
    """The SFDX project the package ships (the repository's salesforce/, linked into the package as
    scaffold/salesforce): the engine's custom fields, KPI_Snapshot__c and the permission sets."""
    from importlib import resources

    return Path(str(resources.files("nrr_engine").joinpath("scaffold/salesforce")))


def described(metadata: Path | None) -> tuple[dict[str, dict[str, dict]], dict[str, dict], dict[tuple[str, str], str]]:
    """(schema, object facts, where each field's description comes from) for the standard fields and the SFDX
    metadata: {object: {lower-case field: describe entry}}, {object: {"label": ...}},
    {(object, lower-case field): "standard" | "the demo's subscription object" | "metadata"}."""
    schema: dict[str, dict[str, dict]] = {}
    sobjects: dict[str, dict] = {}
    source: dict[tuple[str, str], str] = {}
    for obj, fields in STANDARD.items():
        schema[obj] = {f["name"].lower(): dict(f) for f in fields}
        sobjects[obj] = {"label": obj}
        what = "the demo's subscription object" if obj == "Subscription__c" else "standard"
        source.update({(obj, k): what for k in schema[obj]})
    if metadata is not None:
        for obj_dir in sorted(Path(metadata).glob("**/objects/*")):
            for name in _load_object(schema, sobjects, obj_dir):
                source[(obj_dir.name, name)] = "metadata"
    return schema, sobjects, source


def _load_object(schema: dict, sobjects: dict, obj_dir: Path) -> list[str]:
    """A custom object (or custom fields of a standard one) from SFDX source: the sizes, picklist values and
    External ID flags of `<field>.field-meta.xml` (Metadata API: CustomField). Returns the fields it described."""
    obj = obj_dir.name
    spec = schema.get(obj)
    added = []
    if spec is None:  # a custom object: its standard fields (Id, Name, Owner, IsDeleted, CreatedDate, SystemModstamp)
        spec = schema[obj] = {"id": _system("Id", "id")}
        name_field = _f("Name", "string", length=80, fls="", nillable=False)
        meta = obj_dir / f"{obj}.object-meta.xml"
        if meta.is_file():
            root = ET.parse(meta).getroot()
            label = root.findtext("m:label", obj, _MD)
            sobjects[obj] = {"label": label}
            if root.findtext("m:nameField/m:type", "", _MD) == "AutoNumber":  # set by Salesforce, never written
                name_field = _system("Name", "string", length=30, auto_number=True, nillable=False)
        sobjects.setdefault(obj, {"label": obj})
        spec.update({"name": name_field, "ownerid": _f("OwnerId", "reference", reference_to=["User"], fls="",
                                                       defaulted=True),
                     "isdeleted": _system("IsDeleted", "boolean"),
                     "createddate": _system("CreatedDate", "datetime", defaulted=True),
                     "systemmodstamp": _stamp_field()})
        added += ["id", "name", "ownerid", "isdeleted", "createddate", "systemmodstamp"]
    for path in sorted(obj_dir.glob("fields/*.field-meta.xml")):
        root = ET.parse(path).getroot()
        text = lambda tag, default="": root.findtext(f"m:{tag}", default, _MD)  # noqa: E731
        name, mtype = text("fullName"), text("type")
        sf_type = _META_TYPES.get(mtype, "string")
        values = [v.findtext("m:fullName", "", _MD)
                  for v in root.findall("m:valueSet/m:valueSetDefinition/m:value", _MD)]
        spec[name.lower()] = _f(
            name, sf_type, reference_to=[text("referenceTo")] if text("referenceTo") else [],
            external_id=text("externalId", "false") == "true", unique=text("unique", "false") == "true",
            label=text("label") or name, length=int(text("length") or 0) or None,
            precision=int(text("precision")) if text("precision") else None,
            scale=int(text("scale")) if text("scale") else None, picklist=values,
            restricted=root.findtext("m:valueSet/m:restricted", "false", _MD) == "true",
            nillable=text("required", "false") != "true",
            fls="" if mtype == "MasterDetail" or text("required", "false") == "true" else name)
        added.append(name.lower())
    return added


# ---- seeding: Data Loader CSVs -> the org's store, as an org's import would take them --------------------------

_TYPED = "_double_fields"   # the store's table of fields typed by `seed --types` or from the data
_CLOCK = "_double_clock"    # the org's time as SystemModstamp text, read by the store's stamping triggers
_STAMPS = "_stamps_"        # _stamps_<Object>: each record's SystemModstamp (Id, stamp), kept by triggers
# "Cursors and their related query results are available for 2 days ... There isn't a limit on the number of open
# cursors" (since API version 56.0; Salesforce App Limits: API Query Cursor Limits)
_CURSOR_LIFE = dt.timedelta(days=2)
_TYPE_NAMES = {"string", "textarea", "url", "email", "phone", "picklist", "double", "currency", "percent", "int",
               "date", "datetime", "boolean", "reference"}
_TYPE_OPTION = re.compile(r"\s*([A-Za-z][A-Za-z0-9_]*)\.([A-Za-z][A-Za-z0-9_]*)\s*=\s*([a-z]+)"
                          r"(?:\(\s*([A-Za-z0-9_]+)\s*(?:,\s*([0-9]+)\s*)?\))?\s*(?:,|$)")


def parse_types(options: str | Sequence[str]) -> dict[tuple[str, str], dict]:
    """`Object.Field=type[(size)]` items (comma-separated, or one per option) -> {(object, field): describe entry}.

    Types: string(LENGTH) textarea url email phone picklist, double(PRECISION,SCALE) currency(P,S) percent(P,S) int,
    date datetime boolean, reference(OBJECT). E.g. `Subscription__c.Amount__c=currency(16,2)`."""
    out: dict[tuple[str, str], dict] = {}
    for text in [options] if isinstance(options, str) else options:
        pos, text = 0, text.strip()
        while pos < len(text):
            m = _TYPE_OPTION.match(text, pos)
            if not m or m.end() == pos:
                raise DataError(f"--types: cannot read {text[pos:][:60]!r}; expected Object.Field=type[(size)], e.g. "
                                f"Subscription__c.Amount__c=currency(16,2) (types: {', '.join(sorted(_TYPE_NAMES))})")
            obj, name, type_, a, b = m.groups()
            if type_ not in _TYPE_NAMES:
                raise DataError(f"--types: {obj}.{name}: unknown type {type_!r}; expected one of "
                                f"{', '.join(sorted(_TYPE_NAMES))}")
            kw: dict = {}
            if type_ == "reference":
                if not a or b:
                    raise DataError(f"--types: {obj}.{name}: a reference names its object: reference(Account)")
                kw["reference_to"] = [a]
            elif a is not None:
                if not a.isdigit():
                    raise DataError(f"--types: {obj}.{name}: {type_}({a}) is not a size")
                if type_ in ("double", "currency", "percent"):
                    kw.update(precision=int(a), scale=int(b or 0))
                    if kw["scale"] > kw["precision"] or kw["precision"] > 18:
                        raise DataError(f"--types: {obj}.{name}: {type_}({a},{b or 0}): precision is at most 18 and "
                                        "at least the scale")
                elif b is None:
                    kw["length"] = int(a)
                else:
                    raise DataError(f"--types: {obj}.{name}: {type_} takes one size, its length")
            out[(obj, name)] = _f(name, type_, **kw)
            pos = m.end()
    return out


def type_text(f: dict) -> str:
    """A field's type as the README and seed messages name it: currency(18,2), string(255), reference(Account)."""
    t = f["type"]
    if t in ("double", "currency", "percent"):
        return f"{t}({f['precision']},{f['scale']})"
    if t == "reference":
        return f"reference({','.join(f['referenceTo'])})" if f["referenceTo"] else t
    if t in _TEXTS and f["length"]:
        return f"{t}({f['length']})"
    return t


def _utf16(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2


def _infer(db: sqlite3.Connection, obj: str, col: str, prefixes: dict[str, str]) -> tuple[dict, str]:
    """(describe entry, why) for a column no metadata types, from its values, conservatively: a type that holds
    every value, and text unless every value is unmistakably something else. Whole numbers stay text (DUNS numbers,
    postal codes and other codes lose their leading zeros or their digits as numbers); a number field needs one
    value with a decimal part or an exponent, as Data Loader exports its doubles (1500.0)."""
    q = f'SELECT "{col}" FROM "{obj}" WHERE "{col}" IS NOT NULL AND "{col}" != \'\''
    kinds = {"boolean", "date", "datetime", "number", "reference"}
    n = scale = whole = 0
    fraction, refs = False, set()
    for (v,) in db.execute(q):
        n += 1
        if "boolean" in kinds and v.lower() not in ("true", "false"):
            kinds.discard("boolean")
        if "date" in kinds and _unfit(_f(col, "date"), v):
            kinds.discard("date")
        if "datetime" in kinds and ("T" not in v or _unfit(_f(col, "datetime"), v)):
            kinds.discard("datetime")
        if "reference" in kinds:
            if _ID.fullmatch(v) and v[:3] in prefixes:
                refs.add(prefixes[v[:3]])
            else:
                kinds.discard("reference")
        if "number" in kinds:
            m = _NUMBER_TEXT.fullmatch(v)
            digits = v.lstrip("+-")
            if not m or (len(digits) > 1 and digits[0] == "0" and digits[1] != "."):
                kinds.discard("number")
            else:
                d = Decimal(v)
                fraction = fraction or "." in v or "e" in v.lower()
                scale = max(scale, -d.as_tuple().exponent if d.as_tuple().exponent < 0 else 0)
                whole = max(whole, d.adjusted() + 1 if d else 0)
        if not kinds:
            break
    longest = db.execute(f'SELECT max(length("{col}")) FROM "{obj}"').fetchone()[0] or 0
    if n == 0:
        return _f(col, "string", length=255), "no values"
    if "boolean" in kinds:
        return _f(col, "boolean"), "every value is true or false"
    if "date" in kinds:
        return _f(col, "date"), "every value is a date (YYYY-MM-DD)"
    if "datetime" in kinds:
        return _f(col, "datetime"), "every value is a date/time"
    if "reference" in kinds and len(refs) == 1:
        target = refs.pop()
        return _f(col, "reference", reference_to=[target]), f"every value is the Id of a {target} record"
    if "number" in kinds and fraction and whole + min(scale, 18) <= 18:
        return _f(col, "double", precision=18, scale=min(scale, 18)), "every value is a decimal number"
    why = "whole numbers: text, as they may be codes" if "number" in kinds else "text"
    if longest > 127:
        longest = max(_utf16(v) for (v,) in db.execute(f'SELECT "{col}" FROM "{obj}" WHERE length("{col}") > 127'))
    return (_f(col, "string", length=255) if longest <= 255 else _f(col, "textarea", length=131072)), why


@dataclass
class SeedReport:
    """What `seed` loaded: records per object, the fields it typed from the data (no metadata, no --types) and
    notes (references to records the folder does not hold)."""

    store: Path
    folder: Path
    metadata: Path | None
    records: dict[str, int]
    inferred: list[tuple[str, str, str, str]]      # (object, field, type, why)
    given: list[tuple[str, str, str]]              # (object, field, type) from --types
    notes: list[str]

    def lines(self) -> list[str]:
        total = sum(self.records.values())
        out = [f"seeded {self.store} from {self.folder}: {len(self.records)} object(s), {total} record(s) "
               f"({', '.join(f'{o} {n}' for o, n in self.records.items()) or 'no CSVs'}); fields typed by "
               f"{self.metadata or 'no metadata'}, Salesforce's standard fields and the demo's Subscription__c"]
        if self.given:
            out.append("  typed by --types: " + ", ".join(f"{o}.{f} {t}" for o, f, t in self.given))
        if self.inferred:
            out.append("  typed from the data (no metadata types them; pass --types Object.Field=TYPE or --metadata "
                       "DIR to type them as your org does):")
            out += [f"    {o}.{f} {t} ({why})" for o, f, t, why in self.inferred]
        out += [f"  note: {n}" for n in self.notes]
        return out


def _csv_lines(path: Path, ids: set[str]) -> dict[str, int]:
    """The line each of `ids` starts on in a CSV (for messages; rows spanning lines counted as csv does)."""
    found: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            at = header.index("Id") if "Id" in header else 0
            line = reader.line_num + 1
            for row in reader:
                if row and len(row) > at and row[at] in ids:
                    found[row[at]] = line
                line = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return found


def seed(store: Path, folder: Path, metadata: Path | None = None, types: str | Sequence[str] = ()) -> SeedReport:
    """Load a folder of Data Loader CSVs (quoted or not, CRLF, a BOM: the local org's loader) into the double's
    store, as an org's import takes them: every value must fit its field as described by `metadata` (default:
    the packaged salesforce/), Salesforce's standard fields, the demo's Subscription__c or `types`
    (`Object.Field=currency(16,2)`, which win over the others). A column none of them types is typed from its
    values, conservatively (`_infer`), and said so in the report.

    A value its field cannot hold ("1,500" in a currency field, "08/31/2026" in a date, 300 characters in a
    Text(255), a blank required Name) is refused the way an org's import refuses it: nothing is seeded (the store
    is left as it was) and the DataError names the file, line, record Id, field, value, the field's type and
    Salesforce's error. References to records of an object the folder holds that are not there are reported as
    notes (an export may leave out records a lookup points at; an org holds no such lookup)."""
    store, folder = Path(store), Path(folder)
    metadata = packaged_metadata() if metadata is None else Path(metadata)
    given = parse_types(types) if types else {}
    if not folder.is_dir():
        raise DataError(f"no such folder of Data Loader CSVs: {folder}", Location(str(folder)))
    tmp = store.with_name(store.name + ".seeding")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    reseeding = store.exists()
    if reseeding:  # a reload of the changed CSVs into what the double holds
        src, dst = sqlite3.connect(store), sqlite3.connect(tmp)
        src.backup(dst)
        src.close()
        dst.close()
    try:
        org = LocalOrg(folder, tmp, keep_loaded=False)
        try:
            objects = org.csv_objects()
            org.sync(objects)
        finally:
            org.close()
        _restamp_imported(tmp, store if reseeding else None, objects)
        report = _check_seeded(tmp, store, folder, metadata, given, objects)
    except BaseException:
        for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            p.unlink(missing_ok=True)
        raise
    for p in (Path(f"{store}-wal"), Path(f"{store}-shm")):
        p.unlink(missing_ok=True)
    tmp.replace(store)
    return report


def _restamp_imported(tmp: Path, before: Path | None, objects: list[str]) -> None:
    """SystemModstamp after a reseed (a first seed has none yet: the double dates the org's existing records when
    it first opens the store): a reseed is a change in the org, so the records it adds or changes are stamped now
    (the system clock) and the others keep theirs, as an org's would; a read of changes then finds them. A
    record the reseed dropped is gone for good, as one purged from the recycle bin. A CSV's own SystemModstamp
    column is never the stamp (a system field)."""
    if before is None:
        return
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        db.execute("ATTACH DATABASE ? AS before", (str(before),))
        tables = {r[0] for r in db.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")}
        now = stamp_text(_utc_now())
        for obj in objects:
            side = f'main."{_STAMPS}{obj}"'
            if f"{_STAMPS}{obj}" not in tables:
                continue
            cols = [r[1] for r in db.execute(f'PRAGMA main.table_info("{obj}")')]
            old = {r[1].lower() for r in db.execute(f'PRAGMA before.table_info("{obj}")')}
            same = " AND ".join(f'b."{c}" IS t."{c}"' for c in cols if c.lower() in old) or "0"
            db.execute(f'INSERT OR REPLACE INTO {side} SELECT t.Id, ? FROM main."{obj}" AS t WHERE NOT EXISTS '
                       f'(SELECT 1 FROM before."{obj}" AS b WHERE b.Id = t.Id AND {same})', (now,))
            db.execute(f'DELETE FROM {side} WHERE Id NOT IN (SELECT Id FROM main."{obj}")')
    finally:
        db.close()


def _check_seeded(tmp: Path, store: Path, folder: Path, metadata: Path, given: dict, objects: list[str]) -> SeedReport:
    schema, _, source = described(metadata)
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        prefixes = dict(PREFIXES_BY_KEY)
        for obj in objects:
            for (rid,) in db.execute(f'SELECT Id FROM "{obj}" LIMIT 1'):
                prefixes.setdefault(str(rid)[:3], obj)
        records, inferred, problems, notes, typed = {}, [], [], [], []
        refs: list[tuple[str, str, str]] = []
        for obj in objects:
            records[obj] = db.execute(f'SELECT count(*) FROM "{obj}"').fetchone()[0]
            spec = schema.get(obj) or _new_object()
            cols = [r[1] for r in db.execute(f'PRAGMA table_info("{obj}")')]
            for col in cols:
                f = given.get((obj, col)) or spec.get(col.lower())
                if f is None:
                    f, why = _infer(db, obj, col, prefixes)
                    inferred.append((obj, col, type_text(f), why))
                    typed.append((obj, col, f, "data"))
                else:
                    if (obj, col) in given:
                        typed.append((obj, col, f, "option"))
                    where = "--types" if (obj, col) in given else source.get((obj, col.lower()), "metadata")
                    problems += _unfit_values(db, obj, col, f, where)
                if f["type"] == "reference" and f["referenceTo"] and f["referenceTo"][0] in objects:
                    refs.append((obj, col, f["referenceTo"][0]))
            for f in spec.values():  # required fields the CSV has no column for
                if not f["nillable"] and f["createable"] and not f["defaultedOnCreate"] and \
                        f["name"].lower() not in {c.lower() for c in cols} and records[obj]:
                    problems.append((obj, None, f["name"], None, "REQUIRED_FIELD_MISSING",
                                     f"Required fields are missing: [{f['name']}]", type_text(f), "the CSV has no "
                                     f"{f['name']} column"))
        for obj, col, target in refs:
            n = db.execute(f'SELECT count(*) FROM "{obj}" WHERE "{col}" IS NOT NULL AND "{col}" != \'\' AND "{col}" '
                           f'NOT IN (SELECT Id FROM "{target}")').fetchone()[0]
            if n:
                notes.append(f"{n} {obj}.{col} value(s) point at no {target} record of {folder}/{target}.csv "
                             f"(kept: an export may leave records out; an org holds no lookup to a missing record)")
        if problems:
            raise DataError(_refusal(problems, folder), Location(str(folder)))
        db.execute(f"CREATE TABLE IF NOT EXISTS {_TYPED} (object TEXT NOT NULL, field TEXT NOT NULL, spec TEXT NOT "
                   f"NULL, source TEXT NOT NULL, PRIMARY KEY (object, field))")
        db.executemany(f"INSERT OR REPLACE INTO {_TYPED} VALUES (?, ?, ?, ?)",
                       [(o, c, json.dumps(f), src) for o, c, f, src in typed])
    finally:
        db.close()
    return SeedReport(store, folder, metadata, records, inferred,
                      [(o, c, type_text(f)) for o, c, f, src in typed if src == "option"], notes)


def _unfit_values(db, obj: str, col: str, f: dict, where: str) -> list[tuple]:
    """(object, Id, field, value, code, message, type, where the type comes from) of each value `f` cannot hold.

    SQLite picks the values that might not fit (`_suspects`: a million values a column are read in C); `_unfit`
    decides each of those."""
    out = []
    required = not f["nillable"] and f["createable"] and not f["defaultedOnCreate"]
    q = f'"{col}"'
    blank = f"({q} IS NULL OR {q} = '')"
    suspect = _suspects(f, q)
    sql = f'SELECT Id, {q} FROM "{obj}" WHERE ' + (f"{blank} OR " if required else "") + \
        f"(NOT {blank}{' AND (' + suspect + ')' if suspect else ''})"
    for rid, v in db.execute(sql):
        if v is None or v == "":
            out.append((obj, rid, col, v, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{f['name']}]",
                        type_text(f), where))
            continue
        bad = _unfit(f, v)
        if bad is not None:
            out.append((obj, rid, col, v, *bad, type_text(f), where))
    return out


def _suspects(f: dict, q: str) -> str | None:
    """An SQL condition true for every non-blank value of column `q` that field `f` might not hold (None: any
    value might not), false for most of those it holds: a superset of `_unfit`'s refusals. A value holding a NUL
    is always a suspect: SQLite's GLOB and length() stop at the first NUL."""
    cond = _suspects_by_type(f, q)
    return None if cond is None else f"instr(CAST({q} AS BLOB), x'00') > 0 OR {cond}"


def _suspects_by_type(f: dict, q: str) -> str | None:
    t = f["type"]
    if t in _NUMBERS:   # anything but a short unsigned decimal: signs, exponents, separators, many digits
        allowed = f["digits"] if t == "int" else f["precision"] - f["scale"]
        whole = f"(CASE WHEN instr({q}, '.') > 0 THEN instr({q}, '.') - 1 ELSE length({q}) END)"
        return (f"{q} GLOB '*[^0-9.]*' OR {q} GLOB '*.*.*' OR {q} NOT GLOB '[0-9]*' OR {q} GLOB '*.'"
                + (f" OR {whole} > {allowed}" if allowed else ""))
    if t == "boolean":
        return f"lower({q}) NOT IN ('true', 'false', '1', '0')"
    if t == "date":     # SQLite's date() is NULL for a malformed date and moves an impossible one (02-30)
        # (date() takes 02-30 as it is: days past the 28th are left to _unfit)
        return f"date({q}) IS NULL OR date({q}) != {q} OR substr({q}, 9, 2) > '28' OR {q} < '1700-01-01' " \
               f"OR {q} > '4000-12-31'"
    if t == "picklist" and f["restrictedPicklist"]:
        return None
    if t in ("reference", "id"):
        return f"length({q}) NOT IN (15, 18) OR {q} GLOB '*[^A-Za-z0-9]*'"
    if (t in _TEXTS or t in ("reference", "id")) and f["length"]:
        return f"length({q}) > {f['length'] // 2}"
    return None if t == "datetime" else "0"   # datetime: every value; other types have no rule


def _refusal(problems: list[tuple], folder: Path) -> str:
    """The seed's refusal: the first problems by file:line, Id, field and value, with the field's type and fix."""
    shown = problems[:10]
    lines: dict[str, dict[str, int]] = {}
    for obj in {p[0] for p in shown}:
        lines[obj] = _csv_lines(folder / f"{obj}.csv", {p[1] for p in shown if p[0] == obj and p[1]})
    items = []
    for obj, rid, col, v, code, msg, ftype, where in shown:
        at = f"{obj}.csv" + (f":{lines[obj][rid]}" if rid in lines.get(obj, {}) else "") + \
            (f" (Id {rid})" if rid else "")
        value = "blank" if v in (None, "") else repr(v[:80])
        items.append(f"{at}: {col} {value}: {code}: {msg} ({col} is {ftype}, typed by {where})")
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return (f"{len(problems)} value(s) no Salesforce org would hold; an org's import refuses them, and so does the "
            "double (nothing was seeded):\n  " + "\n  ".join(items) + more +
            "\nFix the CSV (a number is written 1500.00: no thousands separators, currency signs or suffixes; a date "
            "2026-08-31), or, if your org's field is of another type, say so: --types Object.Field=TYPE (e.g. "
            "string(255)) or --metadata DIR with its field-meta.xml.")


@dataclass
class Permissions:
    """What the integration user may do: the union of its permission sets (the profile, Minimum Access - API
    Only Integrations, grants nothing). Loaded from `*.permissionset-meta.xml` files; tests add or remove a
    grant (`grants()` names each one) to prove what a job needs."""

    user: set[str] = field(default_factory=set)                  # ApiEnabled, ViewSetup, ...
    objects: dict[str, set[str]] = field(default_factory=dict)   # Account -> {allowRead, allowEdit, ...}
    fields: dict[str, set[str]] = field(default_factory=dict)    # Account.ParentId -> {readable, editable}

    @classmethod
    def from_files(cls, *paths: Path) -> "Permissions":
        p = cls()
        for path in paths:
            root = ET.parse(path).getroot()
            for up in root.findall("m:userPermissions", _MD):
                if up.findtext("m:enabled", "", _MD) == "true":
                    p.user.add(up.findtext("m:name", "", _MD))
            for op in root.findall("m:objectPermissions", _MD):
                flags = {c.tag.split("}")[1] for c in op if c.text == "true"}
                p.objects.setdefault(op.findtext("m:object", "", _MD), set()).update(flags)
            for fp in root.findall("m:fieldPermissions", _MD):
                flags = {c.tag.split("}")[1] for c in fp if c.text == "true"}
                p.fields.setdefault(fp.findtext("m:field", "", _MD), set()).update(flags)
        return p

    def grants(self) -> list[str]:
        """Every grant, as `userPermissions:ApiEnabled`, `objectPermissions:Account:allowEdit`,
        `fieldPermissions:Account.ParentId:editable`."""
        out = [f"userPermissions:{u}" for u in sorted(self.user)]
        out += [f"objectPermissions:{o}:{f}" for o in sorted(self.objects) for f in sorted(self.objects[o])]
        out += [f"fieldPermissions:{n}:{f}" for n in sorted(self.fields) for f in sorted(self.fields[n])]
        return out

    def without(self, *grants: str) -> "Permissions":
        return self._edited(grants, add=False)

    def plus(self, *grants: str) -> "Permissions":
        return self._edited(grants, add=True)

    def _edited(self, grants, add: bool) -> "Permissions":
        p = copy.deepcopy(self)
        for g in grants:
            kind, _, rest = g.partition(":")
            if kind == "userPermissions":
                flags, flag = p.user, rest
            else:
                name, _, flag = rest.rpartition(":")
                flags = (p.objects if kind == "objectPermissions" else p.fields).setdefault(name, set())
            if add:
                flags.add(flag)
            else:
                flags.discard(flag)
        return p

    def can(self, obj: str, what: str) -> bool:
        """Object permission `what` (allowRead, allowCreate, allowEdit, allowDelete); every one needs Read.
        Modify All implies all four (Salesforce: object permissions)."""
        granted = self.objects.get(obj, set())
        if "modifyAllRecords" in granted:
            return True
        return "allowRead" in granted and what in granted


@dataclass
class Fault:
    """One injected fault: `kind` on calls whose path matches, `times` times (record faults: per record)."""

    kind: str                     # http_500 | limit_exceeded | expire_session | lock | record_error | job_failed
    #                               | lost_response (the call is done, its answer lost: a 500) | read_timeout (done,
    #                               then requests.ReadTimeout, in-process only) | job_stuck (Bulk job polls: InProgress)
    #                               | echo_token (a REST error whose message quotes the Authorization header sent)
    #                               | echo_login (a login error quoting the password / client id and secret sent)
    #                               | query_job_failed (a Bulk query job ends Failed, with `message` as errorMessage)
    #                               echo_*: `message` with {sent} (and {SENT}, upper-cased) in it, else message: sent
    path: str = ""                # regex searched in the request path ("" = every call)
    method: str | None = None
    times: int = 1
    records: set[str] | None = None
    code: str = "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    message: str = "rejected by a validation rule"
    after: int = 0                # job_failed: records processed before the job fails
    hits: Counter = field(default_factory=Counter)


class SalesforceDouble:
    """The org behind the fake *.salesforce.com: SQLite records, describe metadata, jobs, faults, counters.

    `permissions` None is a System Administrator (every object and field, View Setup); a `Permissions` is a
    least-privilege integration user. `sandbox` makes the org a sandbox (JWT audience test.salesforce.com);
    `soap_login` False is an org where SOAP API login() is disabled (new orgs: the default since Summer '25);
    `clock` is the org's clock (default: the system's, UTC), which stamps records and answers' Date headers."""

    def __init__(self, store: Path, metadata: Path | None = None, *, username: str = "integration@acme.example",
                 password: str = "s3cret-password", security_token: str = "T0KEN-abc123", consumer_key: str = "CONSUMER-KEY",
                 consumer_secret: str = "CONSUMER-SECRET", public_key: bytes | None = None, api_max: int = 100_000,
                 api_version: str = "59.0", permissions: Permissions | None = None, sandbox: bool = False,
                 soap_login: bool = True, client_credentials_user: bool = True, shuffle: bool = True,
                 clock: Callable[[], dt.datetime] | None = None):
        self.store = Path(store)
        self.db = sqlite3.connect(self.store, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        self.username, self.password, self.security_token = username, password, security_token
        self.consumer_key, self.consumer_secret, self.public_key = consumer_key, consumer_secret, public_key
        self.api_max, self.api_used, self.api_remaining_override = api_max, 0, None
        self.version = api_version
        self.sandbox, self.soap_login, self.client_credentials_user = sandbox, soap_login, client_credentials_user
        self.shuffle = shuffle
        self.epoch = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)   # CreatedDate of the first record it creates
        # The org's clock: what SystemModstamp is set from (each request reads it once, so what one request
        # changes shares a stamp) and what the Date header of every response says. Tests move it.
        self.clock: Callable[[], dt.datetime] = clock or _utc_now
        self.now = self.clock()
        self.tokens: set[str] = set()
        self.faults: list[Fault] = []
        self.calls: list[tuple[str, str]] = []     # (method, path) of every request
        self.timeouts: list[object] = []           # the timeout each request was sent with
        # (method, path, body) of the last requests; Bulk uploads (up to 100 MB each) are kept without their body
        self.bodies: deque[tuple[str, str, bytes]] = deque(maxlen=200)
        self.jobs: dict[str, dict] = {}
        self.queries: list[str] = []               # the SOQL of every REST and Bulk query
        # REST query locators: table, object, fields, size, when opened
        self.cursors: dict[str, tuple[str, str, list[str], int, dt.datetime]] = {}
        self.token_hosts: list[str] = []           # the host each OAuth token request was posted to
        self.schema: dict[str, dict[str, dict]] = {}
        self.sobjects: dict[str, dict] = {}        # object-level describe facts (label, key prefix)
        self._next_id: dict[str, int] = {}
        self._views: dict[str, dict[str, dict] | None] = {}
        self._permissions = permissions
        self._load_schema(metadata)

    @property
    def permissions(self) -> Permissions | None:
        return self._permissions

    @permissions.setter
    def permissions(self, value: Permissions | None) -> None:
        self._permissions = value
        self._views.clear()

    # ---- setup ----------------------------------------------------------------------------------------
    @classmethod
    def seed(cls, store: Path, folder: Path, metadata: Path | None = None,
             types: str | Sequence[str] = ()) -> "SeedReport":
        """Load a folder of Data Loader CSVs into a store (the org the double serves), refusing any value an org
        could not hold (see `seed`)."""
        return seed(store, folder, metadata, types)

    def _tables(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _columns(self, obj: str) -> list[str]:
        return [r[1] for r in self.db.execute(f'PRAGMA table_info("{obj}")')]

    def _load_schema(self, metadata: Path | None) -> None:
        self.schema, self.sobjects, _ = described(metadata)
        tables = self._tables()
        if _TYPED in tables:  # what the seed was told (--types) or read from the data for fields no metadata types
            for obj, name, spec, source in self.db.execute(f"SELECT object, field, spec, source FROM {_TYPED}"):
                fields = self.schema.setdefault(obj, _new_object())
                if source == "option" or name.lower() not in fields:
                    fields[name.lower()] = json.loads(spec)
                self.sobjects.setdefault(obj, {"label": obj})
        for obj in tables:
            if obj.startswith("_") or obj.startswith("sqlite"):
                continue
            spec = self.schema.setdefault(obj, _new_object())
            self.sobjects.setdefault(obj, {"label": obj})
            for col in self._columns(obj):
                spec.setdefault(col.lower(), _f(col, "string", length=255))  # a column of the CSV: a text field
        for obj, spec in self.schema.items():  # every described field is a column, so writes can land
            if obj not in tables:
                self.db.execute(f'CREATE TABLE "{obj}" (Id TEXT NOT NULL PRIMARY KEY)')
            have = {c.lower() for c in self._columns(obj)}
            for f in spec.values():
                if f["name"].lower() not in have and f["name"].lower() != "systemmodstamp":  # kept beside: _stamps
                    self.db.execute(f'ALTER TABLE "{obj}" ADD COLUMN "{f["name"]}" TEXT')
            if "isdeleted" in spec:
                self.db.execute(f'UPDATE "{obj}" SET IsDeleted = \'false\' WHERE IsDeleted IS NULL')
            for f in spec.values():  # Salesforce indexes External ID fields; an upsert must not scan the table
                if f["externalId"]:
                    self.db.execute(f'CREATE INDEX IF NOT EXISTS "_ext_{obj}_{f["name"]}" ON "{obj}" ("{f["name"]}")')
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {_CLOCK} (now TEXT NOT NULL)")
        if self.db.execute(f"SELECT 1 FROM {_CLOCK}").fetchone() is None:
            self.db.execute(f"INSERT INTO {_CLOCK} VALUES ('')")
        self.tick()
        for obj, spec in self.schema.items():
            if "systemmodstamp" in spec:
                self._stamp_changes(obj)

    def _stamp_changes(self, obj: str) -> None:
        """SystemModstamp as the server keeps it, in a table beside the object's (_stamps_<Object>: Id, stamp), so a
        comparison of two orgs' records is not one of the times they were written: seeded records (an org's
        existing records, which an export does not date) were last changed a day before the store is first
        served, and triggers stamp every insert and every update (a delete sets IsDeleted: an update) with the
        time of the request that makes it, whoever makes it: the API, a merge, or a test editing the store
        directly (`backdate` sets one, as a transaction that committed late). Salesforce indexes the field; the
        store does too (reads of changes filter on it)."""
        q, side, now = f'"{obj}"', f'"{_STAMPS}{obj}"', f"(SELECT now FROM {_CLOCK})"
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {side} (Id TEXT NOT NULL PRIMARY KEY, stamp TEXT NOT NULL) "
                        "WITHOUT ROWID")
        self.db.execute(f'CREATE INDEX IF NOT EXISTS "{_STAMPS}{obj}_stamp" ON {side} (stamp)')
        self.db.execute(f"INSERT OR IGNORE INTO {side} SELECT Id, ? FROM {q}", (stamp_text(self.now - dt.timedelta(days=1)),))
        self.db.execute(f'CREATE TRIGGER IF NOT EXISTS "{_STAMPS}{obj}_insert" AFTER INSERT ON {q} BEGIN '
                        f"INSERT OR REPLACE INTO {side} VALUES (NEW.Id, {now}); END")
        self.db.execute(f'CREATE TRIGGER IF NOT EXISTS "{_STAMPS}{obj}_update" AFTER UPDATE ON {q} BEGIN '
                        f"UPDATE {side} SET stamp = {now} WHERE Id = NEW.Id; END")
        self.db.execute(f'CREATE TRIGGER IF NOT EXISTS "{_STAMPS}{obj}_delete" AFTER DELETE ON {q} BEGIN '
                        f"DELETE FROM {side} WHERE Id = OLD.Id; END")

    def stamp(self, obj: str, rid: str) -> str | None:
        """A record's SystemModstamp as the org holds it."""
        row = self.db.execute(f'SELECT stamp FROM "{_STAMPS}{obj}" WHERE Id = ?', (rid,)).fetchone()
        return row[0] if row else None

    def backdate(self, obj: str, rid: str, when: dt.datetime) -> None:
        """Give a record an earlier SystemModstamp: a change whose transaction began then and committed only now
        (after a read that began in between), as long-running transactions do (SOAP API: getUpdated(),
        latestDateCovered)."""
        self.db.execute(f'UPDATE "{_STAMPS}{obj}" SET stamp = ? WHERE Id = ?', (stamp_text(when), rid))

    def tick(self) -> dt.datetime:
        """Read the org's clock: what is changed from now on (until the next request) is stamped with its time."""
        self.now = self.clock()
        self.db.execute(f"UPDATE {_CLOCK} SET now = ?", (stamp_text(self.now),))
        return self.now

    def define(self, obj: str, name: str, type_: str, **kw) -> None:
        """Describe a field as the org's admin would have created it (e.g. a currency ARR field)."""
        self.schema.setdefault(obj, {"id": _system("Id", "id")})[name.lower()] = _f(name, type_, **kw)
        self.sobjects.setdefault(obj, {"label": obj})
        self._views.clear()
        if name.lower() not in {c.lower() for c in self._columns(obj)}:
            self.db.execute(f'ALTER TABLE "{obj}" ADD COLUMN "{name}" TEXT')

    def visible(self, obj: str) -> dict[str, dict] | None:
        """The object's fields as the integration user sees them (None: it cannot read the object).

        Field-level security: a field without read access is not in describe and "No such column" in a query;
        one without edit access describes as not updateable/createable (Salesforce Help: Field-Level Security;
        REST API: sObject Describe)."""
        if obj not in self._views:
            spec, p = self.schema.get(obj), self._permissions
            if spec is None or p is None:
                self._views[obj] = spec
            elif not p.can(obj, "allowRead"):
                self._views[obj] = None
            else:
                view = {}
                for key, f in spec.items():
                    edit = True
                    if f["_fls"]:
                        flags = p.fields.get(f"{obj}.{f['_fls']}", set())
                        if "readable" not in flags:
                            continue
                        edit = "editable" in flags
                    g = dict(f)
                    g["updateable"] = f["updateable"] and edit and p.can(obj, "allowEdit")
                    g["createable"] = f["createable"] and edit and p.can(obj, "allowCreate")
                    view[key] = g
                self._views[obj] = view
        return self._views[obj]

    def _may(self, obj: str, what: str) -> bool:
        return self._permissions is None or self._permissions.can(obj, what)

    def _user_has(self, permission: str) -> bool:
        return self._permissions is None or permission in self._permissions.user

    def fault(self, kind: str, **kw) -> Fault:
        f = Fault(kind, **kw)
        self.faults.append(f)
        return f

    def issue_token(self) -> str:
        token = "00D" + secrets.token_hex(12) + "!" + secrets.token_urlsafe(24)
        self.tokens.add(token)
        return token

    def records(self, obj: str, fields: list[str], deleted: bool = False) -> dict[str, tuple]:
        """{Id: values} of live records (deleted=True: of the ones in the recycle bin), for tests comparing end states."""
        where = ""
        if "isdeleted" in self.schema.get(obj, {}):
            where = " WHERE IsDeleted = 'true'" if deleted else " WHERE IsDeleted IS NOT 'true'"
        cols = ", ".join(f'"{f}"' for f in fields)
        return {r[0]: r[1:] for r in self.db.execute(f'SELECT Id, {cols} FROM "{obj}"{where}')}

    def merge(self, master: str, *losers: str, obj: str = "Account") -> None:
        """Merge records into `master` as Salesforce's merge() does: "up to three records of the same type", the
        merged-away ones deleted (to the recycle bin, IsDeleted) with MasterRecordId naming the master, and "any
        related records" reparented to the master (SOAP API: merge()); each change stamped like any other."""
        if not 1 <= len(losers) <= 2 or master in losers:
            raise ValueError("merge: a master and one or two other records")
        marks = ", ".join("?" * len(losers))
        self.db.execute("BEGIN")
        try:
            for other, spec in self.schema.items():
                for f in spec.values():
                    if f["type"] == "reference" and obj in f["referenceTo"] and f["name"] != "MasterRecordId":
                        live = " AND IsDeleted IS NOT 'true'" if "isdeleted" in spec else ""
                        self.db.execute(f'UPDATE "{other}" SET "{f["name"]}" = ? WHERE "{f["name"]}" IN ({marks}){live}',
                                        (master, *losers))
            self.db.execute(f'UPDATE "{obj}" SET IsDeleted = \'true\', MasterRecordId = ? WHERE Id IN ({marks})',
                            (master, *losers))
            self.db.execute(f'UPDATE "{obj}" SET MasterRecordId = NULL WHERE Id = ?', (master,))  # the master changes too
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def count(self, kind: str) -> int:
        return sum(1 for _, path in self.calls if kind in path)

    def print_records(self, what: str, out, deleted: bool = False, whole_object: bool = False) -> int:
        """`query` (SOQL: `what`) or `dump` (every field of object `what`): the records as CSV, values as stored,
        in the order stored unless ORDER BY; live records only unless `deleted`. A COUNT() query prints the count."""
        if whole_object:
            if what not in self.schema or what.startswith("_"):
                raise DataError(f"no object {what} in the double's org; its objects: "
                                f"{', '.join(sorted(o for o in self.schema if not o.startswith('_')))}")
            what = f"SELECT {', '.join(f['name'] for f in self.schema[what].values())} FROM {what}"
        try:
            _, fields, sql, args = self._select(what, all_rows=deleted)
        except _SoqlError as exc:
            raise DataError(f"{exc.code}: {exc.message}") from None
        if fields is None:
            print(self.db.execute(sql, args).fetchone()[0], file=out)
            return 0
        w = csv.writer(out, lineterminator="\n")
        w.writerow(fields)
        w.writerows(("" if v is None else v for v in row) for row in self.db.execute(sql, args))
        return 0

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
        """Answer requests that `connect` forwards from another process, one client after another, until stopped.

        The double then runs beside the engine, so the engine's process holds only its own memory. A client
        that dies at any point (mid-message, before reading its answer, or sending garbage) ends only its own
        connection; what it asked for is done or not, as on Salesforce, and the next client is served. SIGTERM
        and SIGINT stop it after the request in hand is answered, and the socket file is removed; a socket file
        left by a double that was killed (SIGKILL) is removed at start when nothing listens on it, and one that
        another double serves is refused (_SocketBusy)."""
        import signal
        import threading
        from multiprocessing.connection import Listener

        _claim_socket(Path(address))
        self._busy = self._stop_asked = False

        def stop(signum, frame):
            if self._busy:
                self._stop_asked = True   # answer the request in hand first
            else:
                raise _Stopped()

        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with Listener(address, family="AF_UNIX") as listener:   # closing it removes the socket file
                while True:
                    try:
                        conn = listener.accept()
                    except (OSError, EOFError):
                        continue
                    try:
                        self._serve_client(conn)
                    except Exception:  # noqa: BLE001 - whatever a dying client leaves behind, the double stays up
                        pass
                    finally:
                        try:
                            conn.close()
                        except OSError:
                            pass
        except _Stopped:
            pass
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            Path(address).unlink(missing_ok=True)

    def _serve_client(self, conn) -> None:
        conn.send((self.username, self.password, self.security_token))
        while True:
            try:
                method, url, headers, body, timeout = conn.recv()
            except (EOFError, OSError):  # the client closed, was killed, or died mid-message
                return
            self.timeouts.append(timeout)
            self._busy = True
            try:
                answer = self.answer(method, url, headers, body)
            finally:
                self._busy = False
            conn.send(answer)  # a dead client: BrokenPipe/ConnectionReset
            if self._stop_asked:
                raise _Stopped()

    def answer(self, method: str, url: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        """handle(), with an internal error answered as Salesforce does (500 UNKNOWN_EXCEPTION) instead of raised,
        and any transaction it left open rolled back."""
        try:
            return self.handle(method, url, headers, body)
        except Exception as exc:  # noqa: BLE001
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            return _json(500, [{"errorCode": "UNKNOWN_EXCEPTION", "message": f"double: {type(exc).__name__}: {exc}"[:200]}])

    def handle(self, method: str, url: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        """One request, answered as the org would; every answer carries the org's time in its Date header."""
        from email.utils import format_datetime

        now = self.tick()
        status, hdrs, payload = self._handle(method, url, headers, body)
        return status, {**hdrs, "Date": format_datetime(now.astimezone(dt.timezone.utc), usegmt=True)}, payload

    def _handle(self, method: str, url: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
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
            return self._soap_login(path, body)
        if path == "/services/oauth2/token":
            return self._oauth(parts.hostname or "", headers, body)
        if not path.startswith("/services/data/"):
            return _json(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
        auth = headers.get("Authorization", "")
        echo = self._fault_on(("echo_token",), method, path)
        if echo is not None:   # a server (or a proxy before it) that quotes the header it rejects
            echo.times -= 1
            return _json(400, [{"errorCode": "INVALID_AUTH_HEADER", "message": _echoed(echo, f"Authorization: {auth}")}])
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return _json(401, [{"errorCode": "INVALID_SESSION_ID", "message": "Session expired or invalid"}])
        self.api_used += 1
        if not self._user_has("ApiEnabled"):
            # a user without API Enabled: every REST call (salesforcedictionary: API_DISABLED_FOR_ORG; Sequin docs)
            status, hdrs, payload = _json(403, [{"errorCode": "API_DISABLED_FOR_ORG",
                                                 "message": "The REST API is not enabled for this Organization."}])
        else:
            status, hdrs, payload = self._route(method, path.split("/services/data/v", 1)[1].split("/", 1)[1], query, body)
            lost = self._fault_on(("lost_response", "read_timeout"), method, path)
            if lost is not None:  # done, but the answer never reaches the client
                lost.times -= 1
                if lost.kind == "read_timeout":
                    import requests
                    raise requests.ReadTimeout("double: read timed out after the call was done")
                return 500, {}, b'[{"errorCode":"UNKNOWN_EXCEPTION","message":"An unexpected error occurred"}]'
        hdrs["Sforce-Limit-Info"] = f"api-usage={self.api_used}/{self.api_max}"
        return status, hdrs, payload

    def _fault_on(self, kinds: tuple[str, ...], method: str, path: str) -> Fault | None:
        return next((f for f in self.faults if f.kind in kinds and f.times > 0 and re.search(f.path, path)
                     and (f.method is None or f.method == method)), None)

    # ---- auth -----------------------------------------------------------------------------------------
    def _soap_login(self, path: str, body: bytes) -> tuple[int, dict, bytes]:
        text = body.decode("utf-8")
        version = path.rsplit("/", 1)[-1]
        user = re.search(r"<(?:\w+:)?username>(.*?)</(?:\w+:)?username>", text, re.S)
        pw = re.search(r"<(?:\w+:)?password>(.*?)</(?:\w+:)?password>", text, re.S)
        if _version(version) >= (65, 0):
            # "SOAP API login() is not available in API versions 65.0 and later" (Salesforce Help 005132110);
            # the fault as a client reported it (forcedotcom/wsc#363)
            return _soap_fault("INVALID_OPERATION", f"The SOAP Login operation is not available in the API version "
                                                    f"specified ({version}). Refer to the documentation for supported "
                                                    f"versions.")
        if not self.soap_login:
            # "SOAP API login() is disabled by default in newly created orgs" (Help 005132110; OpenFn/adaptors#1715)
            return _soap_fault("INVALID_OPERATION", "SOAP API login() is disabled by default in this org. Contact the "
                                                    "org administrator to enable SOAP API login().")
        echo = self._fault_on(("echo_login",), "POST", path)
        if echo is not None:   # a login error that quotes what it was sent
            echo.times -= 1
            sent = html.unescape(pw.group(1)) if pw else ""
            return _soap_fault("INVALID_LOGIN", html.escape(_echoed(echo, sent)), "LoginFault")
        if not user or not pw or html.unescape(user.group(1)) != self.username or \
                html.unescape(pw.group(1)) != self.password + self.security_token:
            return _soap_fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out.",
                               "LoginFault")
        if not self._user_has("ApiEnabled"):
            return _soap_fault("API_CURRENTLY_DISABLED", "API is disabled for this User", "LoginFault")
        token = self.issue_token()
        ok = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/'
              'envelope/" xmlns="urn:partner.soap.sforce.com"><soapenv:Body><loginResponse><result>'
              f'<serverUrl>https://{HOST}/services/Soap/u/{version}/00D000000000001</serverUrl>'
              f'<sessionId>{token}</sessionId><userId>{USER_ID}</userId></result></loginResponse>'
              '</soapenv:Body></soapenv:Envelope>')
        return 200, {"Content-Type": "text/xml"}, ok.encode()

    def _oauth(self, host: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        """The token endpoint (Salesforce Help: OAuth 2.0 JWT Bearer Flow for Server-to-Server Integration;
        OAuth 2.0 Client Credentials Flow for Server-to-Server Integration; OAuth 2.0 Authorization Errors)."""
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        grant = form.get("grant_type")
        self.token_hosts.append(host)
        echo = self._fault_on(("echo_login",), "POST", "/services/oauth2/token")
        if echo is not None:   # an OAuth error that quotes the client credentials it was sent
            echo.times -= 1
            sent = f"client_id={form.get('client_id', '')} client_secret={form.get('client_secret', '')} " \
                   f"authorization={headers.get('Authorization', '')}"
            return _json(400, {"error": "invalid_client", "error_description": _echoed(echo, sent)})
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._jwt(form)
        if grant == "client_credentials":
            return self._client_credentials(host, headers, form)
        return _json(400, {"error": "unsupported_grant_type", "error_description": "grant type not supported"})

    def _jwt(self, form: dict) -> tuple[int, dict, bytes]:
        import jwt

        try:
            if self.public_key is not None:
                claims = jwt.decode(form.get("assertion", ""), self.public_key, algorithms=["RS256"],
                                    options={"verify_aud": False})
            else:
                claims = jwt.decode(form.get("assertion", ""), options={"verify_signature": False})
        except jwt.PyJWTError:
            return _json(400, {"error": "invalid_grant", "error_description": "invalid assertion"})
        if claims.get("iss") != self.consumer_key:
            return _json(400, {"error": "invalid_client_id", "error_description": "client identifier invalid"})
        # aud: "the authorization server's URL": https://login.salesforce.com, or https://test.salesforce.com for a
        # sandbox (never the My Domain; that is where the assertion is posted). Otherwise invalid_grant.
        audience = "https://test.salesforce.com" if self.sandbox else "https://login.salesforce.com"
        if claims.get("aud") != audience:
            return _json(400, {"error": "invalid_grant", "error_description": "audience is invalid"})
        if claims.get("sub") != self.username:
            return _json(400, {"error": "invalid_grant", "error_description": "user hasn't approved this consumer"})
        try:
            if float(claims.get("exp", 0)) < dt.datetime.now(dt.timezone.utc).timestamp():
                return _json(400, {"error": "invalid_grant", "error_description": "expired authorization code"})
        except (TypeError, ValueError):
            return _json(400, {"error": "invalid_grant", "error_description": "invalid assertion"})
        return self._token()

    def _client_credentials(self, host: str, headers: dict, form: dict) -> tuple[int, dict, bytes]:
        if host.split(".")[0] in ("login", "test"):  # the flow is served on the org's My Domain only
            return _json(400, {"error": "invalid_grant", "error_description": "request not supported on this domain"})
        key, secret = form.get("client_id"), form.get("client_secret")
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                key, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                key = secret = None
        if key != self.consumer_key or secret != self.consumer_secret:
            return _json(400, {"error": "invalid_client", "error_description": "invalid client credentials"})
        if not self.client_credentials_user:  # no "Run As" user set on the connected app
            return _json(400, {"error": "invalid_grant", "error_description": "no client credentials user enabled"})
        return self._token()

    def _token(self) -> tuple[int, dict, bytes]:
        return _json(200, {"access_token": self.issue_token(), "instance_url": f"https://{HOST}", "token_type": "Bearer",
                           "scope": "api", "id": f"https://login.salesforce.com/id/00D000000000001EAA/{USER_ID}",
                           "issued_at": str(int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000))})

    # ---- REST -------------------------------------------------------------------------------------------
    def _route(self, method: str, rest: str, query: dict, body: bytes) -> tuple[int, dict, bytes]:
        rest = rest.rstrip("/")
        if rest in ("limits", "limits/recordCount") and not self._user_has("ViewSetup"):
            # "This resource is available in REST API version 29.0 and later for API users with the View Setup and
            # Configuration permission" (REST API Developer Guide: Limits; Record Count likewise). The guide does
            # not give the refusal; an org answers 403 API_DISABLED_FOR_ORG "The REST API is not enabled for this
            # Organization." (forceworkbench#681: /limits from Workbench's REST Explorer), though the REST API
            # itself works for the user: every other call here still answers.
            return _json(403, [{"errorCode": "API_DISABLED_FOR_ORG",
                                "message": "The REST API is not enabled for this Organization."}])
        if rest == "limits" and method == "GET":
            remaining = self.api_max - self.api_used if self.api_remaining_override is None else self.api_remaining_override
            return _json(200, {"DailyApiRequests": {"Max": self.api_max, "Remaining": remaining},
                               "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000}})
        if rest == "limits/recordCount":
            names = query.get("sObjects", [""])[0].split(",")
            return _json(200, {"sObjects": [{"name": n, "count": self._count(n)} for n in names if n in self.schema]})
        m = re.fullmatch(r"sobjects/(\w+)/describe", rest)
        if m:
            return self._describe(m.group(1))
        if rest in ("query", "queryAll"):
            return self._rest_query(query.get("q", [""])[0], all_rows=rest == "queryAll")
        m = re.fullmatch(r"(query|queryAll)/(\w+)-(\d+)", rest)
        if m:
            return self._rest_page(m.group(2), int(m.group(3)))
        if rest.startswith("composite/sobjects"):
            return self._collections(method, rest, query, body)
        m = re.fullmatch(r"sobjects/(\w+)", rest)
        if m and method == "POST":  # create one record (REST API: sObject Basic Information, POST)
            rec = json.loads(body or b"{}", parse_float=Decimal)
            rid, created, err = self._apply(m.group(1), "insert", [rec], None)[0]
            if err:
                code, _, msg = err.partition(":")
                msg, _, fields = msg.partition("\x1f")
                return _json(400, [{"errorCode": code, "message": msg, "fields": fields.split(",") if fields else []}])
            return _json(201, {"id": rid, "success": True, "errors": []})
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
                msg, _, fields = msg.partition("\x1f")
                return _json(400, [{"errorCode": code, "message": msg, "fields": fields.split(",") if fields else []}])
            return (201, {"Content-Type": "application/json"}, json.dumps({"id": rid, "success": True}).encode()) \
                if created else (204, {}, b"")
        if rest.startswith("jobs/query"):
            return self._bulk_query(method, rest, query, body)
        if rest.startswith("jobs/ingest"):
            return self._bulk_ingest(method, rest, body)
        return _json(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])

    def _describe(self, obj: str) -> tuple[int, dict, bytes]:
        spec = self.visible(obj)
        if spec is None:  # no such object, or no Read on it: the same answer
            return _json(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
        fields = [{k: v for k, v in f.items() if not k.startswith("_")} for f in spec.values()]
        meta = self.sobjects.get(obj, {})
        return _json(200, {"name": obj, "label": meta.get("label", obj), "custom": obj.endswith("__c"),
                           "keyPrefix": PREFIXES.get(obj), "queryable": True, "retrieveable": True,
                           "createable": self._may(obj, "allowCreate"), "updateable": self._may(obj, "allowEdit"),
                           "deletable": self._may(obj, "allowDelete"), "undeletable": self._may(obj, "allowDelete"),
                           "fields": fields})

    def _count(self, obj: str) -> int:
        deleted = " WHERE IsDeleted IS NOT 'true'" if "isdeleted" in self.schema[obj] else ""
        return self.db.execute(f'SELECT count(*) FROM "{obj}"{deleted}').fetchone()[0]

    def _select(self, soql: str, all_rows: bool):
        """(object, fields, SQL, args) for the SOQL subset the engine emits:
        SELECT f, ... | COUNT() FROM Obj [WHERE a <op> value [AND ...]] [ORDER BY f [ASC|DESC], ...] [LIMIT n],
        op one of = != <> < <= > >=, value as _condition reads it (e.g. SystemModstamp > 2026-12-01T02:00:00Z).

        Without ORDER BY the rows come in no particular order, as SOQL documents ("no guaranteed order"): shuffled."""
        self.queries.append(soql)
        m = re.fullmatch(r"\s*SELECT\s+(.+?)\s+FROM\s+(\w+)(?:\s+WHERE\s+(.+?))?(?:\s+ORDER\s+BY\s+(.+?))?"
                         r"(?:\s+LIMIT\s+(\d+))?\s*", soql, re.I | re.S)
        if not m:
            raise _SoqlError("MALFORMED_QUERY", "unexpected token in query")
        obj = m.group(2)
        spec = self.visible(obj)
        if spec is None:
            raise _SoqlError("INVALID_TYPE", f"sObject type '{obj}' is not supported. If you are attempting to use a "
                                             f"custom object, be sure to append the '__c' after the entity name. Please "
                                             f"reference your WSDL or the describe call for the appropriate names.")

        def column(name: str) -> str:
            if name.lower() not in spec:  # absent, or hidden by field-level security: the same message
                raise _SoqlError("INVALID_FIELD", f"No such column '{name}' on entity '{obj}'. If you are attempting to "
                                                  f"use a custom field, be sure to append the '__c' after the custom "
                                                  f"field name. Please reference your WSDL or the describe call for the "
                                                  f"appropriate names.")
            return spec[name.lower()]["name"]

        counting = re.fullmatch(r"count\(\s*\)", m.group(1).strip(), re.I) is not None
        fields = [] if counting else [column(f.strip()) for f in m.group(1).split(",")]
        where, args = [], []
        if not all_rows and "isdeleted" in spec:
            where.append("IsDeleted IS NOT 'true'")
        stamps = f'"{_STAMPS}{obj}"'

        def ref(name: str) -> str:  # a field's SQL (SystemModstamp is kept beside the record: _stamp_changes)
            if name.lower() == "systemmodstamp":
                return f'(SELECT s.stamp FROM {stamps} AS s WHERE s.Id = "{obj}".Id)'
            return f'"{name}"'

        for cond in re.split(r"\s+AND\s+", m.group(3) or "", flags=re.I) if m.group(3) else []:
            name, sql_cond, arg = _condition(cond.strip(), spec, column)
            if name.lower() == "systemmodstamp":  # through the stamp's index, as Salesforce's is indexed
                where.append(f'"{obj}".Id IN (SELECT Id FROM {stamps} WHERE {sql_cond.replace("{f}", "stamp")})')
            else:
                where.append(sql_cond.replace("{f}", ref(name)))
            args += arg
        select = "count(*)" if counting else ", ".join(
            f'{ref(f)} AS "{f}"' if f.lower() == "systemmodstamp" else f'"{f}"' for f in fields)
        sql = f'SELECT {select} FROM "{obj}"'
        if where:
            sql += " WHERE " + " AND ".join(where)
        if m.group(4):
            keys = []
            for item in m.group(4).split(","):
                o = re.fullmatch(r"(\w+)(?:\s+(ASC|DESC))?(?:\s+NULLS\s+(FIRST|LAST))?", item.strip(), re.I)
                if not o:
                    raise _SoqlError("MALFORMED_QUERY", f"unsupported ORDER BY {item.strip()!r}")
                name = column(o.group(1))
                expr = f'CAST({ref(name)} AS REAL)' if spec[name.lower()]["type"] in _NUMBERS else ref(name)
                nulls = (o.group(3) or ("LAST" if (o.group(2) or "").upper() == "DESC" else "FIRST")).upper()
                keys.append(f"{expr} {(o.group(2) or 'ASC').upper()} NULLS {nulls}")
            sql += " ORDER BY " + ", ".join(keys)
        elif self.shuffle and not counting:
            sql += " ORDER BY random()"
        if m.group(5):
            sql += f" LIMIT {int(m.group(5))}"
        return obj, (None if counting else fields), sql, args

    def _rest_query(self, soql: str, all_rows: bool) -> tuple[int, dict, bytes]:
        try:
            obj, fields, sql, args = self._select(soql, all_rows)
        except _SoqlError as exc:
            return _json(400, [{"errorCode": exc.code, "message": exc.message}])
        if fields is None:  # SELECT COUNT(): the count in totalSize, no records (SOQL: COUNT())
            return _json(200, {"totalSize": self.db.execute(sql, args).fetchone()[0], "done": True, "records": []})
        # the result is kept as a table paged by rowid (as Bulk results are), never as rows in memory
        cursor = "01g" + secrets.token_hex(6)
        table = f"_restq_{cursor}"
        self.db.execute(f'CREATE TABLE "{table}" AS {sql}', args)
        for old, (old_table, *_, opened) in list(self.cursors.items()):
            if self.now - opened > _CURSOR_LIFE:
                del self.cursors[old]
                self.db.execute(f'DROP TABLE IF EXISTS "{old_table}"')
        size = self.db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        self.cursors[cursor] = (table, obj, fields, size, self.now)
        return self._rest_page(cursor, 0)

    def _rest_page(self, cursor: str, offset: int) -> tuple[int, dict, bytes]:
        if cursor not in self.cursors:
            return _json(400, [{"errorCode": "INVALID_QUERY_LOCATOR", "message": "invalid query locator"}])
        table, obj, fields, total, _ = self.cursors[cursor]
        spec = self.schema[obj]
        types = [spec[f.lower()]["type"] for f in fields]
        page = [{"attributes": {"type": obj, "url": f"/services/data/v{self.version}/sobjects/{obj}/{r[0]}"},
                 **{f: _typed(t, v) for f, t, v in zip(fields, types, r)}}
                for r in self.db.execute(f'SELECT * FROM "{table}" WHERE rowid > ? ORDER BY rowid LIMIT 2000',
                                         (offset,))]
        done = offset + 2000 >= total
        out = {"totalSize": total, "done": done, "records": page}
        if not done:
            # queryAll's next page too is under query/ ("Although the nextRecordsUrl has query in the URL, it still
            # provides the remaining results from the initial QueryAll request": REST API, QueryAll)
            out["nextRecordsUrl"] = f"/services/data/v{self.version}/query/{cursor}-{offset + 2000}"
        return _json(200, out)

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
                msg, _, fields = msg.partition("\x1f")
                out.append({"id": rid, "success": False,
                            "errors": [{"statusCode": code, "message": msg.strip(), "fields": fields.split(",") if fields else []}]})
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
        """Apply records one by one (partial success, as allOrNone=false and Bulk do). An error is
        "CODE:message", with "\\x1f" and the fields it concerns when it concerns fields."""
        spec = self.visible(obj)
        out = []
        for rec in records:
            key = rec.get("Id") or (rec.get(external_id) if external_id else None)
            err = self._record_fault(str(key))
            if err:
                out.append((rec.get("Id"), False, err))
                continue
            try:
                if spec is None:
                    raise _RecordError("INVALID_TYPE", f"sObject type '{obj}' is not supported.")
                out.append(self._apply_one(obj, spec, op, rec, external_id))
            except _RecordError as exc:
                out.append((rec.get("Id"), False, f"{exc.code}:{exc.message}" + (f"\x1f{exc.field}" if exc.field else "")))
        return out

    def _record_fault(self, key: str) -> str | None:
        for f in self.faults:
            if f.kind in ("lock", "record_error") and (f.records is None or key in f.records) and f.hits[key] < f.times:
                f.hits[key] += 1
                if f.kind == "lock":
                    return "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record or 1 records"
                return f"{f.code}:{f.message}"
        return None

    def _live(self, obj: str, where: str, arg) -> tuple[str, bool] | None:
        """(Id, deleted) of the record matching `where` (live first), None if there is none."""
        deleted = "IsDeleted = 'true'" if "isdeleted" in self.schema[obj] else "0"
        row = self.db.execute(f'SELECT Id, {deleted} FROM "{obj}" WHERE {where} ORDER BY 2 LIMIT 1', (arg,)).fetchone()
        return None if row is None else (row[0], bool(row[1]))

    def _apply_one(self, obj, spec, op, rec, external_id):
        rid, creating = rec.get("Id"), op == "insert"
        if op == "upsert":
            f = spec.get((external_id or "").lower())
            if f is None or not f["idLookup"]:
                raise _RecordError("INVALID_FIELD", f"{external_id} is not an External ID or indexed field for {obj}")
            key = rec.get(external_id)
            if key is None or str(key) == "":
                raise _RecordError("MISSING_ARGUMENT", f"{external_id} not specified")
            # an upsert matches live records only (the recycle bin is not searched)
            found = self.db.execute(f'SELECT Id FROM "{obj}" WHERE "{f["name"]}" = ? AND IsDeleted IS NOT \'true\'',
                                    (str(key),)).fetchone()
            rid, creating = (found[0], False) if found else (None, True)
        if op in ("update", "delete") or (op == "upsert" and not creating):
            if not rid or not _ID.fullmatch(str(rid)):
                raise _RecordError("MALFORMED_ID", f"malformed id {rid}")
            hit = self._live(obj, "Id = ?", rid)
            if hit is None or hit[1]:
                raise _RecordError("ENTITY_IS_DELETED", "entity is deleted")
        need = "allowCreate" if creating else "allowDelete" if op == "delete" else "allowEdit"
        if not self._may(obj, need):
            # object permissions (Salesforce Help: Object Permissions; "Insufficient Privileges", 000385525)
            raise _RecordError("INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access rights on object id")
        if op == "delete":
            self.db.execute(f'UPDATE "{obj}" SET IsDeleted = \'true\' WHERE Id = ?', (rid,))  # to the recycle bin
            return rid, False, None
        values = {}
        for k, v in rec.items():
            if k == "Id" or (op == "upsert" and k == external_id):
                continue
            f = spec.get(k.lower())
            if f is None:  # absent, or no read access (field-level security)
                raise _RecordError("INVALID_FIELD", f"No such column '{k}' on sobject of type {obj}")
            if not (f["createable"] if creating else f["updateable"]):
                raise _RecordError("INVALID_FIELD_FOR_INSERT_UPDATE", f"Unable to create/update fields: {f['name']}. "
                                   f"Please check the security settings of this field and verify that it is read/write "
                                   f"for your profile or permission set.", f["name"])
            values[f["name"]] = self._check_value(obj, f, v)
        if op == "upsert":
            values[spec[external_id.lower()]["name"]] = str(rec.get(external_id))
        if creating:
            missing = [f["name"] for f in spec.values() if not f["nillable"] and f["createable"]
                       and not f["defaultedOnCreate"] and values.get(f["name"]) in (None, "")]
            if missing:
                raise _RecordError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]",
                                   ",".join(missing))
        elif any(v is None and not spec[k.lower()]["nillable"] for k, v in values.items()):
            bad = [k for k, v in values.items() if v is None and not spec[k.lower()]["nillable"]]
            raise _RecordError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(bad)}]", ",".join(bad))
        if not creating:
            if values:
                self.db.execute(f'UPDATE "{obj}" SET {", ".join(chr(34) + k + chr(34) + " = ?" for k in values)} '
                                "WHERE Id = ?", [*values.values(), rid])
            return rid, False, None
        prefix = PREFIXES.get(obj, "a0X")
        if obj not in self._next_id:  # counted once per object, not per insert (count(*) scans the table)
            self._next_id[obj] = self.db.execute(f'SELECT count(*) FROM "{obj}"').fetchone()[0] + 1
        rid = None
        while rid is None or self.db.execute(f'SELECT 1 FROM "{obj}" WHERE Id = ?', (rid,)).fetchone():
            rid = sf_id(prefix, 10_000_000 + self._next_id[obj])
            self._next_id[obj] += 1
        full = self.schema[obj]
        if "isdeleted" in full:
            values["IsDeleted"] = "false"
        if "ownerid" in full and "OwnerId" not in values:
            values["OwnerId"] = USER_ID
        if "createddate" in full:  # a logical clock: one second per record created, so reruns compare equal
            created = self.epoch + dt.timedelta(seconds=self._next_id[obj])
            values["CreatedDate"] = created.strftime("%Y-%m-%dT%H:%M:%S.000+0000")
        cols = ["Id", *values]
        self.db.execute(f'INSERT INTO "{obj}" ({", ".join(chr(34) + c + chr(34) for c in cols)}) VALUES '
                        f'({", ".join("?" * len(cols))})', [rid, *values.values()])
        return rid, True, None

    def _check_value(self, obj, f, v):
        """A value as the org stores it, or the error the org gives for it (the field rules: `_unfit`), and a
        reference must point at a live record."""
        if v is None:
            return None
        text = v if isinstance(v, str) else ("true" if v is True else "false" if v is False else str(v))
        bad = _unfit(f, text)
        if bad is not None:
            raise _RecordError(*bad, f["name"])
        if f["type"] == "boolean":
            return "true" if text.lower() in ("true", "1") else "false"
        if f["type"] == "reference" and text:
            target = next((r for r in f["referenceTo"] if r in self.schema), None)
            if target is not None and self._live(target, "Id = ?", text) in (None, (text, True)):
                raise _RecordError("INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {f['name']}", f["name"])
        return text

    # ---- Bulk API 2.0 -----------------------------------------------------------------------------------
    def _bulk_query(self, method, rest, query, body) -> tuple[int, dict, bytes]:
        if rest == "jobs/query" and method == "POST":
            spec = json.loads(body)
            try:
                obj, fields, sql, args = self._select(spec.get("query", ""), spec.get("operation") == "queryAll")
                if fields is None:  # Bulk API 2.0 query does not support COUNT()
                    raise _SoqlError("INVALIDJOB", "COUNT() is not supported in Bulk API 2.0 queries")
            except _SoqlError as exc:
                return _json(400, [{"errorCode": exc.code, "message": exc.message}])
            job_id = "750" + secrets.token_hex(6)
            table = f"_bulkq_{job_id}"
            self.db.execute(f'CREATE TABLE "{table}" AS {sql}', args)  # the order it has now is the order paged
            types = [self.schema[obj][f.lower()]["type"] for f in fields]
            self.jobs[job_id] = {"id": job_id, "operation": spec.get("operation"), "object": obj, "state": "UploadComplete",
                                 "table": table, "fields": fields, "types": types, "polls": 0, **_created()}
            return _json(200, self._query_info(job_id))
        if rest == "jobs/query" and method == "GET":  # Get Information About All Query Jobs (one page)
            return _json(200, {"done": True, "records": [self._query_info(j) for j, v in self.jobs.items()
                                                         if "table" in v]})
        m = re.fullmatch(r"jobs/query/(\w+)(/results)?", rest)
        job = self.jobs.get(m.group(1)) if m else None
        if job is None:
            return _json(404, [{"errorCode": "NOT_FOUND", "message": "job not found"}])
        if not m.group(2) and method == "PATCH":  # Abort a Job
            if json.loads(body).get("state") == "Aborted" and job["state"] in ("UploadComplete", "InProgress"):
                job["state"] = "Aborted"
            return _json(200, self._query_info(job["id"]))
        if not m.group(2):
            job["polls"] += 1
            if job["state"] != "Aborted":
                job["state"] = "InProgress" if job["polls"] == 1 else "JobComplete"   # one poll sees it still running
            if job["state"] != "Aborted" and self._fault_on(("job_stuck",), method, "/" + rest) is not None:
                job["state"] = "InProgress"
            failing = self._fault_on(("query_job_failed",), method, "/" + rest)
            if job["state"] == "JobComplete" and failing is not None and "errorMessage" not in job:
                failing.times -= 1   # the job fails on Salesforce's side (Get Information About a Query Job)
                job.update(state="Failed", errorMessage=failing.message)
            total = self.db.execute(f'SELECT count(*) FROM "{job["table"]}"').fetchone()[0]
            info = {"id": job["id"], "state": job["state"], "numberRecordsProcessed": total}
            return _json(200, {**info, **({"errorMessage": job["errorMessage"]} if "errorMessage" in job else {})})
        if job["state"] != "JobComplete":
            return _json(400, [{"errorCode": "INVALIDJOBSTATE", "message": "job is not complete"}])
        limit = int(query.get("maxRecords", ["50000"])[0])
        offset = int(base64.b64decode(query["locator"][0]).decode()) if query.get("locator") else 0
        rows = self.db.execute(f'SELECT * FROM "{job["table"]}" WHERE rowid > ? ORDER BY rowid LIMIT ?',
                               (offset, limit)).fetchall()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
        w.writerow(job["fields"])
        numeric = [i for i, t in enumerate(job["types"]) if t in _NUMBERS]
        for r in rows:
            r = ["" if v is None else v for v in r]
            for i in numeric:  # doubles as the org prints them (Bulk API: Valid CSV Record Rows)
                if r[i] != "":
                    r[i] = _csv_number(job["types"][i], r[i])
            w.writerow(r)
        more = self.db.execute(f'SELECT 1 FROM "{job["table"]}" WHERE rowid > ? LIMIT 1', (offset + len(rows),)).fetchone()
        locator = base64.b64encode(str(offset + len(rows)).encode()).decode() if more else "null"
        return 200, {"Content-Type": "text/csv", "Sforce-Locator": locator, "Sforce-NumberOfRecords": str(len(rows))}, \
            buf.getvalue().encode("utf-8")

    def _query_info(self, job_id: str) -> dict:
        return {k: v for k, v in self.jobs[job_id].items() if k not in ("table", "fields", "types", "polls")}

    def _bulk_ingest(self, method, rest, body) -> tuple[int, dict, bytes]:
        if rest == "jobs/ingest" and method == "GET":  # Get Information About All Ingest Jobs (one page)
            return _json(200, {"done": True, "records": [self._job_info(j) for j, v in self.jobs.items()
                                                         if "table" not in v]})
        if rest == "jobs/ingest" and method == "POST":
            spec = json.loads(body)
            obj, op = spec.get("object"), spec.get("operation")
            if obj not in self.schema or self.visible(obj) is None:
                return _json(400, [{"errorCode": "INVALIDJOB", "message": f"InvalidJob : Invalid object type : {obj}"}])
            if op not in ("insert", "update", "upsert", "delete", "hardDelete"):
                return _json(400, [{"errorCode": "INVALIDJOB", "message": f"InvalidJob : Invalid operation : {op}"}])
            job_id = "750" + secrets.token_hex(6)
            self.jobs[job_id] = {"id": job_id, "object": obj, "operation": op, "state": "Open",
                                 "externalIdFieldName": spec.get("externalIdFieldName"), "data": None,
                                 "numberRecordsProcessed": 0, "numberRecordsFailed": 0, "results": None, **_created()}
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
            info = self._job_info(job["id"])
            if self._fault_on(("job_stuck",), method, "/" + rest) is not None:
                info["state"] = "InProgress"
            return _json(200, info)
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
        info = {k: j[k] for k in ("id", "object", "operation", "state", "numberRecordsProcessed", "numberRecordsFailed",
                                  "createdById", "createdDate")}
        info.update({"contentType": "CSV", "lineEnding": "LF", "columnDelimiter": "COMMA", "apiVersion": float(self.version)})
        if j.get("externalIdFieldName"):
            info["externalIdFieldName"] = j["externalIdFieldName"]
        if j.get("errorMessage"):
            info["errorMessage"] = j["errorMessage"]
        return info

    def _process(self, job: dict) -> None:
        obj, op = job["object"], job["operation"]
        spec = self.visible(obj) or {}
        reader = csv.reader(io.StringIO(job["data"] or ""))
        header = next(reader, [])
        rows = list(reader)
        for h in header:
            if h.lower() not in spec:  # absent or hidden by field-level security
                job.update(state="Failed", errorMessage=f"InvalidBatch : Field name not found : {h}", results=(header, [], [], rows))
                return
        fail = next((f for f in self.faults if f.kind == "job_failed" and f.times > 0), None)
        limit = len(rows)
        if fail is not None:
            fail.times -= 1
            limit = min(fail.after, len(rows))
        ok, failed = [], []
        self.db.execute("BEGIN")
        try:
            for row in rows[:limit]:
                rec = {h: (None if v == "#N/A" else v) for h, v in zip(header, row) if v != ""}
                if op == "hardDelete":
                    rid, created, err = self._apply(obj, "delete", [rec], None)[0]
                    if err is None:
                        self.db.execute(f'DELETE FROM "{obj}" WHERE Id = ?', (rid,))
                else:
                    rid, created, err = self._apply(obj, op, [rec], job["externalIdFieldName"])[0]
                if err:
                    # sf__Error as Bulk API writes it: "CODE:message:fields --"
                    msg, _, fields = err.partition("\x1f")
                    failed.append((rec.get("Id"), f"{msg}:{fields} --" if fields else msg, row))
                else:
                    ok.append((rid, created, row))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        job.update(numberRecordsProcessed=limit, numberRecordsFailed=len(failed), results=(header, ok, failed, rows[limit:]),
                   state="JobComplete" if fail is None else "Failed")
        if fail is not None:
            job["errorMessage"] = "InternalServerError : the job failed while processing records"


_NUMBER_TEXT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_DATE_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME_TEXT = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})(?:T([01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,3})?)?"
                            r"(?:Z|[-+](?:[01][0-9]|2[0-3]):?[0-5][0-9])?)?")


def _unfit(f: dict, text: str) -> tuple[str, str] | None:
    """(errorCode, message) when the field cannot hold `text`, as Salesforce refuses it; None when it fits.

    The rules (Salesforce Help: Custom Field Types; SOAP API: Field Types, Primitive Data Types; Bulk API 2.0:
    Valid Date Format in Records), the error texts as Salesforce returns them (e.g. DFC forum 9060G000000BfsuQAC):
    a number field takes a plain decimal number (no thousands separators, currency signs or suffixes) with at most
    precision - scale digits before the point, and more decimals than the scale are kept, not refused (Help:
    "Number Field Stores More Decimal Places Than Defined When Set via API", 000387302); a checkbox true/false
    (or 1/0); a date YYYY-MM-DD from 1700 to 4000; a date/time YYYY-MM-DDThh:mm:ss[.SSS][Z|+hh:mm]; text at most its length, counted
    in UTF-16 code units ("surrogate pair characters are treated as two characters", Help 005166849); a
    restricted picklist one of its values; a reference a 15- or 18-character Id."""
    t, label = f["type"], f["label"]
    if t in _NUMBERS:
        if not _NUMBER_TEXT.fullmatch(text.strip()):
            return "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {text[:40]}"
        d = Decimal(text.strip())
        whole = max(d.adjusted() + 1, 0) if d else 0
        allowed = f["digits"] if t == "int" else f["precision"] - f["scale"]
        if allowed and whole > allowed:
            return "NUMBER_OUTSIDE_VALID_RANGE", f"{label}: value outside of valid range on numeric field: " \
                                                 f"{java_double(text)}"
        return None
    if t == "boolean":
        if text.lower() not in ("true", "false", "1", "0"):
            return "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {text[:40]}"
        return None
    if t in ("date", "datetime"):
        m = (_DATE_TEXT if t == "date" else _DATETIME_TEXT).fullmatch(text)
        try:
            if m and not 1700 <= dt.date.fromisoformat(m.group(1) if t == "datetime" else text).year <= 4000:
                m = None   # "The earliest valid date is 1700-01-01 ... The latest valid date is 4000-12-31" (Data
                #            Loader Guide: Data Import Dates)
        except ValueError:
            m = None
        if not m:
            return "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {text[:40]}"
        return None
    if (t in _TEXTS or t in ("reference", "id")) and f["length"] and len(text) > f["length"] // 2 \
            and (len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2) > f["length"]:
        return "STRING_TOO_LONG", f"{label}: data value too large: {text} (max length={f['length']})"
    if t == "picklist" and f["restrictedPicklist"] and text not in {p["value"] for p in f["picklistValues"]}:
        return "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", f"{label}: bad value for restricted picklist field: {text}"
    if t in ("reference", "id") and text and not _ID.fullmatch(text):
        return "MALFORMED_ID", f"{label}: id value of incorrect type: {text[:40]}"
    return None


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

    try:
        client = Client(address, family="AF_UNIX")
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        what = "no such socket" if isinstance(exc, FileNotFoundError) else "nothing serves on it"
        raise _NoDouble(f"connect {address}: {what}; start one with `python -m nrr_engine.testing.salesforce_double "
                        f"serve STORE {address}` first") from None
    with client as conn:
        credentials = conn.recv()

        def answer(*request):
            conn.send(request)
            return conn.recv()

        with intercept(answer):
            yield credentials


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def stamp_text(when: dt.datetime) -> str:
    """A dateTime as the store keeps it and the APIs return it: UTC to the millisecond, "2026-12-01T02:00:00.000+0000"
    (fixed width, so the text orders as the time does)."""
    when = when.astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}+0000"


def _created() -> dict:
    """A new job's creator and creation time, as Job Info gives them."""
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    return {"createdById": USER_ID, "createdDate": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+0000"}


class _Stopped(BaseException):
    """SIGTERM/SIGINT while `serve` waits: unwind, closing the listener (which removes the socket file)."""


class _SocketBusy(Exception):
    """Another double answers on the socket `serve` was given."""


class _NoDouble(Exception):
    """No double serves on the socket `connect` was given (exit 3, as nrr-engine for a source unavailable)."""


def _claim_socket(path: Path) -> None:
    """Make `path` free for a new listener: a socket file nothing listens on (left by a killed double) is removed;
    one a process answers on, or a file that is no socket, is refused."""
    import socket
    import stat

    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise _SocketBusy(f"{path} exists and is not a socket; remove it or serve on another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)   # stale: left by a double that was killed
        return
    finally:
        probe.close()
    raise _SocketBusy(f"another double is serving on {path}; stop it first, or serve on another path")


# A WHERE condition of the subset the double reads: field, comparison operator, value. The value is a quoted string,
# true/false/null, a date (YYYY-MM-DD) or dateTime (YYYY-MM-DDThh:mm:ss[.sss] with Z or +/-hh:mm: "the zone offset
# is always from UTC"), unquoted as SOQL requires, or a number (SOQL and SOSL Reference: Comparison Operators;
# Date Formats and Date Literals in WHERE).
_CONDITION = re.compile(r"(\w+)\s*(=|!=|<>|<=|>=|<|>)\s*(?:'((?:[^'\\]|\\.)*)'|(true|false|null)\b|"
                        r"([0-9]{4}-[0-9]{2}-[0-9]{2})(T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[-+][0-9]{2}:[0-9]{2}))?"
                        r"|(-?[0-9]+(?:\.[0-9]+)?))", re.I)
_SQL_OPERATORS = {"=": "IS", "!=": "IS NOT", "<>": "IS NOT", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _condition(text: str, spec: dict, column) -> tuple[str, str, list]:
    """(field, SQL of one WHERE condition with {f} standing for the field, arguments); a value of the wrong kind for its field is the error an
    org gives ("value of filter criterion for field 'X' must be of type dateTime and should not be enclosed in
    quotes"). dateTime values compare as the store keeps them (UTC, fixed width: stamp_text)."""
    c = _CONDITION.fullmatch(text)
    if not c:
        raise _SoqlError("MALFORMED_QUERY", f"unsupported condition {text!r}")
    name = column(c.group(1))
    kind = spec[name.lower()]["type"]
    op, quoted, word, day, clock, number = c.group(2), c.group(3), c.group(4), c.group(5), c.group(6), c.group(7)
    sql_op = _SQL_OPERATORS[op]
    ordered = op not in ("=", "!=", "<>")
    soql_kind = {"datetime": "dateTime", "date": "date", "boolean": "boolean"}.get(kind, "double" if kind in _NUMBERS
                                                                                  else None)
    if word is not None and word.lower() == "null":
        if ordered:
            raise _SoqlError("MALFORMED_QUERY", f"null can only be compared with = or != ({text!r})")
        return name, f"{{f}} {sql_op} NULL", []
    if quoted is not None:
        if soql_kind is not None:
            raise _SoqlError("INVALID_FIELD", f"value of filter criterion for field '{name}' must be of type "
                                              f"{soql_kind} and should not be enclosed in quotes")
        return name, f"{{f}} {sql_op} ?", [quoted]
    given = "boolean" if word is not None else "dateTime" if clock else "date" if day else "double"
    if soql_kind is None:
        raise _SoqlError("INVALID_FIELD", f"value of filter criterion for field '{name}' must be of type string and "
                                          f"should be enclosed in quotes")
    if given != soql_kind:
        raise _SoqlError("INVALID_FIELD", f"value of filter criterion for field '{name}' must be of type {soql_kind} "
                                          f"and should not be enclosed in quotes")
    if word is not None:
        if ordered:
            raise _SoqlError("MALFORMED_QUERY", f"a boolean can only be compared with = or != ({text!r})")
        return name, f"{{f}} {sql_op} ?", [word.lower()]
    if clock:
        try:
            when = dt.datetime.fromisoformat(day + clock.replace("Z", "+00:00"))
        except ValueError:
            raise _SoqlError("MALFORMED_QUERY", f"Invalid datetime: {day}{clock}") from None
        return name, f"{{f}} {sql_op} ?", [stamp_text(when)]
    if day:
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            raise _SoqlError("MALFORMED_QUERY", f"Invalid date: {day}") from None
        return name, f"{{f}} {sql_op} ?", [day]
    return name, f"CAST({{f}} AS REAL) {sql_op} ?", [float(number)]


class _SoqlError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class _RecordError(Exception):
    def __init__(self, code: str, message: str, field: str = ""):
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


def _version(text: str) -> tuple[int, int]:
    try:
        major, _, minor = text.partition(".")
        return int(major), int(minor or 0)
    except ValueError:
        return (0, 0)


def _echoed(f: Fault, sent: str) -> str:
    """An echo fault's message with what was sent in it ({sent}, {SENT} upper-cased), or appended."""
    if "{sent}" in f.message or "{SENT}" in f.message:
        return f.message.replace("{sent}", sent).replace("{SENT}", sent.upper())
    return f"{f.message}: {sent}"


def _soap_fault(code: str, message: str, fault: str = "UnexpectedErrorFault") -> tuple[int, dict, bytes]:
    """A SOAP API fault as the partner endpoint sends it (HTTP 500, faultcode, detail with exceptionCode)."""
    message = html.escape(message)
    xml = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/'
           'envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
           f'<soapenv:Body><soapenv:Fault><faultcode>sf:{code}</faultcode><faultstring>{code}: {message}</faultstring>'
           f'<detail><sf:{fault} xsi:type="sf:{fault}"><sf:exceptionCode>{code}</sf:exceptionCode>'
           f'<sf:exceptionMessage>{message}</sf:exceptionMessage></sf:{fault}></detail></soapenv:Fault></soapenv:Body>'
           '</soapenv:Envelope>')
    return 500, {"Content-Type": "text/xml"}, xml.encode()


def java_double(text: str) -> str:
    """A number as Salesforce prints its doubles (Java's Double.toString): 1234567.0, 1.2345678E7, 0.001, 1.0E-4.

    Number, currency and percent fields are doubles; "for custom number field with digits 8 - 14 (such as
    12345678), API values returned will be exponential values (1.2345678E7)" (Salesforce Help 000221617)."""
    d = float(text)
    if not math.isfinite(d):
        return text
    if d == 0:
        return "0.0"
    sign, digits, exp = Decimal(repr(abs(d))).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    e = len(digits) + exp - 1                # the exponent of the first digit
    neg = "-" if d < 0 else ""
    if 1e-3 <= abs(d) < 1e7:
        if e >= 0:
            whole, frac = ds[:e + 1].ljust(e + 1, "0"), ds[e + 1:]
        else:
            whole, frac = "0", "0" * (-e - 1) + ds
        return f"{neg}{whole}.{frac or '0'}"
    return f"{neg}{ds[0]}.{ds[1:] or '0'}E{e}"


class _Number:
    """A number to go into JSON as it is printed (json.dumps would print a float as Python does)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def _csv_number(sf_type: str, value: str) -> str:
    try:
        return str(int(Decimal(value))) if sf_type in ("int", "long") else java_double(value)
    except (InvalidOperation, ValueError):
        return value


# A JSON number (RFC 8259 section 6): what may go into a response unquoted
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def _typed(sf_type: str, value: str | None):
    """A stored text value as REST JSON types it. A number field's value goes out as a JSON number only when it
    is one; anything else stays a JSON string (the seed refuses such values, so an org's store never holds them)."""
    if value is None:
        return None
    if sf_type in _NUMBERS:
        text = _csv_number(sf_type, value)
        return _Number(text) if _JSON_NUMBER.fullmatch(text) else value
    if sf_type == "boolean":
        return value == "true"
    return value


# Numbers are printed as the org prints them (json.dumps would print floats as Python does): each goes into the
# JSON text as a string between two copies of a marker no stored value holds (random per process), and the
# quotes and markers around it are then removed. A stored text that merely looks like a number, or holds NUL
# bytes, stays a string: it never carries the marker.
_MARK = "~num" + secrets.token_hex(8) + "~"
_RAW = re.compile('"' + re.escape(_MARK) + "(" + _JSON_NUMBER.pattern + ")" + re.escape(_MARK) + '"')


def _json_default(v):
    text = v.text if isinstance(v, _Number) else str(v) if isinstance(v, Decimal) else None
    if text is None:
        raise TypeError(type(v).__name__)
    return _MARK + text + _MARK if _JSON_NUMBER.fullmatch(text) else text


def _json(status: int, payload) -> tuple[int, dict, bytes]:
    text = json.dumps(payload, default=_json_default)
    if _MARK in text:
        text = _RAW.sub(r"\1", text)
    return status, {"Content-Type": "application/json"}, text.encode()


USAGE = """\
usage: python -m nrr_engine.testing.salesforce_double COMMAND ...

  seed STORE ORG_FOLDER [--metadata DIR] [--types Object.Field=TYPE,...]
  run STORE [--metadata DIR] [--permission-set FILE]... [--username NAME] -- <nrr-engine arguments>
  serve STORE SOCKET [--metadata DIR] [--permission-set FILE]... [--username NAME]
  connect SOCKET -- <nrr-engine arguments>
  query STORE "SELECT Id, Name FROM Account [WHERE f = 'v' [AND ...]] [ORDER BY f] [LIMIT n]"
  dump STORE OBJECT [--deleted]

`seed` loads a folder of Data Loader CSVs into STORE, the org the double serves (an SQLite file), and says what
it loaded. Every value must fit its field, as an org's import requires: fields are typed by the SFDX metadata
(--metadata, default: the salesforce/ project the package ships), Salesforce's standard fields, the demo's
Subscription__c and --types (e.g. Subscription__c.Amount__c=currency(16,2),Subscription__c.Start_Date__c=date;
types: string(N) textarea url email phone picklist double(P,S) currency(P,S) percent(P,S) int date datetime
boolean reference(OBJECT)); any other column is typed from its values, conservatively, and listed. A value no
org would hold ("1,500" in a currency field) stops the seed (exit 2) naming file, line, field and value.
`run` runs nrr-engine in this process with every *.salesforce.com call answered by the double over STORE.
`serve` runs the double alone on a Unix socket until stopped (SIGTERM or Ctrl-C: it finishes the request in
hand and removes the socket; a socket left by a killed double is removed when nothing listens on it);
`connect` runs nrr-engine with its calls forwarded there, so the engine's process holds only its own memory.
`query` and `dump` print the double's records as CSV (as stored, deleted records only with --deleted).
Field rules (lengths, digits, picklists) are always enforced; with --permission-set (a file, or the name of a
permission set the package ships: NRR_Engine_Integration, NRR_Engine_Reads) the integration user has only what
those permission sets grant (no View Setup unless one grants it), else it is a System Administrator. The
credentials are put in SF_USERNAME / SF_PASSWORD / SF_SECURITY_TOKEN and SF_CONSUMER_KEY / SF_CONSUMER_SECRET.
The integration user is integration@acme.example, or NAME with --username: a config that names its user
(source.username: integration@acme.com) logs in as that user, not as $SF_USERNAME, so give the double the same
name to rehearse the config unchanged. Its connected app is pre-authorised for that user (as "Admin approved
users are pre-authorized" with the app assigned to the user's profile or permission set), so auth: jwt works
with any PEM RSA private key in source.private_key_file (from the command line the double does not check the
assertion's signature); a JWT for another user gets "user hasn't approved this consumer", as on an org.
Used by bench/run.py and the tests. (Older forms still work: STORE METADATA [--permission-set FILE]... -- ARGS
and serve STORE METADATA SOCKET.)
"""

_COMMANDS = ("seed", "run", "serve", "connect", "query", "dump")
_VALUE_OPTIONS = ("--metadata", "--permission-set", "--types", "--username")


class _Usage(Exception):
    """A command line that does not fit USAGE: exit 2 with the reason and the usage."""


def _options(head: list[str]) -> tuple[list[str], dict[str, list[str]], set[str]]:
    """(positionals, {option: values}, flags) of a command line's part before `--`."""
    positional, values, flags = [], {}, set()
    it = iter(head)
    for a in it:
        if a in _VALUE_OPTIONS:
            v = next(it, None)
            if v is None:
                raise _Usage(f"{a} needs a value")
            values.setdefault(a, []).append(v)
        elif a == "--deleted":
            flags.add(a)
        elif a.startswith("--") and "=" in a and a.split("=", 1)[0] in _VALUE_OPTIONS:
            k, v = a.split("=", 1)
            values.setdefault(k, []).append(v)
        elif a.startswith("-") and a != "-":
            raise _Usage(f"unknown option {a}")
        else:
            positional.append(a)
    return positional, values, flags


def _permission_set(arg: str) -> Path:
    """A permission set file, or the name of one the package ships (NRR_Engine_Integration, NRR_Engine_Reads)."""
    path = Path(arg)
    if path.is_file():
        return path
    name = path.name.removesuffix(".permissionset-meta.xml")
    shipped = sorted(packaged_metadata().glob(f"**/permissionsets/{name}.permissionset-meta.xml")) + \
        sorted(packaged_metadata().glob(f"examples/{name}.permissionset-meta.xml"))
    if shipped:
        return shipped[0]
    raise _Usage(f"--permission-set {arg}: no such file, and the package ships no permission set of that name")


def _store(arg: str) -> Path:
    path = Path(arg)
    if not path.is_file():
        raise _Usage(f"{arg}: no such store; seed it first: python -m nrr_engine.testing.salesforce_double seed "
                     f"{arg} ORG_FOLDER")
    return path


def main(argv: list[str] | None = None) -> int:
    """The double's command line (USAGE): exit 0 done, 2 a wrong command line or a seed refused, 3 a socket
    another double serves on; `run` and `connect` exit as nrr-engine does."""
    import sys

    args = sys.argv[1:] if argv is None else list(argv)
    head, sep, rest = (args[:args.index("--")], True, args[args.index("--") + 1:]) if "--" in args else (args, False, [])
    if any(a in ("-h", "--help") for a in head) or head[:1] == ["help"]:
        print(USAGE, end="")
        return 0
    try:
        return _command(head, sep, rest)
    except _Usage as exc:
        print(f"error: {exc}\n\n{USAGE}", end="", file=sys.stderr)
        return 2
    except (DataError, _SocketBusy, _NoDouble) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, (_SocketBusy, _NoDouble)) else 2
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:   # `query ... | head`: the reader has what it wanted
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _command(head: list[str], sep: bool, rest: list[str]) -> int:
    import sys

    if not head:
        raise _Usage("no command")
    command = head[0] if head[0] in _COMMANDS else "run"   # `STORE METADATA -- ARGS`: the older form of run
    pos, opts, flags = _options(head[1:] if command == head[0] else head)
    allowed = {"seed": {"--metadata", "--types"}, "run": {"--metadata", "--permission-set", "--username"},
               "serve": {"--metadata", "--permission-set", "--username"}, "connect": set(), "query": {"--metadata"},
               "dump": {"--metadata"}}[command]
    for k in opts:
        if k not in allowed:
            raise _Usage(f"{command} takes no {k}")
    if flags and command != "dump":
        raise _Usage(f"{command} takes no {', '.join(sorted(flags))}")
    if sep != (command in ("run", "connect")):
        raise _Usage(f"{command} {'needs' if command in ('run', 'connect') else 'takes no'} `-- <nrr-engine arguments>`")
    metadata = Path(opts["--metadata"][-1]) if "--metadata" in opts else None
    sets = [_permission_set(a) for a in opts.get("--permission-set", [])]
    perms = Permissions.from_files(*sets) if sets else None
    shapes = {"seed": (2,), "run": (1, 2), "serve": (2, 3), "connect": (1,), "query": (2,), "dump": (2,)}
    if len(pos) not in shapes[command]:
        raise _Usage(f"{command}: wrong number of arguments ({' '.join(pos) or 'none'})")
    if command in ("run", "serve") and len(pos) == shapes[command][-1]:   # the older form names METADATA
        metadata = metadata or Path(pos.pop(1))
    metadata = metadata or packaged_metadata()
    if command == "seed":
        report = seed(Path(pos[0]), Path(pos[1]), metadata, opts.get("--types", ()))
        print("\n".join(report.lines()))
        return 0
    if command == "connect":
        with connect(pos[0]) as credentials:
            return _run_cli(credentials, rest)
    user = {"username": opts["--username"][-1]} if "--username" in opts else {}
    double = SalesforceDouble(_store(pos[0]), metadata=metadata, permissions=perms,
                              shuffle=command in ("run", "serve"), **user)   # query and dump: in the order stored
    if command == "serve":
        print(f"serving {pos[0]} on {pos[1]} (metadata {metadata}; user {double.username}, "
              f"{'permission sets ' + ', '.join(map(str, sets)) if sets else 'as a System Administrator'}); "
              "stop with SIGTERM or Ctrl-C", file=sys.stderr, flush=True)
        double.serve_socket(pos[1])
        return 0
    if command == "run":
        with double.serve():
            return _run_cli((double.username, double.password, double.security_token), rest)
    return double.print_records(pos[1], sys.stdout, deleted="--deleted" in flags, whole_object=command == "dump")


def _run_cli(credentials: tuple[str, str, str], args: list[str]) -> int:
    """Run the installed program's entry point (`python -m nrr_engine ARGS`) in this process, as any caller
    would: the double depends on no module of the engine beyond the Id helpers."""
    import os
    import runpy
    import sys

    os.environ.update(zip(("SF_USERNAME", "SF_PASSWORD", "SF_SECURITY_TOKEN"), credentials))
    os.environ.setdefault("SF_CONSUMER_KEY", "CONSUMER-KEY")          # the double's connected app
    os.environ.setdefault("SF_CONSUMER_SECRET", "CONSUMER-SECRET")
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
