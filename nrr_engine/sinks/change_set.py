"""A run's change set as Data Loader CSVs for the real org the local CSVs came from, and the order to load them.

The real org knows the records the engine created (KPI snapshots, placeholder parents) only by their external
id, never by the working copy's Ids: they are upserted on it, links to them name it (`Parent:Family_Key__c`) and
their deletes are listed by it. Only records of the org's own CSVs are updated or deleted by Id.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import disk_full, is_storage_error
from ..ids import KEY_PREFIXES
from ..model import INSERT, UPSERT
from ..safe_output import atomic_file, private_dir

LOAD_ORDER = "LOAD-ORDER.txt"
_SOQL_CHUNK = 200  # keys per SOQL statement: well inside the 100,000-character query limit


@dataclass(frozen=True)
class OrgView:
    """What the change set needs to know of the org, as plain callables (the engine binds them to its org)."""

    in_org: Callable[[str, Collection[str]], set[str]]        # the Ids among these that the real org holds
    keys: Callable[[str, Collection[str]], dict[str, str]]    # Id -> external id value, of records the engine created
    columns: Callable[[str], list[str]]                       # the object's fields in its own order
    key_fields: dict[str, str]                                # object -> external id of the records it creates there
    remote: bool = False                                      # Salesforce: the run wrote the changes already


@dataclass(frozen=True)
class Step:
    """One Data Loader operation: `action` of `object` matching on `match`, from `file`."""

    file: Path
    action: str
    object: str
    match: str
    rows: int
    what: str

    def text(self) -> str:
        how = "by Id" if self.match == "Id" else f"matching on {self.match}"
        return f"{self.action} {self.object} {how}: {self.file.name} ({self.rows} record(s): {self.what})"


@dataclass
class ChangeSet:
    """The files written, the load steps in order, and what Data Loader cannot do from a file alone."""

    files: list[Path]
    steps: list[Step]
    notes: list[str]


def relationship(field: str) -> str:
    """The relationship name of a lookup field, as Data Loader and the API name it: a custom X__c is X__r, a
    standard one drops its Id suffix (ParentId -> Parent)."""
    if field.endswith("__c"):
        return field[:-3] + "__r"
    return field[:-2] if field.endswith("Id") else field


def dl_value(value: str | None) -> str:
    """Data Loader sets a field to null only when the cell says #N/A (a blank cell leaves it as it is)."""
    return "#N/A" if value is None else value


