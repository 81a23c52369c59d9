"""Writing a plan's changes to a remote org (Salesforce) as few jobs as possible.

Parent-link changes go in their own job per field (sorted by the new parent), every other field of an
object in one job with a row per record (grouped by family, then parent, against lock contention),
snapshots in one upsert by external id. Failures come back per change sequence number; nothing is raised
for a record.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from ..model import Change, FieldChanges

KEEP = ""   # a cell left empty in an update row: Bulk API 2.0 leaves the field as it is


def create_records(org, obj: str, key_field: str, inserts: list[Change]) -> tuple[dict[str, str], dict[int, str]]:
    """Create the plan's new records by upsert on their key (so a rerun after a crash finds them, not
    duplicates them). Returns {provisional Id: real Id} and {position: error}."""
    if not inserts:
        return {}, {}
    records = [json.loads(c.new) for c in inserts]
    fields = [key_field, *sorted({f for r in records for f in r if f not in ("Id", key_field)})]
    rows = [tuple(r.get(f) for f in fields) for r in records]
    job = org.write(obj, "upsert", fields, rows, external_id=key_field)
    mapping = {c.id: rid for c, rid, err in zip(inserts, job.created_ids, job.errors) if err is None and rid}
    failures = {i: err for i, err in enumerate(job.errors) if err is not None}
    return mapping, failures


def remap(batches: Sequence[FieldChanges], mapping: dict[str, str]) -> None:
    """Replace provisional Ids (records created this run) by the Ids Salesforce gave them, in place."""
    if not mapping:
        return
    keys = list(mapping)
    for b in batches:
        for column in (b.ids, b.new):
            if isinstance(column, np.ndarray) and len(column):
                hit = np.flatnonzero(np.isin(column, keys))
                for i in hit.tolist():
                    column[i] = mapping[column[i]]


def write_changes(org, batches: Sequence[FieldChanges], starts: Sequence[int], link_fields: set[str],
                  parent_of: dict[str, np.ndarray], root_of: dict[str, np.ndarray] | None = None) -> dict[int, str]:
    """Write field batches; `starts[b]` is the sequence number of batch b's first change; `parent_of[obj]`
    is each record's parent Id by row (the batches' `rows`), "" for none, and `root_of[obj]` its ultimate
    parent's Id (its own for a root). Returns {seq: error}."""
    failures: dict[int, str] = {}
    by_object: dict[str, list[int]] = {}
    for b, batch in enumerate(batches):
        if len(batch):
            by_object.setdefault(batch.object, []).append(b)
    for obj, members in by_object.items():
        links = [b for b in members if batches[b].field in link_fields and batches[b].rule == "repair"]
        for b in links:  # each parent field in its own job, children of one parent together
            batch = batches[b]
            order = sorted(range(len(batch)), key=lambda i: (batch.new[i] or "", batch.ids[i]))
            rows = [(batch.ids[i], batch.new[i]) for i in order]
            job = org.write(obj, "update", ["Id", batch.field], rows)
            failures.update({starts[b] + order[k]: err for k, err in enumerate(job.errors) if err})
        rest = [b for b in members if b not in links]
        if rest:
            failures.update(_merged_write(org, obj, [batches[b] for b in rest], [starts[b] for b in rest],
                                          parent_of.get(obj), (root_of or {}).get(obj)))
    return failures


def _merged_write(org, obj: str, batches: list[FieldChanges], starts: list[int],
                  parent: np.ndarray | None, root: np.ndarray | None = None) -> dict[int, str]:
    """One row per record carrying every field that changes on it.

    Records are aligned by account index (each batch's `rows`, ascending) into one numpy column per field,
    and rows are made as the upload reads them: a million records cost a few arrays, not a million lists."""
    fields = [b.field for b in batches]
    rows = [np.asarray(b.rows, dtype=np.int64) for b in batches]
    records = np.unique(np.concatenate(rows))
    ids = np.empty(len(records), dtype=object)
    columns = []
    for b, b_rows in zip(batches, rows):
        at = np.searchsorted(records, b_rows)
        ids[at] = b.ids
        column = np.full(len(records), KEEP, dtype=object)
        column[at] = b.new
        columns.append(column)
    order = lock_order(records, parent, root)
    job = org.write(obj, "update", ["Id", *fields], _Rows([ids, *columns], order))
    failures: dict[int, str] = {}
    for k, err in enumerate(job.errors):
        if err:
            r = order[k]
            for b_rows, start, column in zip(rows, starts, columns):
                if column[r] is not KEEP:
                    failures[start + int(np.searchsorted(b_rows, records[r]))] = err
    return failures


def lock_order(records: np.ndarray, parent: np.ndarray | None, root: np.ndarray | None) -> np.ndarray:
    """The order to send the rows of `records` (account rows) in, against UNABLE_TO_LOCK_ROW.

    Salesforce locks a record's parent while it updates the child, and Bulk API 2.0 cuts a job into batches
    of 10,000 records run in parallel: children of one parent in two batches, or a parent and its children,
    contend for one lock (Record-Level Locking, Designing Record Access for Enterprise Scale). A rollup row
    takes two such locks: its parent's (ParentId) and, when it writes Ultimate_Parent__c, a lookup, the
    family root's. Sorting by root, then parent, then the record keeps each family in one run of rows (its
    root's own row, which sorts first with no parent, included) and each parent's children together
    within it, so both locks are wanted by consecutive rows, in one batch unless the family is larger; a
    family split across two batches meets at one boundary, and UNABLE_TO_LOCK_ROW there is retried."""
    if parent is None:
        return np.arange(len(records))
    by_parent = np.argsort(parent[records], kind="stable")  # records ascend: ties stay in record order
    if root is None:
        return by_parent
    return by_parent[np.argsort(root[records][by_parent], kind="stable")]


class _Rows(Sequence):
    """Rows of aligned columns in a given order, each made when read."""

    def __init__(self, columns: list[np.ndarray], order: np.ndarray):
        self.columns, self.order = columns, order

    def __len__(self) -> int:
        return len(self.order)

    def column(self, k: int) -> list:
        """Column k in row order, without making the rows."""
        return self.columns[k][self.order].tolist()

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        r = self.order[k]
        return tuple(c[r] for c in self.columns)


def upsert_snapshots(org, obj: str, key_field: str, fields: Sequence[str], records: Sequence[str],
                     first_seq: int) -> dict[int, str]:
    """Upsert snapshot records (JSON text each) by external id; {seq: error} of those that failed."""
    if not records:
        return {}
    keys = (key_field, *fields)
    rows = [tuple(None if d.get(f) is None else str(d[f]) for f in keys) for d in map(json.loads, records)]
    job = org.write(obj, "upsert", [key_field, *fields], rows, external_id=key_field)
    return {first_seq + i: err for i, err in enumerate(job.errors) if err}