def write_csv(path: Path, header: list[str], rows) -> Path:
    """A UTF-8 CSV, byte-exact (Data Loader change sets are never neutralised like reports for people: a quote
    added to a name would be loaded into the org as part of it); 0600, through a fresh temporary file."""
    try:
        with atomic_file(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for r in rows:
                w.writerow(["" if v is None else v for v in r])
    except OSError as exc:
        if is_storage_error(exc):
            raise disk_full(exc, [path], "the export", " (export again once there is room: every file is written "
                            "anew)") from None
        raise
    return path


def _soql_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ordered(fields: Iterable[str], order: list[str]) -> list[str]:
    """Fields in the object's order; fields it does not list (a relationship column) sit where their lookup does."""
    index = {f.lower(): i for i, f in enumerate(order)}

    def place(f: str):
        base = f.split(":", 1)[0]
        for name in (base, base[:-3] + "__c" if base.endswith("__r") else base + "Id"):
            if name.lower() in index:
                return (index[name.lower()], f)
        return (len(order), f)
    return sorted(fields, key=place)


def _files(folder: Path, stem: str, first: list[str], rows: list[tuple[str, dict]],
           order: list[str]) -> list[tuple[Path, int, tuple[str, ...]]]:
    """One file per set of columns (a blank cell must never stand for both "leave alone" and "clear"):
    `stem.csv`, or `stem.1.csv`, `stem.2.csv`, ... Each row is (key, {column: value}); returns (file, rows,
    columns) of each."""
    shapes: dict[tuple[str, ...], list[tuple[str, dict]]] = {}
    for key, vals in rows:
        shapes.setdefault(tuple(_ordered(vals, order)), []).append((key, vals))
    out = []
    for n, (cols, group) in enumerate(sorted(shapes.items()), start=1):
        path = folder / (f"{stem}.csv" if len(shapes) == 1 else f"{stem}.{n}.csv")
        write_csv(path, [*first, *cols], ([key, *[vals[c] for c in cols]] for key, vals in sorted(group)))
        out.append((path, len(group), cols))
    return out


def _links(cols: Iterable[str]) -> str:
    """What the relationship columns of a file do (Data Loader's `Relationship:ExternalIdField` field names)."""
    out = []
    for c in cols:
        if ":" in c:
            rel, key = c.split(":", 1)
            lookup = rel[:-3] + "__c" if rel.endswith("__r") else rel + "Id"
            out.append(f"{c} sets {lookup} to the Account with that {key}")
    return "; ".join(out)


def write(changes: Iterable[dict], org: OrgView, folder: Path) -> ChangeSet:
    """Write the applied changes of one run (ledger rows) as Data Loader CSVs in `folder`."""
    updates: dict[str, dict[str, dict]] = {}     # object -> Id -> {field: new}
    created: dict[str, dict[str, dict]] = {}     # object -> Id -> the record the run created
    upserts: dict[str, list[dict]] = {}          # object -> records upserted by external id (snapshots)
    deleted: dict[str, list[tuple[str | None, str | None]]] = {}   # object -> (Id, external id) of deleted records
    known: dict[str, dict[str, str]] = {}        # object -> Id -> external id, from the records in this change set
    for ch in changes:
        obj, rid, fld = ch["object"], ch["record_id"], ch["field"]
        if fld == UPSERT:
            if ch["new"] is None:
                deleted.setdefault(obj, []).append((rid, ch["external_id"]))
            else:
                upserts.setdefault(obj, []).append(json.loads(ch["new"]))
        elif fld == INSERT:
            rec = json.loads(ch["new"] or ch["old"] or "{}")
            key = rec.get(org.key_fields.get(obj, ""))
            if key:
                known.setdefault(obj, {})[rid] = key
            if ch["new"] is None:  # a rollback deleting a record its run created
                deleted.setdefault(obj, []).append((rid, key))
            else:
                created.setdefault(obj, {})[rid] = rec
        else:
            updates.setdefault(obj, {}).setdefault(rid, {})[fld] = ch["new"]

    # Which records the real org holds (one look per object): the rest exist only in the working copy.
    gone = {obj: {rid for rid, _ in recs if rid} for obj, recs in deleted.items()}
    for obj in list(updates):
        for rid in gone.get(obj, ()):  # records this change set deletes get no updates
            updates[obj].pop(rid, None)
    account_key = org.key_fields.get("Account")
    values: set[str] = set()
    if account_key:
        prefix = KEY_PREFIXES["Account"]
        values = {v for recs in (*updates.values(), *created.values()) for vals in recs.values()
                  for v in vals.values() if isinstance(v, str) and len(v) in (15, 18) and v.startswith(prefix)}
    wanted: dict[str, set[str]] = {}
    for obj, recs in (*updates.items(), *created.items()):
        wanted.setdefault(obj, set()).update(recs)
    for obj, ids in gone.items():
        wanted.setdefault(obj, set()).update(ids)
    if values:
        wanted.setdefault("Account", set()).update(values)
    real = {obj: org.in_org(obj, ids) for obj, ids in wanted.items()}
    created_keys: dict[str, dict[str, str]] = {}
    for obj, ids in wanted.items():
        mine = ids - real[obj]
        have = {i: k for i, k in known.get(obj, {}).items() if i in mine}
        created_keys[obj] = {**have, **(org.keys(obj, mine - set(have)) if mine - set(have) else {})}
    # Links to created records (placeholder parents) name them by their external id: `Parent:Family_Key__c`.
    refs = {i: k for i, k in created_keys.get("Account", {}).items() if i in values}

    def cells(vals: dict) -> tuple[dict, dict]:
        """(plain columns, relationship columns) of a record's new values."""
        plain, links = {}, {}
        for f, v in vals.items():
            if v in refs:
                links[f"{relationship(f)}:{account_key}"] = refs[v]
            else:
                plain[f] = dl_value(v)
        return plain, links

    private_dir(folder)
    for stale in (*folder.glob("*.csv"), *folder.glob("*.soql"), folder / LOAD_ORDER):  # an earlier export's
        stale.unlink(missing_ok=True)
    first: list[Step] = []   # records the engine created, then links to them, then the org's own records
    later: list[Step] = []   # upserts by external id (snapshots), then deletes
    files: list[Path] = []
    notes: list[str] = []
    objects = sorted(set(updates) | set(created) | set(upserts) | set(deleted), key=lambda o: (o != "Account", o))
    for obj in objects:
        order = org.columns(obj)
        key_field = org.key_fields.get(obj, "")
        ckeys = created_keys.get(obj, {})
        mine = dict(created.get(obj, {}))
        for rid, vals in updates.get(obj, {}).items():
            if rid in ckeys:
                mine[rid] = {**mine.get(rid, {}), **vals}
        rows, link_rows, by_id = [], [], []
        for rid, rec in sorted(mine.items()):
            if rid not in ckeys:
                notes.append(f"{obj} {rid} was created by the engine and has no {key_field or 'external id'}: it is "
                             "not in the change set (the working copy's Ids mean nothing to the org)")
                continue
            plain, links = cells({f: v for f, v in rec.items() if f not in (key_field, "Id")})
            rows.append((ckeys[rid], plain))
            if links:  # a record cannot name itself, or another one of this file, before they exist: a second pass
                link_rows.append((ckeys[rid], links))
        for rid, vals in updates.get(obj, {}).items():
            if rid not in ckeys:
                plain, links = cells(vals)
                by_id.append((rid, {**plain, **links}))
        for path, n, _ in _files(folder, f"{obj}.upsert", [key_field], rows, order):
            first.append(Step(path, "Upsert", obj, key_field, n, "records the engine created: placeholder parents"))
        for path, n, cols in _files(folder, f"{obj}.upsert-links", [key_field], link_rows, order):
            first.append(Step(path, "Upsert", obj, key_field, n, f"their links, once they all exist: {_links(cols)}"))
        for path, n, cols in _files(folder, f"{obj}.update", ["Id"], by_id, order):
            first.append(Step(path, "Update", obj, "Id", n, "records of the org's own CSVs"
                              + (f"; {_links(cols)}" if _links(cols) else "")))
        if upserts.get(obj):
            ukey = org.key_fields.get(obj) or next(iter(upserts[obj][0]))
            recs = [(r[ukey], {f: dl_value(v) for f, v in r.items() if f != ukey}) for r in upserts[obj]]
            for path, n, _ in _files(folder, f"{obj}.upsert", [ukey], recs, order):
                later.append(Step(path, "Upsert", obj, ukey, n, f"updated or created by {ukey}"))
    # Deletes last, after the updates that move children off a record about to go.
    for obj in objects:
        recs = deleted.get(obj, [])
        if not recs:
            continue
        key_field = org.key_fields.get(obj, "")
        ids = sorted(rid for rid, _ in recs if rid in real.get(obj, ()))
        by_key = sorted({k for rid, k in recs if rid not in real.get(obj, ()) and k})
        if ids:
            path = write_csv(folder / f"{obj}.delete.csv", ["Id"], ([rid] for rid in ids))
            later.append(Step(path, "Delete", obj, "Id", len(ids), "records of the org's own CSVs"))
        if by_key:
            path = write_csv(folder / f"{obj}.remove-by-key.csv", [key_field], ([k] for k in by_key))
            soql = folder / f"{obj}.remove-by-key.soql"
            _write_text(soql, "".join(f"SELECT Id, {key_field} FROM {obj} WHERE {key_field} IN ("
                                    + ", ".join(map(_soql_literal, by_key[i:i + _SOQL_CHUNK])) + ")\n"
                                    for i in range(0, len(by_key), _SOQL_CHUNK)))
            files.append(path)
            queries = -(-len(by_key) // _SOQL_CHUNK)
            which = ("the SOQL" if queries == 1 else
                     f"each of the {queries} SOQL statements (one a line, {_SOQL_CHUNK} keys each: Export takes one "
                     "query at a time)")
            notes.append(f"{path.name}: {len(by_key)} {obj} record(s) to delete that the org knows only by {key_field} "
                         f"(the engine created them: their Ids there are not the working copy's). Data Loader deletes "
                         f"by Id: run {which} in {soql.name} with Data Loader's Export, then Delete {obj} with the "
                         f"file{'' if queries == 1 else 's'} it writes (the Id column). A Data Loader set to delete by "
                         f"external id (sfdc.deleteWithExternalId, with the REST API) takes {path.name} as it is.")
    steps = first + later
    _write_load_order(folder, steps, notes, org.remote)
    return ChangeSet([s.file for s in steps] + files, steps, notes)


def _write_load_order(folder: Path, steps: list[Step], notes: list[str], remote: bool) -> None:
    head = ("The run wrote these changes to Salesforce itself; the files record them.\n" if remote else
            "Load these files into the org the CSVs came from with Data Loader, in this order:\n")
    text = head + "".join(f"{n}. {s.text()}\n" for n, s in enumerate(steps, start=1))
    if not remote and any(s.object == "Account" and s.action in ("Update", "Upsert") for s in steps):
        # many children of one parent in parallel batches lock the parent (UNABLE_TO_LOCK_ROW)
        text += ("Load the Account files with Data Loader in serial mode (Settings | Settings: Use Bulk API and "
                 "Enable serial mode for Bulk API): their rows are ordered by Id, not grouped by parent, and "
                 "parallel batches that update children of one parent can fail with UNABLE_TO_LOCK_ROW.\n")
    text += "".join(f"Then: {note}\n" for note in notes)
    _write_text(folder / LOAD_ORDER, text)


def _write_text(path: Path, text: str) -> None:
    """A UTF-8 text file of the change set: 0600, through a fresh temporary file."""
    with atomic_file(path, "w", encoding="utf-8") as fh:
        fh.write(text)
